"""Equilibrium intervals (pure): Fieller against its textbook form, coverage against simulations
with a known truth, the draws (batch means over the relaxation time), the spread ratio."""

from __future__ import annotations

import math
import random

import pytest

from bscrit.optim.registry import OptimizerInfo
from bscrit.stats.equilibrium import (
    SPREAD_WARN,
    EquilibriumInterval,
    draw_blocks,
    equilibrium_interval,
    ratio_interval,
    relaxation_steps,
    set_interval,
    spread_ratio,
)
from bscrit.stats.estimators import GroupSums, NoiseStats, noise_stats, pool, t_quantile


def _exact(g: float, n: float, m: int = 4) -> NoiseStats:
    """A checkpoint known exactly (its jackknife values all equal: no batch noise)."""
    from bscrit.stats.estimators import noise_stats_from_jackknife

    return noise_stats_from_jackknife(g, n, [g] * m, [n] * m, 8 * m)


def test_the_interval_is_the_delete_one_checkpoint_jackknife_of_the_ratio_of_sums() -> None:
    rng = random.Random(3)
    gs = [rng.lognormvariate(0, 0.6) for _ in range(8)]
    ns = [4.0 * g**0.3 + rng.gauss(0, 0.3) for g in gs]
    si = set_interval([_exact(g, n) for g, n in zip(gs, ns)], [[i] for i in range(8)])
    ratio = sum(ns) / sum(gs)
    assert si.nsr == pytest.approx(ratio, rel=1e-12)
    # brute force: delete each checkpoint, recompute ΣN/ΣG, jackknife s.e., t with 7 df
    loo = [(sum(ns) - ns[j]) / (sum(gs) - gs[j]) for j in range(8)]
    mean = sum(loo) / 8
    se = math.sqrt(7 / 8 * sum((x - mean) ** 2 for x in loo))
    t = t_quantile(0.975, 7)
    assert si.nsr_ci95 == pytest.approx((ratio - t * se, ratio + t * se), rel=1e-12)
    # G: the delete-one jackknife of a mean is the t interval (sd/√b)
    mean = sum(gs) / 8
    sd = math.sqrt(sum((g - mean) ** 2 for g in gs) / 7)
    assert si.G.se == pytest.approx(sd / math.sqrt(8), rel=1e-9)


def test_the_interval_is_unbounded_above_when_the_signal_is_not_significant() -> None:
    gs, ns = [0.5, -0.4, 0.3, -0.2], [1.0, 1.1, 0.9, 1.0]
    nsr, (lo, hi) = ratio_interval(
        sum(gs) / 4,
        sum(ns) / 4,
        [(sum(gs) - g) / 3 for g in gs],
        [(sum(ns) - n) / 3 for n in ns],
    )
    assert hi == math.inf and 0 < lo < nsr


def _coverage(draw, truth: float, k: int, reps: int, seed: int) -> float:
    rng = random.Random(seed)
    hits = 0
    for _ in range(reps):
        pairs = [draw(rng) for _ in range(k)]
        si = set_interval([_exact(g, n) for g, n in pairs], [[i] for i in range(k)])
        hits += si.nsr_ci95[0] <= truth <= si.nsr_ci95[1]
    return hits / reps


@pytest.mark.parametrize("k", [3, 10])
def test_coverage_is_nominal_for_normal_draws(k: int) -> None:
    """Bivariate normal draws: coverage 95% within 4 binomial s.e. (3 draws: t with 2 df)."""

    def draw(rng: random.Random) -> tuple[float, float]:
        g = rng.gauss(1.0, 0.3)
        return g, 3.0 + 0.8 * (g - 1.0) + rng.gauss(0, 0.5)

    reps = 2000
    cov = _coverage(draw, 3.0, k, reps, seed=k)
    se = math.sqrt(0.95 * 0.05 / reps)
    assert abs(cov - 0.95) < 4 * se, cov


