# ruff: noqa: E741  (l is the SVAG parameter of [LMA21])
"""The SVAG verdict, its thresholds and the svag.json / trajectories.csv artifact (no torch)."""

from __future__ import annotations

import csv
import io
import json
import math
import subprocess
import sys

import pytest

from bscrit.errors import ArtifactError
from bscrit.optim import OptimizerInfo
from bscrit.svag.results import (
    SvagResult,
    SvagRun,
    TailSummary,
    agreement,
    compare_runs,
    decide,
    load_svag,
    tail_summary,
    trajectories_csv,
    write_svag,
)

STEPS = tuple(float(e) for e in range(0, 101, 10))  # 11 evaluation points, tail = last 3


def run(l: int, loss_end: float = 0.3, acc_end: float = 0.98, norm_end: float = 30.0,
        wiggle: float = 0.0) -> SvagRun:  # fmt: skip
    """A smooth trajectory from the same start to the given end values (plus an alternating
    wiggle of the given size in the tail)."""
    n = len(STEPS)

    def path(start: float, end: float) -> tuple[float, ...]:
        out = []
        for i in range(n):
            v = start + (end - start) * min(1.0, i / (n - 3))
            if i >= n - 3:
                v += wiggle * (-1) ** i
            out.append(v)
        return tuple(out)

    return SvagRun(
        l=l,
        optimizer=OptimizerInfo("sgd", lr=0.8 / l),
        steps=100 * l,
        effective_steps=STEPS,
        values={
            "train_loss": path(0.5, loss_end),
            "eval_acc": path(0.9, acc_end),
            "norm_sq": path(40.0, norm_end),
            "G": path(0.1, 0.5 * l),  # noisy, not in the verdict
        },
    )


def verdict(runs):
    _, comps = compare_runs(runs)
    return decide(comps, [r.l for r in runs], 1024)


def test_all_agree_is_sde_holds():
    v = verdict([run(1), run(2, loss_end=0.31), run(4, loss_end=0.305)])
    assert v.code == "sde_holds"
    assert v.metrics == ("train_loss", "eval_acc", "norm_sq")
    assert "agree with l = 1" in v.text and "1024" in v.text


def test_high_ls_agree_but_not_with_one_is_sde_fails():
    v = verdict([run(1, norm_end=45.0), run(2, norm_end=20.0), run(4, norm_end=19.5)])
    assert v.code == "sde_fails"
    assert v.failing == ("norm_sq: l=1 vs l=2", "norm_sq: l=1 vs l=4")
    assert "left the SDE regime" in v.text
    assert "Only ‖x‖² disagrees" in v.text
    v = verdict([run(1, loss_end=0.4), run(2), run(4)])
    assert v.code == "sde_fails" and "Only" not in v.text


def test_only_norm_sq_note_needs_every_verdict_disagreement_in_norm_sq():
    """The note reads every comparison of the table's verdict rows, not only the deciding ones."""
    # not_converged by ‖x‖² (l = 2 vs 4), while l = 1 also differs in the train loss
    v = verdict([run(1, loss_end=0.4), run(2), run(4, norm_end=20.0)])
    assert v.code == "not_converged" and v.failing == ("norm_sq: l=2 vs l=4",)
    assert "Only ‖x‖²" not in v.text
    assert v.text.endswith(
        " Also disagreeing, without deciding the verdict: train loss (l = 2 vs 1); "
        "train loss (l = 4 vs 1); ‖x‖² (l = 4 vs 1)."
    )
    # sde_fails decided by ‖x‖² alone (l = 1 vs 4, 8), but l = 2 differs in the train loss too
    v = verdict([run(1, norm_end=45.0), run(2, loss_end=0.4, norm_end=20.0),
                 run(4, norm_end=20.0), run(8, norm_end=20.0)])  # fmt: skip
    assert v.code == "sde_fails"
    assert v.failing == ("norm_sq: l=1 vs l=4", "norm_sq: l=1 vs l=8")
    assert "Only ‖x‖²" not in v.text
    assert "without deciding the verdict: train loss (l = 2 vs 1); ‖x‖² (l = 2 vs 1)." in v.text
    # ‖x‖² alone in every comparison: the note, and nothing else to add
    v = verdict([run(1), run(2), run(4, norm_end=20.0)])
    assert v.code == "not_converged" and "Only ‖x‖² disagrees" in v.text
    assert "‖x‖² (l = 4 vs 1)" in v.text and "train loss" not in v.text


def test_high_ls_disagree_is_not_converged():
    v = verdict([run(1), run(2, loss_end=0.30), run(4, loss_end=0.20)])
    assert v.code == "not_converged"
    assert v.failing == ("train_loss: l=2 vs l=4",)
    assert "--l 1,4,8" in v.text


def test_uses_the_two_largest_l():
    runs = [run(1), run(2, loss_end=0.9), run(8), run(16)]
    assert verdict(runs).code == "sde_holds"  # l = 2 neither decides convergence nor the verdict


def test_metrics_outside_the_verdict_do_not_decide():
    _, comps = compare_runs([run(1), run(2), run(4)])
    g = [c for c in comps if c.metric == "G"]
    assert g and not any(c.in_verdict for c in g) and not all(c.agree for c in g)


