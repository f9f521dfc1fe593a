"""``bscrit predict``, ``check`` and ``scale`` from JSON fixtures: output, JSON and exit codes."""

from __future__ import annotations

import json
import math
import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bscrit.cli import app

ASSETS = Path(__file__).parents[1] / "assets"
MEAS = ASSETS / "measurements"
B128 = str(MEAS / "sgd_b128.json")
B512 = str(MEAS / "sgd_b512.json")
ADAM = str(MEAS / "adam_noisy.json")  # Adam β₁ = 0.9: the square-root rule reaches κ < 10
ADAM_WIDE = str(MEAS / "adam_wide.json")  # the same noise, β₁ = 0.999: B* and n limit
SMALL = str(MEAS / "sgd_small_nsr.json")
T9 = 2.26215716  # t_{0.975, 9}
LO128 = 256 * (1 + 1 / (0.125 + T9 * 3 * 0.004 / 0.8))  # lower 95% bound of B* ≈ 1866.75

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args))


def as_json(res) -> dict:
    return json.loads(res.stdout)


def test_fixtures_are_what_the_generator_writes(tmp_path):
    gen = runpy.run_path(str(MEAS / "make_fixtures.py"))
    gen["main"](tmp_path)
    for f in sorted(tmp_path.glob("*.json")):
        assert f.read_text() == (MEAS / f.name).read_text(), f"regenerate {f.name}"


# ----------------------------------------------------------------------------------------------
# predict
# ----------------------------------------------------------------------------------------------


def test_predict_tables():
    res = invoke("predict", B128, B512)
    assert res.exit_code == 0, res.output
    out = res.stdout
    assert "2304" in out and "[1867, 3067]" in out  # B* and its 95% interval
    assert "2048" in out  # C²·B·NSR
    assert "[2304, 3072]" in out  # range across baselines
    # the recommended range as check writes it; its top, 1866.75, is not rounded up
    assert "[128, 1866]" in out and "1024" in out and "1864" in out
    assert "Thm 5.2 (ii)" in out and "Thm 5.5" in out
    assert "scale-invariant" in out and "80.0%" in out
    assert "linear scaling rule [LMA21 Def. 2.1]" in out
    assert "0.1 -> 1.45781" in out  # 0.1 · 1866/128
    assert "equilibrium residual" in res.stderr  # sgd_b512 has ρ = 0.8


def test_predict_json_contract():
    res = invoke("predict", B128, B512, "--json")
    assert res.exit_code == 0
    d = as_json(res)
    assert d["c2"] == 2.0
    m0 = d["measurements"][0]
    assert m0["source"] == B128 and m0["batch_size"] == 128 and m0["param_set"] == "scale_invariant"
    assert m0["nsr"] == pytest.approx(8.0)
    assert m0["b_star"] == pytest.approx(2304.0)
    assert m0["b_star_ci95"][0] == pytest.approx(LO128, rel=1e-7)
    assert m0["b_star_approx"] == pytest.approx(2048.0)
    assert m0["sde_certified_invalid"] is False and m0["thm55_base_batch_below"] is None
    assert m0["b_simple"] == pytest.approx(0.8 * 128 * 49999 / 49872 / 0.1)
    assert d["range"] == pytest.approx([2304.0, 3072.0])
    assert d["recommended"]["min"] == 128
    assert d["recommended"]["max"] == pytest.approx(LO128, rel=1e-7)
    assert (d["recommended"]["max_pow2"], d["recommended"]["max_mult8"]) == (1024, 1864)
    sc = d["scaled"]
    assert sc["rule"] == "linear" and sc["kappa"] == pytest.approx(1866 / 128)
    assert sc["hyperparameters"]["lr"] == pytest.approx(0.1 * 1866 / 128)


def test_predict_c2_option():
    d = as_json(invoke("predict", B128, "--c2", "4", "--json"))
    assert d["measurements"][0]["b_star"] == pytest.approx(4 * 128 * 9)


def test_predict_rejects_c2_not_above_one():
    res = invoke("predict", B128, "--c2", "1")
    assert res.exit_code == 2
    assert "--c2" in res.stderr


