"""`bscrit svag` end to end on the digits example (examples/digits), through typer's CliRunner.

The checkpoint is trained for a few SGD steps inside the test; every run is a handful of
effective steps on a 1-thread CPU, so the whole file takes seconds, not minutes.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from bscrit.cli import app

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "examples" / "digits"
SPEC = DIGITS / "spec.yaml"
MEASUREMENTS = ROOT / "tests" / "assets" / "measurements"
runner = CliRunner()

FAST = ["--effective-steps", "6", "--eval-every", "3", "--eval-batches", "2",
        "--eval-examples", "64", "--device", "cpu", "--quiet"]  # fmt: skip


def _load(name: str):
    spec = importlib.util.spec_from_file_location(
        f"_svag_test_digits_{name}", DIGITS / f"{name}.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """The digits MLP after 40 SGD steps (B = 32, lr 0.1, wd 5e-4), saved as train.py does."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model = _load("model").make_model(width=64, num_classes=10, affine=False, seed=0)
    x, y = _load("data").load_tensors("train")
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1,
                          weight_decay=5e-4)  # fmt: skip
    g = torch.Generator().manual_seed(0)
    for _ in range(40):
        idx = torch.randperm(len(y), generator=g)[:32]
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    path = tmp_path_factory.mktemp("svag") / "ckpt.pt"
    torch.save({"model": model.state_dict(), "epoch": 1, "batch_size": 32}, path)
    yield path
    torch.set_num_threads(threads)


#: svag's exit code for each verdict (sde_fails 1, undecided 5; bscrit.cli.svag.SVAG_EXIT)
VERDICT_EXIT = {"sde_holds": 0, "sde_fails": 1, "inconclusive": 5, "not_converged": 5}


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_svag_on_digits_writes_table_json_csv_png_and_leaves_the_checkpoint(ckpt, tmp_path):
    before, mtime = _sha(ckpt), os.stat(ckpt).st_mtime_ns
    out, png = tmp_path / "svag-128", tmp_path / "svag-128.png"
    args = ["--out", str(out), "--plot", str(png)]
    r = runner.invoke(app, ["svag", str(SPEC), "--checkpoint", str(ckpt), "--target-batch-size",
                            "128", "--l", "1,2,4", *FAST, *args])  # fmt: skip
    assert r.exit_code in (0, 1, 5), r.output
    # cost stated before the run; no prompt outside a terminal
    assert "2·l forward-backward passes per effective step" in r.output
    assert "non-interactive" in r.output
    assert "verdict (" in r.output and "held-out loss" in r.output
    d = json.loads((out / "svag.json").read_text())
    assert d["schema"] == 2 and d["kind"] == "bscrit.svag"
    assert r.exit_code == VERDICT_EXIT[d["verdict"]["code"]]
    assert d["target_batch_size"] == 128 and d["kappa"] == 4.0 and d["rule"] == "linear"
    assert d["target_optimizer"]["lr"] == pytest.approx(0.4)
    assert [run["optimizer"]["lr"] for run in d["runs"]] == pytest.approx([0.4, 0.2, 0.1])
    assert [run["steps"] for run in d["runs"]] == [6, 12, 24]
    assert d["runs"][0]["effective_steps"] == [0.0, 3.0, 6.0]
    assert set(d["runs"][0]["values"]) == {"train_loss", "train_acc", "G", "N", "norm_sq",
                                           "eval_loss", "eval_acc"}  # fmt: skip
    assert d["cost"]["forward_backward_passes"] == {"1": 12 + 6, "2": 24 + 6, "4": 48 + 6}
    assert d["eval_examples"] == 64 and d["eval_batches"] == 2
    ratios = {r["metric"]: r for r in d["verdict"]["ratios"]}
    assert {"norm_sq", "G", "N", "train_loss", "eval_loss"} <= set(ratios)
    assert [m for m, r in ratios.items() if r["decides"]] == ["train_loss", "eval_loss"]
    assert d["verdict"]["config"]["c2"] == 2.0
    # τ = 1/(2η'λ) at B' = 128: η' = 0.4, λ = 5e-4
    assert d["relaxation_steps"] == pytest.approx(1 / (2 * 0.4 * 5e-4))
    assert "(given)" in d["sizing"]
    # every l starts from the same point: identical test functions at effective step 0
    first = [tuple(run["values"][m][0] for m in ("train_loss", "norm_sq", "eval_loss"))
             for run in d["runs"]]  # fmt: skip
    assert first[0] == first[1] == first[2]
    csv = (out / "trajectories.csv").read_text().splitlines()
    assert csv[0].startswith("l,step,effective_step,train_loss")
    assert len(csv) == 1 + 3 * 3
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert _sha(ckpt) == before and os.stat(ckpt).st_mtime_ns == mtime
    assert not list(out.glob(".*.tmp")) and not list(tmp_path.glob(".*.tmp*"))