def test_diverged_runs():
    bad = run(1)
    values = {**bad.values, "train_loss": (0.5,) + (math.nan,) * 10}
    bad = SvagRun(**{**bad.__dict__, "values": values, "diverged_at": 10.0})
    assert verdict([bad, run(2), run(4)]).code == "sde_fails"
    bad4 = SvagRun(**{**run(4).__dict__, "values": {**run(4).values, "norm_sq": (math.inf,) * 11}})
    assert verdict([run(1), run(2), bad4]).code == "not_converged"


def test_threshold_is_relative_with_a_noise_floor():
    a = TailSummary("train_loss", 1, 1.0, 0.0, 0.0, 3, 1.0)
    assert agreement(a, TailSummary("train_loss", 2, 1.09, 0.0, 0.0, 3, 1.09)).agree
    far = TailSummary("train_loss", 2, 1.2, 0.0, 0.0, 3, 1.2)
    c = agreement(a, far)
    assert not c.agree and c.threshold == pytest.approx(0.12) and c.rel_diff == pytest.approx(1 / 6)
    noisy = TailSummary("train_loss", 2, 1.2, 0.1, 0.05, 3, 1.2)
    c = agreement(a, noisy)  # z·√(0² + 0.1²) = 0.2 ≥ 0.2
    assert c.agree and c.threshold == pytest.approx(0.2)
    assert agreement(a, far, rtol=0.2).agree


def test_accuracy_is_compared_as_error_rate():
    a = TailSummary("eval_acc", 1, 0.98, 0.0, 0.0, 3, 0.98)
    b = TailSummary("eval_acc", 2, 0.97, 0.0, 0.0, 3, 0.97)
    c = agreement(a, b)  # errors 0.02 vs 0.03: 33% apart although the accuracies are 1% apart
    assert c.compared_as.startswith("error rate") and not c.agree
    assert c.a == pytest.approx(0.02) and c.b == pytest.approx(0.03)


def test_tail_summary():
    r = run(1, wiggle=0.01)
    s = tail_summary(r, "train_loss", 0.2)
    assert s.n == 3 and s.mean == pytest.approx(0.3 + 0.01 / 3)
    assert (
        s.final == pytest.approx(0.31) and s.sd > 0 and s.se == pytest.approx(s.sd / math.sqrt(3))
    )


def test_decide_needs_three_ls():
    _, comps = compare_runs([run(1), run(2)])
    with pytest.raises(ValueError):
        decide(comps, [1, 2], 64)


def _result(runs) -> SvagResult:
    summaries, comps = compare_runs(runs)
    return SvagResult(
        batch_size=32, target_batch_size=1024, kappa=32.0, rule="linear",
        rule_reference="linear scaling rule [LMA21 Def. 2.1]",
        base_optimizer=OptimizerInfo("sgd", lr=0.1), target_optimizer=OptimizerInfo("sgd", lr=3.2),
        ls=tuple(r.l for r in runs), effective_steps=100, eval_every=10, eval_batches=8,
        eval_examples=None, seed=0, device="cpu", forward_backward={1: 288, 2: 488, 4: 888},
        runs=tuple(runs), summaries=tuple(summaries), comparisons=tuple(comps),
        verdict=decide(comps, [r.l for r in runs], 1024),
    )  # fmt: skip


def test_artifact_round_trip_with_nan_as_null(tmp_path):
    bad4 = SvagRun(**{**run(4).__dict__, "values": {**run(4).values, "norm_sq": (math.nan,) * 11}})
    res = _result([run(1), run(2), bad4])
    j, c = write_svag(res, tmp_path / "out")
    d = json.loads(j.read_text())
    assert d["schema"] == 1 and d["kind"] == "bscrit.svag"
    assert "Stochastic Variance Amplified Gradient" in d["method"]
    assert d["verdict"]["code"] == "not_converged"
    assert d["runs"][2]["values"]["norm_sq"][0] is None
    assert d["cost"]["total"] == 288 + 488 + 888
    assert {"rtol", "z", "tail", "rule"} <= set(d["thresholds"])
    back = load_svag(tmp_path / "out")
    assert back.verdict == res.verdict and back.comparisons[0].metric == res.comparisons[0].metric
    assert math.isnan(back.runs[2].values["norm_sq"][3])
    assert back.runs[0].values == res.runs[0].values
    rows = list(csv.DictReader(io.StringIO(c.read_text())))
    assert len(rows) == 3 * 11
    assert rows[0].keys() >= {"l", "step", "effective_step", "train_loss", "norm_sq"}
    assert rows[-1]["l"] == "4" and rows[-1]["step"] == "400" and rows[-1]["norm_sq"] == ""
    assert trajectories_csv(res) == c.read_text()


def test_load_rejects_other_artifacts(tmp_path):
    p = tmp_path / "svag.json"
    p.write_text(json.dumps({"schema": 1, "kind": "bscrit.measurement"}))
    with pytest.raises(ArtifactError, match="kind"):
        load_svag(p)
    p.write_text(json.dumps({"schema": 1, "kind": "bscrit.svag"}))
    with pytest.raises(ArtifactError, match="malformed"):
        load_svag(p)


def test_svag_results_does_not_import_torch():
    code = "import sys, bscrit.svag.results; assert 'torch' not in sys.modules"
    r = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
