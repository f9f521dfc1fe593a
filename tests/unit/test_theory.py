"""Bounds of [LMA21] §5 and the readings of docs/theory.md §7, against hand-computed values
(no torch).

The fixtures in tests/assets/measurements are built so that the jackknife is done by hand (see
make_fixtures.py): m = 10 groups, N_(j) = N, G_(j) = G ± δ alternately, so the 95% interval of
G/N is G/N ± T9·3δ/N with T9 = t_{0.975, 9} = 2.26215716 (tables), and the NSR interval is its
inverse.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path

import pytest

from bscrit.artifacts.measurement import Measurement, load_measurement
from bscrit.errors import ArtifactError, BscritError, UsageError
from bscrit.theory.bounds import EQUILIBRIUM_RESIDUAL_MAX, choose_param_set, measurement_bounds
from bscrit.theory.formulas import (
    check_c2,
    critical_batch_size,
    critical_batch_size_approx,
    implicit_regularisation,
    kappa_max,
    largest_multiple,
    largest_power_of_two,
    nsr_at_batch,
    sde_certified_invalid,
    sde_nsr_threshold,
    simple_noise_scale,
    thm55_base_batch_below,
    thm55_kappa_min,
    thm55_lsi_fails,
)
from bscrit.theory.prediction import check, predict
from bscrit.theory.recommendation import b_star_range, recommend

ASSETS = Path(__file__).parents[1] / "assets" / "measurements"
T9 = 2.26215716  # t_{0.975, 9}, from tables (scipy.stats.t.ppf(0.975, 9) = 2.2621571628)


def load(name: str) -> Measurement:
    return load_measurement(ASSETS / name)


def with_stats(m: Measurement, d_changes: dict) -> Measurement:
    """A copy of ``m`` with keys of its JSON dict replaced (nested keys as tuples)."""
    d = copy.deepcopy(m.to_dict())
    for path, value in d_changes.items():
        target = d
        for k in path[:-1]:
            target = target[k]
        target[path[-1]] = value
    return Measurement.from_dict(d)


# ----------------------------------------------------------------------------------------------
# The formulas
# ----------------------------------------------------------------------------------------------


def test_check_c2_rejects_c_not_above_one():
    assert check_c2(2) == 2.0
    for bad in (1.0, 0.5, -3.0, math.nan, math.inf):
        with pytest.raises(UsageError, match="c2 must be a number > 1") as e:
            check_c2(bad)
        assert e.value.for_cli().startswith("--c2 must")


def test_thm52_threshold_is_one_over_c2_minus_one():
    assert sde_nsr_threshold(2.0) == 1.0
    assert sde_nsr_threshold(1.5) == 2.0
    assert sde_nsr_threshold(5.0) == 0.25
    assert sde_certified_invalid(0.99, 2.0)
    assert not sde_certified_invalid(1.0, 2.0)  # strict inequality in Thm 5.2 (ii)
    assert sde_certified_invalid(1.9, 1.5)
    assert not sde_certified_invalid(math.inf, 2.0)


def test_thm56_exact_and_approx():
    # B = 128, NSR = 8, C² = 2: κ_max = 2·9 = 18, B* = 18·128 = 2304; approx 2·128·8 = 2048.
    assert kappa_max(8.0, 2.0) == 18.0
    assert critical_batch_size(128, 8.0, 2.0) == 2304.0
    assert critical_batch_size_approx(128, 8.0, 2.0) == 2048.0
    # C² = 4: 4·(128 + 128·8) = 4608.
    assert critical_batch_size(128, 8.0, 4.0) == 4608.0
    # NSR tiny: B* → C²·B (never below it), the approximation → 0.
    assert critical_batch_size(100, 1e-12, 2.0) == pytest.approx(200.0)
    assert critical_batch_size_approx(100, 1e-12, 2.0) == pytest.approx(0.0, abs=1e-9)
    assert critical_batch_size(128, math.inf) == math.inf


def test_thm55_solved_for_kappa():
    # NSR^{B_L} = 0.25, C² = 2: κ > 2/(1 − 0.25) = 8/3; base batches below 4096·0.75/2 = 1536.
    assert thm55_kappa_min(0.25, 2.0) == pytest.approx(8 / 3)
    assert thm55_base_batch_below(4096, 0.25, 2.0) == pytest.approx(1536.0)
    # C² = 3: κ > 3/(1 − 2·0.25) = 6; below 4096/6.
    assert thm55_kappa_min(0.25, 3.0) == pytest.approx(6.0)
    assert thm55_base_batch_below(4096, 0.25, 3.0) == pytest.approx(4096 / 6)
    # agrees with eq. (14) as stated, on both sides of the threshold
    assert thm55_lsi_fails(0.25, 2.7, 2.0)
    assert not thm55_lsi_fails(0.25, 2.6, 2.0)


@pytest.mark.parametrize("nsr", [1.0, 1.5, 7.0, math.inf])
def test_thm55_certifies_nothing_when_c2_minus_1_times_nsr_ge_1(nsr):
    assert thm55_kappa_min(nsr, 2.0) is None
    assert thm55_base_batch_below(1024, nsr, 2.0) is None


@pytest.mark.parametrize("nsr", [0.0, 0.1, 0.5, 0.9])
def test_thm55_never_certifies_kappa_at_or_below_c2(nsr):
    # (C, κ)-LSI is only defined for κ > C²; eq. (14) can never hold for κ ≤ C².
    k = thm55_kappa_min(nsr, 2.0)
    assert k is not None and k >= 2.0
    assert not thm55_lsi_fails(nsr, 2.0, 2.0)
    assert not thm55_lsi_fails(nsr, 1.5, 2.0)


def test_simple_noise_scale_uses_per_example_trace():
    # T₁ = N^B · B (n − 1)/(n − B) = 0.8·128·49999/49872; B_simple = T₁/G with G = 0.1.
    assert simple_noise_scale(0.8, 0.1, 50000, 128) == pytest.approx(
        0.8 * 128 * 49999 / 49872 / 0.1, rel=1e-12
    )
    assert simple_noise_scale(0.8, -0.01, 50000, 128) == math.inf  # no signal
    assert simple_noise_scale(0.8, 0.1, 128, 128) is None  # B = n: N^B carries no T₁


def test_nsr_at_other_batch_size():
    # NSR^{B'} = NSR^B · [(n − B')/B'] / [(n − B)/B]
    expected = 8.0 * ((50000 - 512) / 512) / ((50000 - 128) / 128)
    assert nsr_at_batch(8.0, 128, 512, 50000) == pytest.approx(expected, rel=1e-12)
    assert nsr_at_batch(8.0, 128, 50000, 50000) == 0.0
    assert nsr_at_batch(8.0, 128, 128, 50000) == pytest.approx(8.0)


def test_implicit_regularisation_terms():
    # [SDBD21] eq. 22: (η/4) G and (η/4) N^B; η = 0.1, G = 0.1, N = 0.8.
    sig, noi = implicit_regularisation(0.1, 0.1, 0.8)
    assert sig == pytest.approx(0.0025)
    assert noi == pytest.approx(0.02)
    assert noi / sig == pytest.approx(8.0)  # the ratio is the NSR


def test_largest_power_of_two_and_multiple_of_8():
    assert largest_power_of_two(128, 1866.75) == 1024
    assert largest_power_of_two(128, 128) == 128
    assert largest_power_of_two(128, 2048) == 2048
    assert largest_power_of_two(100, 120) is None
    assert largest_power_of_two(1, math.inf) is None
    assert largest_multiple(128, 1866.75, 8) == 1864
    assert largest_multiple(129, 135, 8) is None
    assert largest_multiple(4, 8.0, 8) == 8


# ----------------------------------------------------------------------------------------------
# One measurement
# ----------------------------------------------------------------------------------------------


def test_bounds_of_sgd_fixture_by_hand():
    b = measurement_bounds(load("sgd_b128.json"), "sgd_b128.json", 2.0)
    assert b.param_set == "scale_invariant"
    half = T9 * 3 * 0.004 / 0.8  # 95% half-width of G/N
    nsr_lo, nsr_hi = 1 / (0.125 + half), 1 / (0.125 - half)
    assert b.nsr == pytest.approx(8.0)
    assert b.nsr_ci95 == pytest.approx((nsr_lo, nsr_hi), rel=1e-7)
    assert b.b_star == pytest.approx(2304.0)
    assert b.b_star_ci95 == pytest.approx((256 * (1 + nsr_lo), 256 * (1 + nsr_hi)), rel=1e-7)
    assert b.b_star_approx == pytest.approx(2048.0)
    assert b.b_star_approx_ci95 == pytest.approx((256 * nsr_lo, 256 * nsr_hi), rel=1e-7)
    # ≈ [1866.75, 3067.10]; with every N_(j) equal, inverting G/N's interval is the same as
    # dividing N by G's interval endpoints (the fixture was designed so):
    g_lo, g_hi = 0.1 - T9 * 3 * 0.004, 0.1 + T9 * 3 * 0.004
    assert b.b_star_ci95[0] == pytest.approx(1866.748, abs=0.01)
    assert b.b_star_ci95[1] == pytest.approx(256 * (1 + 0.8 / g_lo), rel=1e-7)
    assert b.b_star_ci95[0] == pytest.approx(256 * (1 + 0.8 / g_hi), rel=1e-7)
    assert not b.sde_certified_invalid
    assert b.thm55_base_batch_below is None
    assert b.b_simple == pytest.approx(0.8 * 128 * 49999 / 49872 / 0.1)
    assert b.implicit_regularisation is not None
    assert b.implicit_regularisation.noise_term == pytest.approx(0.1 / 4 * 0.8)
    # the fixture's run used SGD with momentum 0.9: the theorems are proved for plain SGD
    (w,) = b.warnings
    assert "momentum 0.9" in w and "heuristic reading" in w
    assert "momentum 0.9" in b.heuristic
    assert (b.sde_thm52, b.thm55) == ("no", "no")  # NSR [≈6.3, 11] ≥ 1 throughout


def test_interval_comes_from_the_jackknife_not_the_stored_ci():
    # Corrupt the stored NSR interval: predict must recompute it from the jackknife values (built
    # in memory: the reader refuses an NSR outside its own interval, tests/unit/test_fuzz_artifacts)
    m = load("sgd_b128.json")
    si = dataclasses.replace(m.scale_invariant, nsr_ci95=(1.0, 2.0))
    m = dataclasses.replace(m, scale_invariant=si)
    b = measurement_bounds(m)
    half = T9 * 3 * 0.004 / 0.8
    assert b.nsr_ci95[0] == pytest.approx(1 / (0.125 + half), rel=1e-7)


def test_small_nsr_fixture_thm52_and_thm55():
    b = measurement_bounds(load("sgd_small_nsr.json"))
    assert b.nsr == pytest.approx(0.25)
    lo, hi = b.nsr_ci95
    assert lo < 0.25 < hi < 1.0  # the whole interval below 1/(2 − 1)
    # one checkpoint's interval: the theorems speak of the equilibrium NSR, so provisional
    assert b.interval_scope == "checkpoint"
    assert (b.sde_thm52, b.thm55) == ("provisional", "provisional")
    assert not b.sde_certified_invalid  # certified only over the equilibrium
    # Thm 5.5 from the interval's upper end (its certified base batch decreases with NSR): at the
    # point 0.25 it would be κ > 8/3, base batch below 1536; the upper end gives less
    assert b.thm55_kappa_min == pytest.approx(2 / (1 - hi))
    assert b.thm55_base_batch_below == pytest.approx(4096 * (1 - hi) / 2)
    assert b.thm55_base_batch_below < 1536.0
    assert b.b_star == pytest.approx(2 * 4096 * 1.25)
    assert any("Thm 5.2" in w for w in b.warnings)


def test_g_interval_including_zero_has_no_upper_bound():
    b = measurement_bounds(load("adam_noisy.json"))
    assert b.param_set == "all"  # no scale-invariant parameters
    half = T9 * 3 * 0.001 / 1.0
    assert not b.noise.signal_detected
    assert b.b_star == pytest.approx(2 * 256 * 501)
    assert b.b_star_ci95[0] == pytest.approx(512 * (1 + 1 / (0.002 + half)), rel=1e-7)
    assert b.b_star_ci95[1] == math.inf
    assert not b.b_star_bounded
    assert any("no upper bound" in w and "B* > 58783" in w for w in b.warnings)
    assert any("all parameters" in w for w in b.warnings)
    assert any("proved for SGD" in w for w in b.warnings)
    assert b.implicit_regularisation is None  # [SDBD21] is for SGD


def _negative_g(m: Measurement, g: float, delta: float) -> Measurement:
    jk = [g + delta if j % 2 == 0 else g - delta for j in range(10)]
    return with_stats(
        m,
        {
            ("stats", "scale_invariant", "G"): g,
            ("stats", "scale_invariant", "G_ci95"): [g - 1, g + 1],
            ("stats", "scale_invariant", "nsr"): None,
            ("stats", "scale_invariant", "nsr_ci95"): [0.0, None],  # consistent: NSR unbounded
            ("stats", "scale_invariant", "jackknife", "G"): jk,
        },
    )


def test_g_hat_not_positive_is_a_result_not_a_crash():
    m = _negative_g(load("sgd_b128.json"), -0.01, 0.004)
    b = measurement_bounds(m)
    assert b.nsr == math.inf and b.b_star == math.inf
    half = T9 * 3 * 0.004 / 0.8
    # G/N interval [−0.0125 − half, −0.0125 + half] still reaches above 0: a finite lower bound.
    assert b.b_star_ci95[0] == pytest.approx(256 * (1 + 1 / (-0.0125 + half)), rel=1e-7)
    assert b.b_star_ci95[1] == math.inf
    assert any("no signal detected" in w for w in b.warnings)
    assert not b.sde_certified_invalid and b.thm55_base_batch_below is None
    p = predict([("neg", m)])
    assert p.recommended.max == pytest.approx(b.b_star_ci95[0])


def test_g_interval_entirely_negative_gives_no_upper_limit():
    m = _negative_g(load("sgd_b128.json"), -0.5, 0.001)
    p = predict([("neg", m)])
    assert p.measurements[0].b_star_ci95 == (math.inf, math.inf)
    assert p.recommended.max == math.inf and p.recommended.target is None
    assert p.scaled is None
    assert any("no upper end" in w for w in p.warnings)
    # no limit from B*: every B' up to the dataset size passes; past it a batch cannot be drawn
    assert check(p, m.dataset_size).exit_code == 6  # provisional: one checkpoint
    assert check(p, m.dataset_size, allow_provisional=True).exit_code == 0
    past = check(p, 10**6)
    assert (past.exit_code, past.limited_by) == (1, "dataset_size")


def test_n_not_positive_is_a_clear_error():
    zero = {("stats", "scale_invariant", "N"): 0.0, ("stats", "scale_invariant", "N_ci95"): [0, 0]}
    m = with_stats(load("sgd_b128.json"), zero)
    with pytest.raises(ArtifactError, match="no gradient noise"):
        measurement_bounds(m, "m.json")


def test_param_set_choice_threshold():
    m = load("sgd_b128.json")
    assert choose_param_set(m).name == "scale_invariant"
    half = with_stats(m, {("scale_invariant_fraction",): 0.5})
    assert choose_param_set(half).name == "scale_invariant"  # ≥ 50% inclusive
    low = with_stats(m, {("scale_invariant_fraction",): 0.3})
    c = choose_param_set(low)
    assert c.name == "all" and "30.0%" in c.reason
    b = measurement_bounds(low)
    # all parameters of the fixture: G = 0.11, N = 0.9
    assert b.nsr == pytest.approx(0.9 / 0.11)
    assert any("30.0%" in w for w in b.warnings)


@pytest.mark.parametrize(
    ("rho", "warned"), [(0.05, False), (0.5, False), (0.51, True), (-0.8, True)]
)
def test_equilibrium_residual_warning(rho, warned):
    assert EQUILIBRIUM_RESIDUAL_MAX == 0.5
    m = with_stats(load("sgd_b128.json"), {("equilibrium", "residual"): rho})
    b = measurement_bounds(m)
    assert any("equilibrium residual" in w for w in b.warnings) is warned


# ----------------------------------------------------------------------------------------------
# Across measurements
# ----------------------------------------------------------------------------------------------


def test_range_and_recommendation_across_baselines():
    bounds = [
        measurement_bounds(load("sgd_b128.json")),
        measurement_bounds(load("sgd_b512.json")),
    ]
    # B* = 2·128·9 = 2304 and 2·512·3 = 3072
    assert b_star_range(bounds) == pytest.approx((2304.0, 3072.0))
    r = recommend(bounds)
    half = T9 * 3 * 0.004 / 0.8
    lo128 = 256 * (1 + 1 / (0.125 + half))  # ≈ 1866.75
    half512 = T9 * 3 * 0.004 / 0.2
    lo512 = 1024 * (1 + 1 / (0.5 + half512))  # ≈ 2634.75
    assert lo128 < lo512
    assert r.min == 128 and r.max == pytest.approx(lo128, rel=1e-7)
    assert (r.max_pow2, r.max_mult8, r.empty, r.target) == (1024, 1864, False, 1866)


def test_recommendation_is_capped_at_the_dataset_size():
    import dataclasses

    m = load("sgd_b128.json")
    small = dataclasses.replace(m, dataset_size=1000)  # lower bound of B* ≈ 1867 > n
    r = recommend([measurement_bounds(small)])
    assert r.max == 1000 and r.target == 1000
    assert (r.max_pow2, r.max_mult8) == (512, 1000)
    assert "capped at the dataset size n = 1000" in r.note


def test_recommendation_empty_when_base_is_past_the_critical_batch():
    p = predict([("small", load("sgd_small_nsr.json")), ("b128", load("sgd_b128.json"))])
    r = p.recommended
    assert r.empty and r.min == 4096 and r.max == pytest.approx(1866.75, abs=0.01)
    assert "already past the critical batch" in r.note
    assert r.max_pow2 is None and p.scaled is None


def test_predict_scales_the_base_optimizer_to_the_top_of_the_range():
    p = predict([("b128", load("sgd_b128.json")), ("b512", load("sgd_b512.json"))])
    s = p.scaled
    assert s is not None and s.rule == "linear"
    assert s.target_batch_size == 1866
    assert s.new["lr"] == pytest.approx(0.1 * 1866 / 128)
    assert s.new["momentum"] == 0.9


def test_predict_adam_range_stops_where_the_square_root_rule_ends():
    """B*'s lower bound allows κ ≈ 229, the rule only κ < 1/(1 − 0.9) = 10: one answer, so the
    range ends at B' = 2559 and scale gives hyperparameters there (with a caution)."""
    p = predict([("adam", load("adam_noisy.json"))])
    assert p.recommended.limited_by == "scaling_rule" and p.recommended.max == 2559
    assert p.scaled is not None and p.scaled.target_batch_size == 2559
    assert any("below 0.5" in w for w in p.scaled.warnings)
    assert check(p, 2559, allow_provisional=True).exit_code == 0
    r = check(p, 2560)
    assert (r.verdict, r.limited_by) == ("fail", "scaling_rule") and "κ < 10" in r.reason


