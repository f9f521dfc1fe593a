# ruff: noqa: E741  (l is the SVAG parameter of [LMA21])
"""The calibrated SVAG verdict (bscrit.runs.svag.verdict) on the Ornstein-Uhlenbeck closed form
and on synthetic runs, and the svag.json / trajectories.csv artifact (no torch).

The OU process: L(x) = a x²/2 per coordinate, gradient noise σξ. SVAG with parameter l is
x ← x − (η/l)(a x + σ(r₁ξ₁ + r₂ξ₂)), whose stationary variance is the closed form
V_l = ησ²/(a(2 − ηa/l)); l = 1 is SGD, l → ∞ the SDE's ησ²/(2a). So SGD/SDE of ‖x‖² (and of
G = a²‖x‖², of the loss) is 2/(2 − ηa), and SGD and its SDE are C-close ([LMA21] Def. 5.1) iff
ηa ≤ 2 − 2/C: the verdict must hold below that boundary and fail above it.
"""

from __future__ import annotations

import csv
import io
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from bscrit.errors import ArtifactError
from bscrit.optim.registry import OptimizerInfo
from bscrit.runs.svag.results import (
    SvagResult,
    SvagRun,
    load_svag,
    svag_verdict,
    trajectories_csv,
    write_svag,
)
from bscrit.runs.svag.tail import tail_stat, tail_window
from bscrit.runs.svag.verdict import DECISION_METRICS, VerdictConfig, decide

# ----------------------------------------------------------------------------------------------
# The OU closed form
# ----------------------------------------------------------------------------------------------

A, SIGMA, D = 1.0, 1.0, 2000


def stationary(eta: float, l: float) -> float:
    """V_l = ησ²/(a(2 − ηa/l)); l = ∞ is the SDE's ησ²/(2a)."""
    return (
        eta * SIGMA**2 / (A * (2.0 - eta * A / l)) if math.isfinite(l) else eta * SIGMA**2 / (2 * A)
    )


def ou_runs(eta: float, ls=(1, 2, 4), steps: int = 200, seed: int = 0) -> list[SvagRun]:
    """SVAG-l on D independent OU coordinates, from the SDE's stationary law (the checkpoint at
    equilibrium), evaluated at every effective step: norm_sq = mean x², G = a² mean x², N = σ²
    (the trace of the one-batch covariance, the same for every l), train loss = a mean x²/2."""
    rng = np.random.default_rng(seed)
    x0 = rng.normal(0.0, math.sqrt(stationary(eta, math.inf)), D)
    runs = []
    for l in ls:
        r1, r2 = (1 + math.sqrt(2 * l - 1)) / 2, (1 - math.sqrt(2 * l - 1)) / 2
        x, vals = x0.copy(), []
        g = np.random.default_rng(seed + 1)  # same seed for every l, as bscrit svag does
        for k in range(steps * l + 1):
            if k % l == 0:
                vals.append(float(np.mean(x**2)))
            if k < steps * l:
                noise = SIGMA * (r1 * g.standard_normal(D) + r2 * g.standard_normal(D))
                x -= (eta / l) * (A * x + noise)
        v = tuple(vals)
        runs.append(SvagRun(
            l=l, optimizer=OptimizerInfo("sgd", lr=eta / l), steps=steps * l,
            effective_steps=tuple(float(e) for e in range(steps + 1)),
            values={"norm_sq": v, "G": tuple(A**2 * y for y in v), "N": (SIGMA**2,) * len(v),
                    "train_loss": tuple(A * y / 2 for y in v)},
        ))  # fmt: skip
    return runs


def tau(eta: float) -> float:
    """Relaxation of the variance: (1 − ηa)² ≈ 1 − 2ηa per step, τ = 1/(2ηa) ([LMA21] eq. 10)."""
    return 1.0 / (2.0 * eta * A)


def test_ou_tail_means_match_the_closed_form():
    eta = 0.3
    for run in ou_runs(eta):
        start, _ = tail_window(run.effective_steps[-1], tau(eta))
        s = tail_stat("norm_sq", run.l, run.effective_steps, run.values["norm_sq"], start, tau(eta))
        assert abs(s.mean - stationary(eta, run.l)) < 4 * s.se, (run.l, s)