def test_svag_json_is_reproducible_and_overrides_apply(ckpt):
    args = ["svag", str(SPEC), "-c", str(ckpt), "-t", "64", "--l", "1,2,4", *FAST, "--json",
            "--lr", "0.3", "--momentum", "0.5"]  # fmt: skip
    r1 = runner.invoke(app, args)
    d1 = json.loads(r1.stdout)
    assert r1.exit_code == VERDICT_EXIT[d1["verdict"]["code"]], r1.output
    assert d1["target_optimizer"]["lr"] == 0.3 and d1["target_optimizer"]["momentum"] == 0.5
    assert d1["target_optimizer"]["source"] == "cli"
    assert [run["optimizer"]["lr"] for run in d1["runs"]] == pytest.approx([0.3, 0.15, 0.075])
    assert all(run["optimizer"]["momentum"] == 0.5 for run in d1["runs"])
    d2 = json.loads(runner.invoke(app, args).stdout)
    assert d1["runs"][2]["values"] == d2["runs"][2]["values"]  # same seeds, same result


def test_svag_adam_spec_warm_starts(ckpt, tmp_path):
    raw = yaml.safe_load(SPEC.read_text())
    raw["model"]["factory"] = f"{DIGITS / 'model.py'}:make_model"
    raw["data"]["factory"] = raw["eval_data"]["factory"] = f"{DIGITS / 'data.py'}:make_dataset"
    raw["optimizer"] = {"name": "adam", "lr": 0.001, "betas": [0.9, 0.99]}
    raw["schedule"] = {"name": "step", "milestones": [8], "gamma": 0.5}
    spec = tmp_path / "adam.yaml"
    spec.write_text(yaml.safe_dump(raw))
    r = runner.invoke(app, ["svag", str(spec), "-c", str(ckpt), "-t", "128", "--l", "1,4,16",
                            *FAST, "--json"])  # fmt: skip
    d = json.loads(r.stdout)
    assert r.exit_code == VERDICT_EXIT[d["verdict"]["code"]], r.output
    assert d["rule"] == "square-root"
    t = d["target_optimizer"]  # κ = 4: η' = 2η, β' = 1 − 4(1 − β)
    assert t["lr"] == pytest.approx(0.002) and t["betas"] == pytest.approx([0.6, 0.96])
    l16 = d["runs"][2]["optimizer"]  # SVAG l = 16: η/4, β ← 1 − (1 − β)/16, ε·4
    assert l16["lr"] == pytest.approx(0.0005)
    assert l16["betas"] == pytest.approx([1 - 0.4 / 16, 1 - 0.04 / 16])
    assert d["schedule"]["milestones"] == [2]
    assert any("warm-started" in n for n in d["notes"])


@pytest.mark.parametrize(
    "args,message",
    [
        (["-t", "4096"], "exceeds the 1500 training examples"),
        (["-t", "64", "--l", "1,2"], "at least three distinct values"),
        (["-t", "64", "--beta1", "0.9"], "--beta1/--beta2 apply to adam"),
        (["-t", "64", "--from-measurement", str(MEASUREMENTS / "sgd_b128.json")], "exactly one"),
        (["--from-measurement", str(MEASUREMENTS / "sgd_b128.json")], "1866"),
    ],
)
def test_svag_usage_errors_exit_2(ckpt, args, message):
    r = runner.invoke(app, ["svag", str(SPEC), "-c", str(ckpt), *args, "--device", "cpu", "-q"])
    assert r.exit_code == 2, r.output
    assert message in r.output