def test_coverage_of_a_skewed_ratio_of_means_with_ten_draws() -> None:
    """G lognormal (spiky, as between checkpoints), N nearly constant: the truth is the ratio of
    means E N / E G, not the mean of ratios. Ten draws cover it at the nominal rate."""
    s = 0.6
    truth = 3.0 / math.exp(s * s / 2)  # E N = 3, E G = e^{s²/2}

    def draw(rng: random.Random) -> tuple[float, float]:
        return rng.lognormvariate(0, s), 3.0 + rng.gauss(0, 0.2)

    reps = 2000
    cov = _coverage(draw, truth, 10, reps, seed=7)
    assert abs(cov - 0.95) < 4 * math.sqrt(0.95 * 0.05 / reps), cov


def _ar1(rng: random.Random, k: int, phi: float) -> list[float]:
    x = [rng.gauss(0, 1)]
    for _ in range(k - 1):
        x.append(phi * x[-1] + math.sqrt(1 - phi * phi) * rng.gauss(0, 1))
    return x


def test_batch_means_over_the_relaxation_time_restore_coverage_of_correlated_draws() -> None:
    """60 checkpoints one step apart with an AR(1) G (correlation time 1 step): taken as
    independent they undercover (~83%); blocks of τ = 10 steps (6 draws, each ten correlation
    times long) cover at the nominal rate, less the small correlation left between blocks."""
    phi, k, reps = math.exp(-1.0), 60, 1000
    rng = random.Random(11)
    hits = {"independent": 0, "blocks": 0}
    for _ in range(reps):
        gs = [1.0 + 0.3 * z for z in _ar1(rng, k, phi)]
        pts = [_exact(g, 2.0) for g in gs]
        for name, tau in (("independent", None), ("blocks", 10.0)):
            blocks, _ = draw_blocks(list(range(k)), tau)
            si = set_interval(pts, blocks)
            hits[name] += si.nsr_ci95[0] <= 2.0 <= si.nsr_ci95[1]
    se = math.sqrt(0.95 * 0.05 / reps)
    assert hits["independent"] / reps < 0.95 - 4 * se - 0.05, hits
    assert hits["blocks"] / reps > 0.95 - 4 * se - 0.01, hits


def test_draw_blocks() -> None:
    assert draw_blocks([5], 10.0)[0] == [[0]]
    blocks, note = draw_blocks([None, 10, 20], 10.0)
    assert blocks == [[0], [1], [2]] and "not all known" in note
    blocks, note = draw_blocks([0, 100, 200], None)
    assert blocks == [[0], [1], [2]] and "relaxation time is unknown" in note
    blocks, note = draw_blocks([200, 0, 100], 50.0)  # spaced ≥ τ: independent, in step order
    assert blocks == [[1], [2], [0]] and "independent" in note
    blocks, _ = draw_blocks(list(range(0, 200, 10)), 50.0)  # 20 over 200 steps: 4 blocks of 5
    assert [len(b) for b in blocks] == [5, 5, 5, 5]
    assert blocks[0] == [0, 1, 2, 3, 4]
    blocks, note = draw_blocks([0, 10, 20], 50.0)
    assert blocks == [[0, 1, 2]] and "one draw" in note


def test_relaxation_steps() -> None:
    tau, why = relaxation_steps(OptimizerInfo("sgd", lr=1.6, weight_decay=2e-3))
    assert tau == pytest.approx(156.25) and "eq. 10" in why
    tau, why = relaxation_steps(OptimizerInfo("sgd", lr=0.1, momentum=0.9, weight_decay=5e-4))
    assert tau == pytest.approx(1 / (2 * 1.0 * 5e-4)) and "momentum" in why
    assert relaxation_steps(OptimizerInfo("sgd", lr=0.1))[0] is None
    assert relaxation_steps(None)[0] is None
    assert relaxation_steps(OptimizerInfo("adamw", lr=1e-3, weight_decay=0.1))[0] == 5000
    assert relaxation_steps(OptimizerInfo("adam", lr=1e-3, weight_decay=0.1))[0] is None


def _measured(rng: random.Random, mean: list[float], k: int = 40, m: int = 4) -> NoiseStats:
    d = len(mean)
    gs = [[mu + rng.gauss(0, 1.0) for mu in mean] for _ in range(k)]
    per = k // m
    sums = [[sum(g[i] for g in gs[j * per : (j + 1) * per]) for i in range(d)] for j in range(m)]
    gram = tuple(tuple(sum(a * b for a, b in zip(sa, sb)) for sb in sums) for sa in sums)
    q = tuple(sum(sum(x * x for x in g) for g in gs[j * per : (j + 1) * per]) for j in range(m))
    return noise_stats(GroupSums(gram, q, (per,) * m))