def test_predict_unbounded_b_star_prints_lower_bound_only():
    res = invoke("predict", ADAM)
    assert res.exit_code == 0
    assert "> 58783" in res.stdout and "no upper bound" in res.stdout
    assert "includes 0" in res.stderr
    # Adam β₁ = 0.9 cannot be scaled by κ ≈ 229: the range stops where the rule ends (κ < 10)
    d = as_json(invoke("predict", ADAM, "--json"))
    m = d["measurements"][0]
    assert m["b_star_ci95"][1] is None and m["nsr_ci95"][1] is None
    assert m["param_set"] == "all"
    assert d["recommended"]["limited_by"] == "scaling_rule"
    assert d["recommended"]["max"] == 2559  # the largest B' with B'/256 < 10
    assert d["scaled"]["target_batch_size"] == 2559
    assert any("below 0.5" in w for w in d["scaled"]["warnings"])
    d = as_json(invoke("predict", ADAM_WIDE, "--json"))
    assert d["recommended"]["limited_by"] is None  # Ĝ reaches 0: no limit detected from B*


def test_predict_small_nsr_theorem_readings_are_provisional_from_one_checkpoint():
    res = invoke("predict", SMALL)
    assert res.exit_code == 0
    out = " ".join(res.stdout.split())
    assert "are not C-close here, provisional" in out and "certified" not in out
    assert "from the upper end), provisional" in out
    d = as_json(invoke("predict", SMALL, "--json"))["measurements"][0]
    assert d["sde_certified_invalid"] is False  # certified only over the equilibrium
    assert (d["sde_thm52"], d["thm55"]) == ("provisional", "provisional")
    hi = d["nsr_ci95"][1]
    # from the NSR interval's upper end (Thm 5.5's base batch decreases with NSR), not the
    # point NSR 0.25 (which would give 1536)
    assert d["thm55_base_batch_below"] == pytest.approx(4096 * (1 - hi) / 2)
    assert d["thm55_base_batch_below"] < 1536.0
    assert "momentum 0.9" in d["heuristic"]


def test_predict_empty_range_does_not_crash():
    res = invoke("predict", SMALL, B128, "--json")
    assert res.exit_code == 0
    d = as_json(res)
    assert d["recommended"]["empty"] is True and d["scaled"] is None


def test_predict_no_optimizer(tmp_path):
    d = json.loads(Path(B128).read_text())
    d["optimizer"] = None
    p = tmp_path / "noopt.json"
    p.write_text(json.dumps(d))
    res = invoke("predict", str(p), "--json")
    assert res.exit_code == 0
    out = as_json(res)
    assert out["scaled"] is None
    assert any("no optimizer" in w for w in out["warnings"])


# ----------------------------------------------------------------------------------------------
# bad input: exit 2 with one clear line
# ----------------------------------------------------------------------------------------------


def _write(tmp_path: Path, name: str, text: str) -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def _bad_inputs(tmp_path: Path) -> list[tuple[str, str]]:
    good = json.loads(Path(B128).read_text())
    schema2 = dict(good, schema=2)
    kind = dict(good, kind="bscrit.prediction")
    missing = {k: v for k, v in good.items() if k != "stats"}
    return [
        (str(tmp_path / "nope.json"), "no such file"),
        (_write(tmp_path, "bad.json", "{not json"), "not valid JSON"),
        (_write(tmp_path, "s2.json", json.dumps(schema2)), "schema"),
        (_write(tmp_path, "kind.json", json.dumps(kind)), "'kind'"),
        (_write(tmp_path, "missing.json", json.dumps(missing)), "malformed measurement"),
        (_write(tmp_path, "list.json", "[1, 2]"), "expected a JSON object"),
    ]


@pytest.mark.parametrize("command", ["predict", "check", "scale"])
def test_malformed_or_wrong_schema_json_is_a_clear_usage_error(tmp_path, command):
    for path, message in _bad_inputs(tmp_path):
        if command == "predict":
            res = invoke("predict", path)
        elif command == "check":
            res = invoke("check", path, "--batch-size", "256")
        else:
            res = invoke(
                "scale",
                "--measurement",
                path,
                "--optimizer",
                "sgd",
                "--lr",
                "0.1",
                "-b",
                "128",
                "-t",
                "256",
            )
        assert res.exit_code == 2, (path, res.output)
        assert message in res.stderr, (path, res.stderr)
        assert "Traceback" not in res.output
        assert res.stdout == ""