def test_predict_without_optimizer():
    m = with_stats(load("sgd_b128.json"), {("optimizer",): None})
    p = predict([("noopt", m)])
    assert p.scaled is None
    assert any("no optimizer" in w for w in p.warnings)
    assert p.to_dict()["scaled"] is None


def test_prediction_json_contract():
    d = predict([("b128", load("sgd_b128.json")), ("adam", load("adam_noisy.json"))]).to_dict()
    assert set(d) >= {"c2", "measurements", "range", "recommended", "scaled"}
    keys = {
        "source",
        "batch_size",
        "param_set",
        "nsr",
        "nsr_ci95",
        "b_star",
        "b_star_ci95",
        "b_star_approx",
        "sde_certified_invalid",
        "thm55_base_batch_below",
        "b_simple",
        "warnings",
    }
    for e in d["measurements"]:
        assert keys <= set(e)
    assert d["measurements"][1]["b_star_ci95"][1] is None  # inf → null
    assert d["range"] == [2304.0, 2 * 256 * 501]
    assert set(d["recommended"]) >= {"min", "max", "max_pow2", "max_mult8"}


@pytest.mark.parametrize(
    ("target", "strict", "verdict", "code"),
    [
        (64, False, "ok", 0),  # scaling down
        (128, True, "ok", 0),
        (1866, True, "ok", 6),  # at the lower bound, from one checkpoint: provisional
        (1867, False, "warn", 5),  # between lower bound 1866.75 and point 2304: undecided
        (1867, True, "fail", 1),
        (2304, False, "warn", 5),
        (2305, False, "fail", 1),
    ],
)
def test_check_verdicts(target, strict, verdict, code):
    p = predict([("b128", load("sgd_b128.json"))])
    r = check(p, target, strict)
    assert (r.verdict, int(r.exit_code)) == (verdict, code)


def test_check_rejects_non_positive_target():
    p = predict([("b128", load("sgd_b128.json"))])
    with pytest.raises(BscritError):
        check(p, 0)