def test_spread_ratio_is_about_one_for_batch_noise_and_large_for_moving_checkpoints() -> None:
    rng = random.Random(5)
    same = [_measured(rng, [0.3] * 20) for _ in range(30)]
    moving = [_measured(rng, [rng.uniform(0.1, 1.0)] * 20) for _ in range(30)]
    assert 0.6 < spread_ratio(same) < 1.6  # type: ignore[operator]
    assert spread_ratio(moving) > SPREAD_WARN  # type: ignore[operator]
    assert spread_ratio(same[:1]) is None


def test_equilibrium_interval_scopes_and_round_trip() -> None:
    rng = random.Random(9)
    per = [_measured(rng, [rng.uniform(0.2, 0.5)] * 20) for _ in range(6)]
    pooled = pool(per)
    one = equilibrium_interval({"all": (per[0], per[:1])}, [100], 50.0)
    assert one.scope == "checkpoint" and one.sets["all"].nsr_ci95 == per[0].nsr_ci95
    near = equilibrium_interval({"all": (pooled, per)}, [0, 1, 2, 3, 4, 5], 50.0)
    assert near.scope == "checkpoints" and near.draws == 1
    assert near.sets["all"].nsr_ci95 == pooled.nsr_ci95
    far = equilibrium_interval({"all": (pooled, per)}, [0, 60, 120, 180, 240, 300], 50.0)
    assert far.scope == "equilibrium" and far.draws == 6
    assert far.sets["all"].nsr == pytest.approx(pooled.nsr, rel=1e-12)
    lo, hi = far.sets["all"].nsr_ci95
    assert hi - lo > pooled.nsr_ci95[1] - pooled.nsr_ci95[0]  # the checkpoints move
    again = EquilibriumInterval.from_dict(far.to_dict())
    assert again.to_dict() == far.to_dict()


# ----------------------------------------------------------------------------------------------
# predict / check / confirmation use the equilibrium interval (docs/theory.md §8)
# ----------------------------------------------------------------------------------------------


def _fixture() -> object:
    from pathlib import Path

    from bscrit.artifacts.measurement import load_measurement

    return load_measurement(Path(__file__).parents[1] / "assets" / "measurements" / "sgd_b128.json")


def test_one_checkpoint_says_the_interval_covers_that_point_only() -> None:
    from bscrit.theory.prediction import predict

    m = _fixture()
    p = predict([("m.json", m)])  # type: ignore[list-item]
    b = p.base
    assert b.interval_scope == "checkpoint"
    assert "this checkpoint only" in b.interval_note and "--sample-steps" in b.interval_note
    assert p.to_dict()["measurements"][0]["interval"]["scope"] == "checkpoint"


def _with_equilibrium(m, steps: list[int], gs: list[float], ns: list[float]):  # type: ignore[no-untyped-def]
    """The fixture's measurement as if its scale-invariant set had been measured at K points
    (each exactly: no batch noise) with the equilibrium interval bscrit computes for them."""
    import dataclasses

    from bscrit.artifacts.records import ParamSetStats
    from bscrit.stats.summary import CheckpointSummary, equilibrium_intervals, pool_param_sets

    si = m.scale_invariant

    def exact(g: float, n: float) -> ParamSetStats:
        s = _exact(g, n, m=len(si.jackknife_G))
        return ParamSetStats.from_noise_stats(s, R=si.R, num_params=si.num_params, num_tensors=4)

    per = [exact(g, n) for g, n in zip(gs, ns)]
    cps = [dataclasses.replace(m.checkpoints[0], scale_invariant=p, all=p, step=st)
           for p, st in zip(per, steps)]  # fmt: skip
    summaries = [CheckpointSummary(c, [], (), 1.0, "") for c in cps]
    pooled = pool_param_sets(per)
    eqi = equilibrium_intervals(summaries, pooled, pooled, None, steps, m.optimizer)
    return dataclasses.replace(
        m, checkpoints=tuple(cps), all=pooled, scale_invariant=pooled, equilibrium_interval=eqi
    )