def test_ou_boundary_of_c_closeness_from_the_closed_form():
    """Holds for small ηa, fails above ηa* = 2 − 2/C (where 2/(2 − ηa) = C), C² = 2."""
    cfg = VerdictConfig(c2=2.0, decide_on=DECISION_METRICS)  # Def. 5.1's R, G, ηN and the loss
    star = 2.0 - 2.0 / cfg.C  # ≈ 0.586
    small = decide(ou_runs(0.05), tau(0.05), config=cfg)
    assert small.code == "sde_holds", small.text
    r = small.ratio("norm_sq")
    assert r.status == "inside" and r.lo <= 2 / (2 - 0.05) * 1.02
    above = 1.35 * star  # closed-form ratio 2/(2 − 0.79) ≈ 1.65 > C
    big = decide(ou_runs(above), tau(above), config=cfg)
    assert 2 / (2 - above) > cfg.C
    assert big.code == "sde_fails", big.text
    assert set(big.failing) >= {"norm_sq", "G", "train_loss"} and "N" not in big.failing
    assert big.ratio("N").ratio == pytest.approx(1.0)  # like with like: Tr Σ, not l·Σ


@pytest.mark.parametrize("margin", [0.9, 1.1])
def test_ou_verdict_flips_where_the_closed_form_ratio_crosses_c(margin):
    """At ηa = 0.3 the closed form gives SGD/SDE = 2/1.7 ≈ 1.18: C just below → fails, just
    above → holds (C² passed as --c2 would be)."""
    eta = 0.3
    rho = 2 / (2 - eta * A)
    cfg = VerdictConfig(c2=(rho * margin) ** 2)  # the loss decides (the default): ratio ρ too
    v = decide(ou_runs(eta, ls=(1, 2, 4, 8)), tau(eta), config=cfg)
    assert v.code == ("sde_fails" if margin < 1 else "sde_holds"), v.text


def test_ou_extrapolates_only_when_the_runs_show_the_trend():
    eta = 0.8  # V_l/V_∞ = 1.67, 1.25, 1.11 for l = 1, 2, 4: monotone and converging
    v = decide(ou_runs(eta), tau(eta))
    assert "norm_sq" in v.extrapolated
    sde = next(s for s in v.sde if s.metric == "norm_sq")
    # 1/l-extrapolation is closer to the SDE than the largest l
    assert abs(sde.value - stationary(eta, math.inf)) < abs(
        stationary(eta, 4) - stationary(eta, math.inf)
    )
    never = decide(ou_runs(eta), tau(eta), config=VerdictConfig(extrapolate="never"))
    assert never.extrapolated == ()
    # N is the same for every l: no trend, the largest l
    assert next(s for s in v.sde if s.metric == "N").source == "largest_l"


# ----------------------------------------------------------------------------------------------
# Synthetic runs: settled or not, interval rule
# ----------------------------------------------------------------------------------------------

T = tuple(float(e) for e in range(0, 201, 5))


def flat(l, level, *, noise=0.01, drift=0.0, wave=0.0, seed=0,
         metrics=("norm_sq", "train_loss")) -> SvagRun:  # fmt: skip
    """A run at ``level`` (relative noise ``noise``) with a linear relative ``drift`` over it and
    a slow relative oscillation ``wave`` (period 100 steps: strongly autocorrelated)."""
    rng = np.random.default_rng(seed + 10 * l)
    vals = tuple(level * (1 + drift * e / T[-1] + wave * math.sin(2 * math.pi * e / 100)
                          + noise * rng.standard_normal()) for e in T)  # fmt: skip
    return SvagRun(l=l, optimizer=OptimizerInfo("sgd", lr=1.0 / l), steps=200 * l,
                   effective_steps=T, values={m: vals for m in metrics})  # fmt: skip


def test_a_drifting_svag_run_is_not_converged_but_a_few_percent_apart_is_not():
    v = decide([flat(1, 1.0), flat(2, 1.0), flat(4, 1.0, drift=0.6)], 20.0)
    assert v.code == "not_converged" and "drifts" in v.text
    v = decide([flat(1, 1.0), flat(2, 1.04), flat(4, 1.05)], 20.0)
    assert v.code == "sde_holds" and not v.unsettled


def test_a_reversed_l_trend_is_not_converged():
    v = decide([flat(1, 1.0), flat(2, 1.5), flat(4, 1.0)], 20.0)
    assert v.code == "not_converged" and "not monotone" in v.text