# ----------------------------------------------------------------------------------------------
# check
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "code", "tag"),
    [
        # sgd_b128 is one checkpoint: in range is provisional (exit 6)
        (["-b", "1024"], 6, "PROVISIONAL:"),
        (["-b", "1024", "--allow-provisional"], 0, "OK (provisional):"),
        (["-b", "64"], 0, "OK:"),  # scaling down
        (["-b", "2048"], 5, "UNDECIDED:"),  # between the lower bound (1867) and B* (2304)
        (["-b", "2048", "--gate", "point"], 6, "WARN (provisional):"),
        (["-b", "2048", "--gate", "point", "--allow-provisional"], 0, "WARN (provisional):"),
        (["-b", "2048", "--strict"], 1, "FAIL:"),
        (["-b", "1866", "--strict"], 6, "PROVISIONAL:"),
        (["-b", "4096"], 1, "FAIL:"),
    ],
)
def test_check_exit_codes(args, code, tag):
    res = invoke("check", B128, *args)
    assert res.exit_code == code, res.output
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(tag)


def test_check_json():
    res = invoke("check", B128, "-b", "4096", "--json")
    assert res.exit_code == 1
    d = as_json(res)
    assert d["verdict"] == "fail" and d["exit_code"] == 1
    assert d["b_star"] == pytest.approx(2304.0)
    assert d["b_star_lower"] == pytest.approx(LO128, rel=1e-7)
    assert "Thm 5.6" in d["reason"]


def test_check_several_baselines_uses_the_smallest_b_star():
    # B* = 2304 (B = 128) and 3072 (B = 512): 2500 is past the smaller one.
    assert invoke("check", B128, B512, "-b", "2500").exit_code == 1


@pytest.mark.parametrize(
    "args",
    [
        [B128],  # --batch-size missing
        [B128, "--batch-size", "0"],
        [B128, "--batch-size", "abc"],
        [B128, "-b", "256", "--c2", "0.5"],
        [],
    ],
)
def test_check_usage_errors_exit_2(args):
    assert invoke("check", *args).exit_code == 2


def test_check_unbounded_b_star_passes_above_the_lower_bound_with_a_warning():
    # lower bound of B* 58783 < B' <= n = 60000 (above n the check fails: see below)
    res = invoke("check", ADAM_WIDE, "-b", "59000", "--gate", "point", "--allow-provisional")
    assert res.exit_code == 0
    assert res.stdout.startswith("WARN (provisional):")
    res = invoke("check", ADAM_WIDE, "-b", "59000")  # the default gate: undecided
    assert res.exit_code == 5 and res.stdout.startswith("UNDECIDED:")
    assert "no upper bound" in " ".join(res.stderr.split())  # (rich wraps long lines)


def test_check_past_the_dataset_size_fails():
    res = invoke("check", ADAM, "-b", "100000")  # n = 60000
    assert res.exit_code == 1, res.output
    assert res.stdout.startswith("FAIL: B' = 100000 is larger than the dataset size n = 60000")
    assert "Traceback" not in res.output


def _small_n(tmp_path, n: int = 1000) -> str:
    """sgd_b128 with a training set of n examples: the lower bound of B* (1867) is above n."""
    d = json.loads(Path(B128).read_text())
    d["dataset_size"] = n
    p = tmp_path / "small_n.json"
    p.write_text(json.dumps(d))
    return str(p)


def test_check_names_the_dataset_size_when_it_caps_the_range(tmp_path):
    m = _small_n(tmp_path)
    res = invoke("check", m, "-b", "1000", "--allow-provisional")
    assert res.exit_code == 0, res.output
    line = res.stdout.strip()
    head = "OK (provisional): B' = 1000 is within the recommended range [128, 1000]"
    assert line.startswith(head)
    assert "capped at the dataset size n = 1000" in line and "1867" in line
    assert "lower 95% bound of B* = 1000" not in line
    d = as_json(invoke("check", m, "-b", "1000", "--json"))
    assert d["limited_by"] == "dataset_size" and d["dataset_size"] == 1000
    assert d["range_max"] == 1000 and d["b_star_lower"] == pytest.approx(LO128, rel=1e-7)
    assert as_json(invoke("check", B128, "-b", "1000", "--json"))["limited_by"] == "b_star"
    # past the data: exit 1 (it only warned: 1500 is below the lower bound of B*)
    for args in (["-b", "1500"], ["-b", "1001", "--strict"]):
        res = invoke("check", m, *args)
        assert res.exit_code == 1, res.output
        assert (
            res.stdout.startswith("FAIL:") and "larger than the dataset size n = 1000" in res.stdout
        )
        assert "Traceback" not in res.output


