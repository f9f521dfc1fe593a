"""Adam/AdamW: one recommendation from the registry (recommended.limited_by), and words that fit
the optimizer in every command's output (no "linear scaling", the run never called SGD)."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bscrit.artifacts.measurement import load_measurement, write_measurement
from bscrit.cli import app
from bscrit.theory.prediction import check, predict

MEAS = Path(__file__).resolve().parents[1] / "assets" / "measurements"
ASSETS = Path(__file__).resolve().parents[1] / "assets"
runner = CliRunner()

#: What an adaptive run's output must never say.
SGD_WORDS = re.compile(r"linear scaling|\bSGD (?:tracks|has left)|the linear rule", re.IGNORECASE)


def _adam(name: str, **changes: object):
    m = load_measurement(MEAS / name)
    return dataclasses.replace(m, **changes) if changes else m


@pytest.mark.parametrize(
    "name,changes,limited_by",
    [
        ("adam_noisy.json", {}, "scaling_rule"),  # β₁ = 0.9: κ < 10 binds before B*'s bound
        ("adam_wide.json", {"dataset_size": 30000}, "dataset_size"),  # n below B*'s lower bound
        ("adam_wide.json", {}, None),  # Ĝ's interval reaches 0: no limit detected
    ],
)
def test_recommended_limited_by_contract(name, changes, limited_by):
    p = predict([(name, _adam(name, **changes))])
    d = json.loads(json.dumps(p.to_dict(), allow_nan=False))
    assert d["recommended"]["limited_by"] == limited_by
    assert d["recommended"]["max"] == pytest.approx(p.recommended.max)
    assert p.recommended.note  # the reason, in words


def test_b_star_binds_for_an_adam_run_with_a_bounded_b_star():
    m = _adam("adam_wide.json")
    # the same run with a clear signal: G's interval away from 0, so B* is bounded
    all_ = dataclasses.replace(m.all, jackknife_G=tuple(0.05 for _ in m.all.jackknife_G), G=0.05)
    p = predict([("adam", dataclasses.replace(m, all=all_))])
    assert p.base.b_star_bounded
    assert p.recommended.limited_by == "b_star"
    assert p.recommended.max == pytest.approx(p.base.b_star_ci95[0])


def test_check_exits_1_past_the_rule_and_scale_offers_the_largest_feasible_batch(tmp_path):
    p = predict([("adam", _adam("adam_noisy.json"))])
    assert check(p, 2559).exit_code == 6  # in range, from one checkpoint: provisional
    assert check(p, 2559, allow_provisional=True).exit_code == 0 and check(p, 2560).exit_code == 1
    r = runner.invoke(app, ["check", str(MEAS / "adam_noisy.json"), "-b", "4096"])
    assert r.exit_code == 1 and "square-root scaling rule" in r.stdout
    r = runner.invoke(app, ["scale", "--optimizer", "adam", "-b", "256", "-t", "4096",
                            "--lr", "1e-3"])  # fmt: skip
    assert r.exit_code == 2 and "the largest B' it reaches is 2559" in " ".join(r.output.split())


def _outputs_of_every_command(tmp_path: Path) -> list[str]:
    outs = []
    for name in ("adam_noisy.json", "adam_wide.json"):
        m = str(MEAS / name)
        for args in (["predict", m], ["predict", m, "--json"], ["check", m, "-b", "512"],
                     ["check", m, "-b", "2000"], ["check", m, "-b", "59000"],
                     ["check", m, "-b", "59000", "--json"],
                     ["scale", "-m", m, "-t", "1024"]):  # fmt: skip
            r = runner.invoke(app, args)
            assert r.exit_code in (0, 1, 5, 6), (args, r.output)  # an answer, never an error
            outs.append(r.output)
    return outs


def test_no_adaptive_output_says_linear_scaling_or_calls_the_run_sgd(tmp_path):
    for out in _outputs_of_every_command(tmp_path):
        flat = " ".join(out.split())
        assert not SGD_WORDS.search(flat), SGD_WORDS.search(flat).group(0)  # type: ignore[union-attr]
        assert "square-root" in flat or "adam" in flat.lower()


@pytest.mark.slow
def test_svag_verdict_of_an_adam_run_names_adam(tmp_path):
    for f in ("tiny.py", "tiny.pt", "valid.yaml"):
        shutil.copy(ASSETS / f, tmp_path / f)
    spec = tmp_path / "valid.yaml"
    text = spec.read_text().replace(
        "optimizer: {name: sgd, lr: 0.1, momentum: 0.9, weight_decay: 5.0e-4}",
        "optimizer: {name: adamw, lr: 0.001, betas: [0.99, 0.999], weight_decay: 0.01}",
    )
    spec.write_text(text)
    r = runner.invoke(app, ["svag", str(spec), "-t", "16", "--l", "1,2,4", "-e", "6",
                            "--eval-every", "3", "--eval-batches", "2", "--device", "cpu",
                            "-q", "--yes"])  # fmt: skip
    assert r.exit_code == 0, r.output
    flat = " ".join(r.output.split())
    assert not SGD_WORDS.search(flat)
    assert "AdamW" in flat and "square-root" in flat


def test_measurement_round_trip_keeps_the_preconditioned_reading(tmp_path):
    m = _adam("adam_wide.json")
    n = m.all.N  # a consistent preconditioned set: G = 0.004 inside its interval, NSR = N/G
    pre = dataclasses.replace(
        m.all, G=0.004, G_ci95=(0.003, 0.005), jackknife_G=tuple(0.004 for _ in m.all.jackknife_G),
        nsr=n / 0.004, nsr_ci95=(n / 0.005, n / 0.003),
    )  # fmt: skip
    m2 = dataclasses.replace(m, preconditioned=pre, preconditioner="diag(1/(sqrt(v)+eps))")
    path, _ = write_measurement(m2, tmp_path / "m.json")
    back = load_measurement(path)
    assert back.preconditioned == pre and back.preconditioner == m2.preconditioner
    p = predict([("m", back)])
    assert p.base.param_set == "preconditioned"
    assert [o.name for o in p.base.other_readings] == ["all"]
    d = p.to_dict()["measurements"][0]
    assert d["param_set"] == "preconditioned" and d["other_readings"][0]["param_set"] == "all"


def test_noise_dominance_statistic_at_the_target_batch():
    """predict reports NSR at the top of the range for adaptive runs (docs/theory.md §5)."""
    from bscrit.theory.formulas import nsr_at_batch

    p = predict([("adam", _adam("adam_noisy.json"))])
    b = p.base
    expect = nsr_at_batch(b.nsr, b.batch_size, p.recommended.target, b.dataset_size)
    assert p.nsr_at_target == pytest.approx(expect)
    d = p.to_dict()["noise_dominance"]
    assert d["batch_size"] == 2559 and d["nsr"] == pytest.approx(expect) and d["threshold"] == 1
    sgd = predict([("sgd", load_measurement(MEAS / "sgd_b128.json"))])
    assert sgd.nsr_at_target is None and sgd.to_dict()["noise_dominance"] is None


@pytest.mark.parametrize(
    "name,changes,label",
    [
        ("adam_noisy.json", {}, "the scaling rule's reach"),
        ("adam_wide.json", {"dataset_size": 30000}, "the dataset size n"),
        ("adam_wide.json", {}, "nothing detected"),
    ],
)
def test_predict_table_names_the_limit_in_words(name, changes, label):
    import io

    from rich.console import Console

    from bscrit import report

    p = predict([(name, _adam(name, **changes))])
    console = Console(file=io.StringIO(), width=120)
    report.show(report.format_prediction(p), console=console)
    line = next(x for x in console.file.getvalue().splitlines() if "limited by" in x)
    assert label in line