def test_from_measurement_takes_the_top_of_the_recommended_range(ckpt):
    r = runner.invoke(app, ["svag", str(SPEC), "-c", str(ckpt), "--device", "cpu", "-q",
                            "--from-measurement", str(MEASUREMENTS / "sgd_b128.json")])  # fmt: skip
    assert "B' = 1866: the top of the recommended range" in r.output


def test_from_measurement_caps_the_target_at_half_the_dataset(ckpt, tmp_path, monkeypatch):
    """Range top = n (the lower bound of B*, 1867, is above the 1500 digits): B' = n/2, so the
    two batches of a SVAG step do not overlap; the info line says so (declined: nothing runs)."""
    import bscrit.cli.common as cli

    d = json.loads((MEASUREMENTS / "sgd_b128.json").read_text())
    d["dataset_size"] = 1500
    m = tmp_path / "digits_n.json"
    m.write_text(json.dumps(d))
    monkeypatch.setattr(cli, "interactive", lambda: True)
    out = tmp_path / "svag-out"
    r = runner.invoke(app, ["svag", str(SPEC), "-c", str(ckpt), "--from-measurement", str(m),
                            *FAST, "--out", str(out)], input="n\n")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "Traceback" not in r.output
    assert "B' = 750: n/2 = 750 (the top of the recommended range, 1500, is above it)" in r.output
    assert "SVAG at B' = 750 on cpu" in r.output  # the plan runs at n/2, not at n
    assert "not started" in r.output and not out.exists()


def test_interactive_prompt_can_decline_and_yes_skips_it(ckpt, tmp_path, monkeypatch):
    import bscrit.cli.common as cli

    monkeypatch.setattr(cli, "interactive", lambda: True)
    out = tmp_path / "declined"
    base = ["svag", str(SPEC), "-c", str(ckpt), "-t", "64", *FAST, "--out", str(out)]
    r = runner.invoke(app, base, input="n\n")
    assert r.exit_code == 0, r.output
    assert "Run it?" in r.output and "not started" in r.output and not out.exists()
    r = runner.invoke(app, [*base, "--yes", "--allow-inconclusive"])
    assert r.exit_code in (0, 1), r.output
    assert "Run it?" not in r.output and (out / "svag.json").exists()


def test_ci_env_means_non_interactive(monkeypatch):
    import bscrit.cli.common as cli

    monkeypatch.setenv("CI", "true")
    assert cli.interactive() is False


def _flat(text: str) -> str:
    return " ".join(text.split())  # rich wraps long lines


@pytest.mark.parametrize(
    "args,message",
    [
        (["--out", "a_file"], "--out a_file: exists and is not a folder"),
        (["--out", "json_is_a_folder"], "svag.json: is an existing folder, expected a file name"),
        (["--plot", "a_folder"], "--plot a_folder: is an existing folder, expected a file name"),
        (["--plot", "new/"], "--plot new/: ends in '/', expected a file name"),
        (["--plot", "a_file/f.png"], "--plot a_file/f.png: cannot create a folder under the file"),
    ],
)
def test_unwritable_out_or_plot_exits_2_before_any_work(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    Path("a_file").write_text("x")
    Path("a_folder").mkdir()
    Path("json_is_a_folder/svag.json").mkdir(parents=True)
    before = sorted(p.name for p in tmp_path.iterdir())
    # checked before the spec is even read: a missing spec is not what is reported
    r = runner.invoke(app, ["svag", "no-such-spec.yaml", "-t", "64", *args])
    assert r.exit_code == 2, r.output
    assert message in _flat(r.output) and "Traceback" not in r.output
    assert "no-such-spec" not in r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_plot_failing_after_the_run_prints_the_results_and_exits_3(ckpt, tmp_path, monkeypatch):
    import errno

    import matplotlib.figure

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", full)
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["svag", str(SPEC), "-c", str(ckpt), "-t", "64", *FAST,
                            "--out", "out", "--plot", "fig.png"])  # fmt: skip
    assert r.exit_code == 3, r.output
    assert "Traceback" not in r.output
    err = _flat(r.stderr)
    assert "cannot write fig.png (No space left on device)" in err
    assert "(wrote out/svag.json, out/trajectories.csv)" in err
    assert "the results are printed on stdout as JSON" in err
    d = json.loads(r.stdout[r.stdout.index("{") :])  # nothing lost
    assert d["kind"] == "bscrit.svag" and d["target_batch_size"] == 64
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no figure, no temp file