def test_predict_check_and_confirmation_take_the_equilibrium_interval() -> None:
    from bscrit.theory.formulas import critical_batch_size
    from bscrit.theory.prediction import check, predict
    from bscrit.theory.targets import confirmation_target

    m = _fixture()
    tau, _ = relaxation_steps(m.optimizer)  # type: ignore[attr-defined]
    assert tau is not None
    rng = random.Random(4)
    gs = [rng.lognormvariate(math.log(0.1), 0.4) for _ in range(10)]
    ns = [0.8 * (1 + 0.05 * rng.gauss(0, 1)) for _ in range(10)]
    steps = [round(i * 2 * tau) for i in range(10)]  # 2τ apart: 10 independent draws
    me = _with_equilibrium(m, steps, gs, ns)
    e = me.equilibrium_interval.sets["scale_invariant"]
    assert me.equilibrium_interval.scope == "equilibrium" and me.equilibrium_interval.draws == 10
    p = predict([("m.json", me)])
    b = p.base
    assert b.interval_scope == "equilibrium" and "10 independent draws" in b.interval_note
    assert b.nsr == pytest.approx(sum(ns) / sum(gs), rel=1e-12)
    assert b.nsr_ci95 == e.nsr_ci95
    lo = critical_batch_size(me.batch_size, e.nsr_ci95[0])
    assert b.b_star_ci95[0] == pytest.approx(lo, rel=1e-12)
    # the top of the recommended range is the lower 95% bound of B* over the equilibrium
    assert p.recommended.limited_by == "b_star"
    assert p.recommended.max == pytest.approx(lo, rel=1e-12)
    assert confirmation_target(p)[0] == min(math.floor(lo), me.dataset_size // 2)
    assert check(p, math.floor(lo)).verdict == "ok"
    assert check(p, math.ceil(lo) + 1).verdict in ("warn", "fail")
    # the batch-noise interval of the pooled points alone would have been much narrower
    pooled_lo = critical_batch_size(me.batch_size, me.scale_invariant.nsr_ci95[0])
    assert pooled_lo > lo


def test_close_checkpoints_are_one_draw_and_keep_the_batch_noise_interval() -> None:
    from bscrit.theory.prediction import predict

    m = _fixture()
    me = _with_equilibrium(m, list(range(0, 50, 5)), [0.1 + 0.01 * i for i in range(10)],
                           [0.8] * 10)  # fmt: skip
    assert me.equilibrium_interval.scope == "checkpoints"
    b = predict([("m.json", me)]).base
    assert b.interval_scope == "checkpoints" and "these 10 checkpoints only" in b.interval_note
    assert b.nsr_ci95 == me.scale_invariant.noise_stats().nsr_ci95


@pytest.mark.parametrize("width", [80, 120])
def test_measure_output_shows_the_equilibrium_table_whole(width: int) -> None:
    import io

    from rich.console import Console

    from bscrit import report
    from bscrit.report.format import fmt, fmt_ci

    m = _fixture()
    tau, _ = relaxation_steps(m.optimizer)  # type: ignore[attr-defined]
    rng = random.Random(2)
    gs = [rng.lognormvariate(math.log(0.1), 0.4) for _ in range(6)]
    me = _with_equilibrium(m, [round(i * 2 * tau) for i in range(6)], gs, [0.8] * 6)  # type: ignore[operator]
    console = Console(file=io.StringIO(), width=width, highlight=False)
    report.show(report.format_measurement(me), console=console)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "…" not in text and all(len(line) <= width for line in text.splitlines())
    e = me.equilibrium_interval.sets["scale_invariant"]
    assert "Over the equilibrium: 6 draws from 6 checkpoints" in " ".join(text.split())
    for figure in (fmt(e.nsr), fmt_ci(e.nsr_ci95), fmt_ci(e.G.ci95)):
        assert figure in text, (figure, text)
    for step in (0, round(2 * tau)):
        assert str(step) in text