def test_interval_rule_against_point_rule():
    """A ratio whose point is outside but whose interval reaches inside: inconclusive under the
    interval rule (never sde_holds: undecided does not default to holds), a failure under the
    point rule."""
    runs = [flat(1, 1.5, wave=0.4), flat(2, 1.0), flat(4, 1.0)]
    vi = decide(runs, 20.0, config=VerdictConfig(fail_rule="interval"))
    r = vi.ratio("train_loss")
    assert r.status == "straddles" and not r.point_inside
    assert vi.code == "inconclusive" and vi.undecided == ("train_loss",)
    assert "undecided" in vi.text and "not a hold" in vi.text and "agree" not in vi.text
    assert decide(runs, 20.0, config=VerdictConfig(fail_rule="point")).code == "sde_fails"


def test_straddling_with_the_point_inside_is_inconclusive_too():
    """The point estimate inside [1/C, C] does not make a straddling interval a hold."""
    runs = [flat(1, 1.32, wave=0.4), flat(2, 1.0), flat(4, 1.0)]
    v = decide(runs, 20.0)
    r = v.ratio("train_loss")
    assert r.status == "straddles" and r.point_inside, r
    assert v.code == "inconclusive"


def _ratio(metric: str, ratio: float, lo: float, hi: float, status: str, decides: bool):
    from bscrit.runs.svag.ratios import RatioEstimate

    return RatioEstimate(metric, ratio, 1.0, ratio, lo, hi, status, status == "inside", decides,
                         "largest_l")  # fmt: skip


def test_c_close_is_said_only_of_def51_ratios_and_denied_when_r_lies_outside():
    """mnist1d-si at B' = 512 (benchmarks/validation/results/agreement): the losses decide and
    lie inside, R's ratio 1.55 [1.46, 1.65] lies wholly outside [1/√2, √2]: not C-close."""
    from bscrit.runs.svag.verdict import def51_reading

    losses = [_ratio("train_loss", 1.1, 1.0, 1.2, "inside", True),
              _ratio("eval_loss", 1.0, 0.9, 1.1, "inside", True)]  # fmt: skip
    r_out = _ratio("norm_sq", 1.55, 1.46, 1.65, "outside", False)
    g_in = _ratio("G", 1.0, 0.9, 1.1, "inside", False)
    n_in = _ratio("N", 1.0, 0.9, 1.1, "inside", False)
    words = def51_reading([r_out, g_in, n_in, *losses])
    assert words.startswith("Not C-close") and "1.55 [1.46, 1.65]" in words
    assert "(shown, not deciding)" in words
    r_in = _ratio("norm_sq", 1.1, 1.0, 1.2, "inside", False)
    assert "C-close in the sense" in def51_reading([r_in, g_in, n_in, *losses])
    assert not def51_reading([r_in, g_in, n_in, *losses]).startswith("Not")
    g_unres = _ratio("G", 1.0, 0.5, 2.0, "unresolved", False)
    assert "do not settle" in def51_reading([r_in, g_unres, n_in, *losses])


def test_default_verdict_text_never_says_c_close_when_only_the_losses_decide():
    v = decide([flat(1, 1.0), flat(2, 1.04), flat(4, 1.05)], 20.0)
    assert v.code == "sde_holds" and v.config.decide_on == ("train_loss", "eval_loss")
    head = v.text.split(". ")[0]
    assert "agree on" in head and "C-close" not in head


def test_tail_window_skips_a_relaxation_time_or_takes_the_last_half():
    assert tail_window(400.0, 100.0)[0] == 100.0
    assert tail_window(150.0, 100.0)[0] == 75.0  # shorter than 2τ
    assert tail_window(300.0, None)[0] == 150.0


def test_non_finite_tail_is_an_error_not_a_verdict():
    bad = flat(4, 1.0)
    bad = SvagRun(
        **{**bad.__dict__, "values": {m: (*v[:-1], math.nan) for m, v in bad.values.items()}}
    )
    with pytest.raises(ValueError, match="not finite"):
        decide([flat(1, 1.0), flat(2, 1.0), bad], 20.0)


def test_bad_config_is_refused():
    with pytest.raises(ValueError):
        VerdictConfig(c2=1.0)
    with pytest.raises(ValueError):
        VerdictConfig(fail_rule="median")


# ----------------------------------------------------------------------------------------------
# The artifact
# ----------------------------------------------------------------------------------------------