# ----------------------------------------------------------------------------------------------
# scale
# ----------------------------------------------------------------------------------------------


def test_scale_sgd_linear():
    res = invoke(
        "scale",
        "--optimizer",
        "sgd",
        "-b",
        "256",
        "-t",
        "1024",
        "--lr",
        "0.1",
        "--momentum",
        "0.9",
        "--weight-decay",
        "5e-4",
        "--steps",
        "10000",
        "--warmup-steps",
        "500",
        "--epochs",
        "90",
    )
    assert res.exit_code == 0, res.output
    out = res.stdout
    assert "linear scaling rule [LMA21 Def. 2.1]" in out
    assert "0.1 -> 0.4" in out and "0.9 -> 0.9" in out
    assert "10000 -> 2500" in out and "500 -> 125" in out and "90 -> 90" in out


def test_scale_adam_json():
    res = invoke(
        "scale",
        "--optimizer",
        "adam",
        "-b",
        "256",
        "-t",
        "1024",
        "--lr",
        "3e-4",
        "--beta2",
        "0.98",
        "--weight-decay",
        "0.01",
        "--steps",
        "100000",
        "--json",
    )
    assert res.exit_code == 0
    d = as_json(res)
    assert d["rule"] == "square-root" and d["kappa"] == 4.0
    h = d["hyperparameters"]
    assert set(h) == {"lr", "beta1", "beta2", "eps", "weight_decay"}
    assert h["lr"] == pytest.approx(6e-4)
    assert h["beta1"] == pytest.approx(0.6) and h["beta2"] == pytest.approx(0.92)
    assert h["eps"] == pytest.approx(5e-9) and h["weight_decay"] == pytest.approx(0.01)
    assert d["steps"] == 25000 and d["warmup_steps"] is None
    assert d["warnings"] == []


def test_scale_adamw_and_rmsprop_and_scaling_down():
    d = as_json(
        invoke(
            "scale",
            "--optimizer",
            "adamw",
            "-b",
            "64",
            "-t",
            "256",
            "--lr",
            "1e-3",
            "--weight-decay",
            "0.05",
            "--json",
        )
    )
    assert d["hyperparameters"]["weight_decay"] == pytest.approx(0.1)  # √4 · 0.05 (derived)
    assert "derived" in d["notes"]["weight_decay"]
    d = as_json(
        invoke(
            "scale",
            "--optimizer",
            "rmsprop",
            "-b",
            "64",
            "-t",
            "16",
            "--lr",
            "1e-2",
            "--alpha",
            "0.99",
            "--json",
        )
    )
    assert d["kappa"] == 0.25
    assert d["hyperparameters"]["lr"] == pytest.approx(5e-3)
    assert d["hyperparameters"]["alpha"] == pytest.approx(1 - 0.25 * 0.01)
    assert d["hyperparameters"]["eps"] == pytest.approx(2e-8)


def test_scale_refuses_kappa_with_non_positive_beta():
    res = invoke("scale", "--optimizer", "adam", "-b", "64", "-t", "1024", "--lr", "1e-3")
    assert res.exit_code == 2
    assert "κ < 1/(1 − beta1) = 10" in res.stderr
    assert res.stdout == ""


@pytest.mark.parametrize(
    "args",
    [
        ["-t", "64"],  # no optimizer, no batch size
        ["--optimizer", "sgd", "-t", "64", "--lr", "0.1"],  # no base batch size
        ["--optimizer", "sgd", "-b", "32", "-t", "64"],  # no lr
        ["--optimizer", "sgd", "-b", "32", "-t", "64", "--lr", "0.1", "--beta1", "0.9"],
        ["--optimizer", "lamb", "-b", "32", "-t", "64", "--lr", "0.1"],
        ["--optimizer", "sgd", "-b", "32", "-t", "0", "--lr", "0.1"],
        ["--optimizer", "sgd", "-b", "32", "-t", "64", "--lr", "-1"],
    ],
)
def test_scale_usage_errors(args):
    res = invoke("scale", *args)
    assert res.exit_code == 2, res.output