def test_svag_says_when_it_overwrites(ckpt, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["svag", str(SPEC), "-c", str(ckpt), "-t", "64", "--l", "1,2,4", *FAST, "--out", "o"]
    r = runner.invoke(app, args)
    assert r.exit_code in (0, 1, 5), r.output
    assert "wrote o/svag.json and o/trajectories.csv" in _flat(r.output)
    assert "overwrote" not in r.output
    r = runner.invoke(app, args)
    assert r.exit_code in (0, 1, 5), r.output
    assert (
        "wrote o/svag.json and o/trajectories.csv "
        "(overwrote the existing o/svag.json, o/trajectories.csv)"
    ) in _flat(r.output)


# ----------------------------------------------------------------------------------------------
# Runtime failures: exit 3, one message naming the run (tests/assets: the tiny model)
# ----------------------------------------------------------------------------------------------

ASSETS = ROOT / "tests" / "assets"
TINY = ["-t", "16", "--effective-steps", "4", "--eval-every", "2", "--eval-batches", "2",
        "--device", "cpu", "--quiet"]  # fmt: skip


@pytest.fixture()
def tiny(tmp_path: Path) -> Path:
    import shutil

    for name in ("tiny.py", "tiny.pt", "valid.yaml"):
        shutil.copy(ASSETS / name, tmp_path / name)
    return tmp_path


def test_nan_checkpoint_exits_3_naming_the_run_step_and_quantity(tiny):
    sd = torch.load(tiny / "tiny.pt", weights_only=True)
    name = next(k for k in sd["model"] if k.endswith("weight"))
    sd["model"][name] = torch.full_like(sd["model"][name], float("nan"))
    torch.save(sd, tiny / "nan.pt")
    out = tiny / "svag-out"
    r = runner.invoke(app, ["svag", str(tiny / "valid.yaml"), "-c", str(tiny / "nan.pt"), *TINY,
                            "--out", str(out)])  # fmt: skip
    assert r.exit_code == 3, r.output
    assert "Traceback" not in r.output
    text = " ".join(r.output.split())  # rich wraps long lines
    assert "SVAG run l = 1" in text and "effective step 0" in text
    assert "train_loss = nan" in text
    assert "not_converged" not in text and not out.exists()


def test_diverging_runs_exit_3_naming_each_run(tiny):
    out = tiny / "svag-out"
    r = runner.invoke(app, ["svag", str(tiny / "valid.yaml"), *TINY, "--lr", "1e30",
                            "--out", str(out)])  # fmt: skip
    assert r.exit_code == 3, r.output
    assert "Traceback" not in r.output
    text = " ".join(r.output.split())  # rich wraps long lines
    assert "SVAG run diverged" in text
    assert all(f"l = {lv} at effective step 2" in text for lv in (1, 2, 4))
    assert "--lr" in text and not out.exists()


def test_labels_out_of_range_exit_3(tiny):
    spec = tiny / "labels.yaml"
    spec.write_text((tiny / "valid.yaml").read_text().replace("{n: 64}", "{n: 64, classes: 5}"))
    r = runner.invoke(app, ["svag", str(spec), *TINY])
    assert r.exit_code == 3, r.output
    assert "Traceback" not in r.output
    text = " ".join(r.output.split())  # rich wraps long lines
    assert "SVAG run l = 1: the forward/backward pass failed" in text
    assert "out of bounds" in text