def _result(runs) -> SvagResult:
    opt = OptimizerInfo("sgd", lr=3.2, weight_decay=5e-3)
    v, tau_ = svag_verdict(runs, opt, 1024)
    return SvagResult(
        batch_size=32, target_batch_size=1024, kappa=32.0, rule="linear",
        rule_reference="linear scaling rule [LMA21 Def. 2.1]",
        base_optimizer=OptimizerInfo("sgd", lr=0.1), target_optimizer=opt,
        ls=tuple(r.l for r in runs), effective_steps=200, eval_every=5, eval_batches=8,
        eval_examples=None, seed=0, device="cpu", forward_backward={1: 288, 2: 488, 4: 888},
        runs=tuple(runs), verdict=v, relaxation_steps=tau_, sizing="200 effective steps",
    )  # fmt: skip


def test_artifact_round_trip(tmp_path):
    res = _result([flat(1, 1.0), flat(2, 1.0), flat(4, 1.0)])
    assert res.relaxation_steps == pytest.approx(1 / (2 * 3.2 * 5e-3))
    j, c = write_svag(res, tmp_path / "out")
    d = json.loads(j.read_text())
    assert d["schema"] == 2 and d["kind"] == "bscrit.svag"
    assert "Stochastic Variance Amplified Gradient" in d["method"]
    assert d["verdict"]["code"] == "sde_holds" and d["verdict"]["config"]["C"] == pytest.approx(
        math.sqrt(2)
    )
    r = d["verdict"]["ratios"][0]
    assert {"metric", "ratio", "ci95", "status", "sde_source"} <= set(r)
    assert d["relaxation_steps"] == pytest.approx(res.relaxation_steps)
    back = load_svag(tmp_path / "out")
    assert back.verdict == res.verdict and back.runs == res.runs
    rows = list(csv.DictReader(io.StringIO(c.read_text())))
    assert len(rows) == 3 * len(T)
    assert trajectories_csv(res) == c.read_text()


def test_schema_1_file_is_upgraded_by_recomputing_the_verdict(tmp_path):
    res = _result([flat(1, 1.6), flat(2, 1.0), flat(4, 1.0)])
    d = res.to_dict()
    d["schema"] = 1
    d["verdict"] = {"code": "sde_holds", "text": "old", "reference_l": 1, "high_ls": [2, 4],
                    "metrics": ["norm_sq"], "failing": []}  # fmt: skip
    d["comparisons"], d["summaries"] = [], []
    d["thresholds"] = {"rtol": 0.1, "z": 2.0, "tail": 0.2}
    del d["relaxation_steps"]
    (tmp_path / "svag.json").write_text(json.dumps(d))
    back = load_svag(tmp_path / "svag.json")
    assert back.verdict.code == "sde_fails" and back.verdict.config.c2 == 2.0
    assert back.relaxation_steps == pytest.approx(res.relaxation_steps)
    assert any("upgraded from schema 1" in n for n in back.notes)


def test_load_rejects_other_artifacts(tmp_path):
    p = tmp_path / "svag.json"
    p.write_text(json.dumps({"schema": 2, "kind": "bscrit.measurement"}))
    with pytest.raises(ArtifactError, match="kind"):
        load_svag(p)
    p.write_text(json.dumps({"schema": 2, "kind": "bscrit.svag"}))
    with pytest.raises(ArtifactError, match="malformed"):
        load_svag(p)
    p.write_text(json.dumps({"schema": 3, "kind": "bscrit.svag"}))
    with pytest.raises(ArtifactError, match="upgrade bscrit"):
        load_svag(p)


def test_svag_results_and_verdict_do_not_import_torch():
    code = (
        "import sys, bscrit.runs.svag.results, bscrit.runs.svag.verdict, bscrit.runs.svag.tail, "
        "bscrit.runs.svag.ratios, bscrit.runs.common.result, bscrit.runs.common.artifact; "
        "assert 'torch' not in sys.modules"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_momentum_sgd_verdict_is_labelled_heuristic():
    """[LMA21]'s SDE and SVAG are for plain SGD: momentum SGD's verdict says it is heuristic."""
    from bscrit.optim.registry import OptimizerInfo
    from bscrit.runs.svag.results import svag_verdict

    runs = [flat(1, 1.0), flat(2, 1.04), flat(4, 1.05)]
    plain, _ = svag_verdict(runs, OptimizerInfo("sgd", lr=0.1), 64)
    heavy, _ = svag_verdict(runs, OptimizerInfo("sgd", lr=0.1, momentum=0.9), 64)
    assert plain.code == heavy.code == "sde_holds"
    assert "heuristic" not in plain.text
    assert "heuristic reading for momentum SGD (μ = 0.9)" in heavy.text