def test_scale_refuses_an_optimizer_without_a_rule_plainly():
    res = invoke("scale", "--optimizer", "lion", "-b", "32", "-t", "64", "--lr", "1e-4")
    assert res.exit_code == 2
    assert "bscrit knows no scaling rule for lion: none is established" in res.output


def test_scale_per_param_group_from_a_measurement(tmp_path):
    d = json.loads(Path(ADAM).read_text())
    hp = {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}
    d["optimizer"] |= {"name": "adamw", "weight_decay": 0.05, "source": "checkpoint", "groups": [
        {"index": 0, "tensors": 40, "params": 900, "values": {**hp, "weight_decay": 0.0}},
        {"index": 1, "tensors": 30, "params": 9000, "values": {**hp, "weight_decay": 0.05}},
    ]}  # fmt: skip
    (tmp_path / "m.json").write_text(json.dumps(d))
    res = invoke("scale", "-m", str(tmp_path / "m.json"), "-t", "1024", "--json")
    assert res.exit_code == 0, res.output
    got = as_json(res)
    assert got["hyperparameters"]["weight_decay"] == pytest.approx(0.1)  # λ' = √κ λ, κ = 4
    assert [g["hyperparameters"]["weight_decay"] for g in got["groups"]] == pytest.approx(
        [0.0, 0.1])  # fmt: skip
    # --weight-decay replaces the decayed groups' value; the no-decay group keeps its 0
    res = invoke("scale", "-m", str(tmp_path / "m.json"), "-t", "1024", "--weight-decay", "0.02")
    assert res.exit_code == 0, res.output
    assert "weight_decay 0 -> 0" in res.stdout and "weight_decay 0.02 -> 0.04" in res.stdout


def test_scale_spec_naming_the_optimizer_alone_takes_the_measured_values(tmp_path):
    d = json.loads(Path(ADAM).read_text())
    d["optimizer"] |= {"name": "adamw", "weight_decay": 0.05, "source": "checkpoint"}
    (tmp_path / "m.json").write_text(json.dumps(d))
    text = (ASSETS / "valid.yaml").read_text().split("optimizer:")[0]
    spec = tmp_path / "spec.yaml"
    spec.write_text(text.replace("tiny.py", str(ASSETS / "tiny.py")) + "optimizer: adamw\n")
    got = as_json(invoke("scale", "--from-spec", str(spec), "-m", str(tmp_path / "m.json"),
                         "-t", "64", "--json"))  # fmt: skip
    assert got["optimizer"] == "adamw" and got["old_hyperparameters"]["weight_decay"] == 0.05
    res = invoke("scale", "--from-spec", str(spec), "-t", "64")  # no values anywhere
    assert res.exit_code == 2 and "--lr" in res.output


def test_scale_with_measurement_warns_beyond_the_range():
    res = invoke("scale", "-m", B128, "-t", "4096", "--json")
    assert res.exit_code == 0
    d = as_json(res)
    assert d["batch_size"] == 128  # from the measurement
    assert d["hyperparameters"]["lr"] == pytest.approx(3.2)
    assert any("beyond the recommended range" in w for w in d["warnings"])
    inside = as_json(invoke("scale", "-m", B128, "-t", "1024", "--json"))
    assert inside["warnings"] == []


def test_scale_with_measurement_adam_small_nsr_warning(tmp_path):
    # adam_noisy: NSR 500 at B = 256, n = 60000. At B' = 2048 it is about 500/8.3 > 1: no warning;
    # a made-up NSR of 2 at B = 256 drops to ≈ 0.24 at 2048: the heuristic warning fires.
    assert not any(
        "noise" in w
        for w in as_json(invoke("scale", "-m", ADAM, "-t", "2048", "--json"))["warnings"]
    )
    d = json.loads(Path(ADAM).read_text())
    d["stats"]["all"]["G"] = 0.5
    d["stats"]["all"]["jackknife"]["G"] = [0.5 + (0.01 if j % 2 == 0 else -0.01) for j in range(10)]
    n = d["stats"]["all"]["N"]  # the stored G, NSR and intervals agree (the reader checks)
    d["stats"]["all"] |= {"G_ci95": [0.45, 0.55], "nsr": n / 0.5, "nsr_ci95": [n / 0.55, n / 0.45]}
    p = tmp_path / "adam2.json"
    p.write_text(json.dumps(d))
    out = as_json(invoke("scale", "-m", str(p), "-t", "2048", "--json"))
    expected = 2.0 * ((60000 - 2048) / 2048) / ((60000 - 256) / 256)
    assert math.isclose(expected, 0.2425, rel_tol=1e-3)  # 2·(57952/2048)/(59744/256)
    assert any("heuristic" in w for w in out["warnings"])


def test_scale_from_spec():
    res = invoke("scale", "--from-spec", str(ASSETS / "valid.yaml"), "-t", "64", "--json")
    assert res.exit_code == 0, res.output
    d = as_json(res)
    # valid.yaml: sgd, lr 0.1, momentum 0.9, batch_size 8
    assert d["batch_size"] == 8 and d["kappa"] == 8.0
    assert d["hyperparameters"]["lr"] == pytest.approx(0.8)
    assert d["hyperparameters"]["momentum"] == 0.9
    # command-line options override the spec
    d = as_json(
        invoke(
            "scale", "--from-spec", str(ASSETS / "valid.yaml"), "-t", "64", "--lr", "0.2", "--json"
        )
    )
    assert d["hyperparameters"]["lr"] == pytest.approx(1.6)


def test_scale_from_invalid_spec_is_a_usage_error():
    res = invoke("scale", "--from-spec", str(ASSETS / "invalid_many.yaml"), "-t", "64")
    assert res.exit_code == 2
    assert "invalid spec" in res.stderr


# ----------------------------------------------------------------------------------------------
# examples/ci
# ----------------------------------------------------------------------------------------------

CI = Path(__file__).parents[2] / "examples" / "ci"


def test_ci_workflow_is_valid_yaml_and_gates_on_check():
    import yaml

    wf = yaml.safe_load((CI / "bscrit-gate.yml").read_text())
    steps = wf["jobs"]["gate"]["steps"]
    assert any("bscrit check" in s.get("run", "") for s in steps)
    assert wf["jobs"]["train"]["needs"] == "gate"


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX shell")
@pytest.mark.parametrize(
    ("target", "env_extra", "code", "ran"),
    [("1024", {}, 6, False),  # one checkpoint: provisional, the job does not start
     ("1024", {"BSCRIT_ALLOW_PROVISIONAL": "1"}, 0, True),
     ("2048", {"BSCRIT_ALLOW_PROVISIONAL": "1"}, 5, False),  # undecided
     ("2048", {"BSCRIT_ALLOW_PROVISIONAL": "1", "BSCRIT_GATE": "point"}, 0, True),
     ("4096", {}, 1, False)],
)  # fmt: skip
def test_ci_shell_gate(tmp_path, target, env_extra, code, ran):
    bindir = Path(sys.executable).parent
    if not (bindir / "bscrit").exists():
        pytest.skip("the bscrit console script is not installed beside this python")
    env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    env.update(MEASUREMENT=B128, SCALED=str(tmp_path / "scaled.json"), **env_extra)
    for k in {"BSCRIT_ALLOW_PROVISIONAL", "BSCRIT_GATE", "BSCRIT_STRICT"} - set(env_extra):
        env.pop(k, None)
    r = subprocess.run(
        ["sh", str(CI / "gate.sh"), target, "echo", "TRAINING"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert r.returncode == code, r.stderr
    assert ("TRAINING" in r.stdout) is ran
    if ran:
        scaled = json.loads((tmp_path / "scaled.json").read_text())
        assert scaled["hyperparameters"]["lr"] == pytest.approx(0.1 * int(target) / 128)


def test_ci_shell_gate_bad_measurement_exits_2(tmp_path):
    bindir = Path(sys.executable).parent
    if shutil.which("sh") is None or not (bindir / "bscrit").exists():
        pytest.skip("needs sh and the bscrit console script")
    env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    env.update(MEASUREMENT=str(tmp_path / "missing.json"))
    r = subprocess.run(
        ["sh", str(CI / "gate.sh"), "1024", "echo", "TRAINING"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert r.returncode == 2 and "TRAINING" not in r.stdout


def test_scale_with_measurement_of_another_batch_size_warns():
    d = as_json(invoke("scale", "-m", B128, "-b", "256", "-t", "512", "--lr", "0.2", "--json"))
    assert d["batch_size"] == 256 and d["hyperparameters"]["lr"] == pytest.approx(0.4)
    assert any("measured at B = 128" in w for w in d["warnings"])
