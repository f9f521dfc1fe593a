"""``predict`` and ``check`` (bscrit.theory.prediction) on the measurement fixtures, numbers derived
by hand.

Every expected value is recomputed here from the loaded Measurement: the parameter set chosen by
:func:`bscrit.theory.bounds.choose_param_set`, its G and N, and its stored leave-one-group-out
values (the NSR interval is the inverse of the jackknife interval of G/N, Student t with m − 1 df).
B* = C²(B + B·NSR) [LMA21 Thm 5.6]. No torch.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from bscrit.artifacts.measurement import Measurement, load_measurement
from bscrit.artifacts.records import ParamSetStats
from bscrit.errors import BscritError, ExitCode, UsageError
from bscrit.stats.estimators import t_quantile
from bscrit.theory.bounds import choose_param_set
from bscrit.theory.formulas import DEFAULT_C2
from bscrit.theory.prediction import (
    CheckResult,
    Prediction,
    check,
    predict,
    predict_files,
)
from bscrit.theory.scaling import rule_limit

ASSETS = Path(__file__).parents[1] / "assets" / "measurements"
FIXTURES = sorted(p.name for p in ASSETS.glob("*.json"))


def load(name: str) -> Measurement:
    return load_measurement(ASSETS / name)


def nsr_by_hand(s: ParamSetStats) -> tuple[float, float, float]:
    """(NSR, lower, upper) of a parameter set from its G, N and jackknife values."""
    m = len(s.jackknife_G)
    snr = s.G / s.N
    loo = [g / n for g, n in zip(s.jackknife_G, s.jackknife_N)]
    mean = sum(loo) / m
    se = math.sqrt((m - 1) / m * sum((x - mean) ** 2 for x in loo))
    t = t_quantile(0.975, m - 1)
    lo_snr, hi_snr = snr - t * se, snr + t * se
    nsr = 1 / snr if snr > 0 else math.inf
    return nsr, (1 / hi_snr if hi_snr > 0 else math.inf), (1 / lo_snr if lo_snr > 0 else math.inf)


def b_star_by_hand(m: Measurement, c2: float = DEFAULT_C2) -> tuple[float, float, float]:
    """(B*, lower 95% bound, upper 95% bound) = C²(B + B·NSR) at NSR and its interval ends."""
    nsr, lo, hi = nsr_by_hand(choose_param_set(m).stats)
    b = m.batch_size
    return c2 * (b + b * nsr), c2 * (b + b * lo), c2 * (b + b * hi)


def is_pow2(x: int) -> bool:
    return x > 0 and x & (x - 1) == 0


def assert_recommendation_shape(p: Prediction) -> None:
    r = p.recommended
    assert r.min == p.base.batch_size
    if r.max_pow2 is not None:
        assert is_pow2(r.max_pow2)
        assert r.min <= r.max_pow2 <= r.max < 2 * r.max_pow2  # the largest one
    if r.max_mult8 is not None:
        assert r.max_mult8 % 8 == 0
        assert r.min <= r.max_mult8 <= r.max < r.max_mult8 + 8


# ----------------------------------------------------------------------------------------------
# predict
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FIXTURES)
@pytest.mark.parametrize("c2", [DEFAULT_C2, 3.0])
def test_b_star_of_each_fixture_by_hand(name: str, c2: float) -> None:
    m = load(name)
    p = predict([(name, m)], c2)
    choice = choose_param_set(m)
    b = p.base
    assert b.param_set == choice.name
    assert b.batch_size == m.batch_size
    nsr = choice.stats.N / choice.stats.G
    assert b.nsr == pytest.approx(nsr, rel=1e-12)
    assert b.b_star == pytest.approx(c2 * (m.batch_size + m.batch_size * nsr), rel=1e-12)
    star, lo, hi = b_star_by_hand(m, c2)
    assert b.b_star_ci95[0] == pytest.approx(lo, rel=1e-9)
    if math.isinf(hi):
        assert b.b_star_ci95[1] == math.inf
    else:
        assert b.b_star_ci95[1] == pytest.approx(hi, rel=1e-9)
    assert b.b_star_ci95[0] < b.b_star < b.b_star_ci95[1]
    assert p.range == (b.b_star, b.b_star)
    assert p.b_star_min == b.b_star
    assert p.c2 == c2

    # One measurement: the range runs from its B to its lower bound, capped at n and at the
    # largest B' the optimizer's scaling rule reaches (bscrit.theory.scaling.rule_limit).
    r = p.recommended
    reach = rule_limit(m.optimizer, m.batch_size).batch_max if m.optimizer else None
    expected_max = min(lo, float(m.dataset_size), math.inf if reach is None else float(reach))
    assert r.min == m.batch_size
    assert r.max == pytest.approx(expected_max, rel=1e-9)
    assert r.empty is (expected_max < m.batch_size)
    if not r.empty:
        assert r.max_pow2 is not None and r.max_mult8 is not None
        assert r.target == math.floor(r.max)
    assert_recommendation_shape(p)


def test_param_set_follows_choose_param_set() -> None:
    # sgd_* use the scale-invariant subset (80% of the parameters), adam_noisy has none.
    assert predict([("a", load("sgd_b128.json"))]).base.param_set == "scale_invariant"
    assert predict([("a", load("adam_noisy.json"))]).base.param_set == "all"
    m = dataclasses.replace(load("sgd_b128.json"), scale_invariant_fraction=0.2)
    b = predict([("a", m)]).base
    assert b.param_set == "all"
    assert b.b_star == pytest.approx(DEFAULT_C2 * m.batch_size * (1 + m.all.N / m.all.G), rel=1e-12)


@pytest.mark.parametrize(
    "names",
    [
        ["sgd_b128.json", "sgd_b512.json"],
        ["sgd_b512.json", "sgd_b128.json"],
        ["sgd_b128.json", "sgd_b512.json", "adam_noisy.json", "sgd_small_nsr.json"],
        ["adam_noisy.json", "sgd_b128.json"],
    ],
    ids=lambda names: "+".join(n.removesuffix(".json") for n in names),
)
def test_recommended_max_is_min_of_lower_bounds(names: list[str]) -> None:
    ms = [(n, load(n)) for n in names]
    p = predict(ms)
    hand = [b_star_by_hand(m) for _, m in ms]
    assert [b.b_star for b in p.measurements] == pytest.approx([h[0] for h in hand], rel=1e-12)
    assert p.range[0] == pytest.approx(min(h[0] for h in hand), rel=1e-12)
    assert p.range[1] == pytest.approx(max(h[0] for h in hand), rel=1e-12)
    top = min(h[1] for h in hand)
    n = min(m.dataset_size for _, m in ms)
    base = ms[0][1].batch_size
    r = p.recommended
    assert r.min == base
    if top < base:
        assert r.empty and r.max == pytest.approx(top, rel=1e-9)
        assert r.max_pow2 is None and r.max_mult8 is None and r.target is None
        assert p.scaled is None
    else:
        assert not r.empty
        assert r.max == pytest.approx(min(top, n), rel=1e-9)
        assert_recommendation_shape(p)


def test_recommended_max_is_capped_at_the_dataset_size() -> None:
    m = load("sgd_b128.json")
    _, lo, _ = b_star_by_hand(m)
    n = 1000
    assert lo > n  # the cap binds
    p = predict([("small-n", dataclasses.replace(m, dataset_size=n))])
    r = p.recommended
    assert r.max == n
    assert r.max_pow2 == 512
    assert r.max_mult8 == 1000
    assert "dataset size" in r.note
    # The B* point estimate itself is not capped.
    assert p.base.b_star == pytest.approx(b_star_by_hand(m)[0], rel=1e-12)


def test_empty_range_when_base_is_past_the_critical_batch() -> None:
    small, b128 = load("sgd_small_nsr.json"), load("sgd_b128.json")
    top = b_star_by_hand(b128)[1]
    assert top < small.batch_size
    p = predict([("small", small), ("b128", b128)])
    assert p.recommended.empty
    assert p.recommended.max == pytest.approx(top, rel=1e-9)
    assert p.scaled is None
    assert any("empty" in w for w in p.warnings)


def test_scaled_hyperparameters_target_the_top_of_the_range() -> None:
    m = load("sgd_b128.json")
    p = predict([("b128", m)])
    assert p.scaled is not None
    assert p.recommended.target == math.floor(b_star_by_hand(m)[1])
    d = p.to_dict()
    assert d["scaled"] is not None
    assert json.dumps(d["scaled"], allow_nan=False)


def test_predict_files_reads_the_fixtures() -> None:
    paths = [ASSETS / "sgd_b128.json", ASSETS / "sgd_b512.json"]
    p = predict_files(paths)
    q = predict([(str(x), load_measurement(x)) for x in paths])
    assert p.to_dict() == q.to_dict()
    assert [b.source for b in p.measurements] == [str(x) for x in paths]


@pytest.mark.parametrize("c2", [1.0, 0.5, 0.0, -2.0, math.nan, math.inf])
def test_c2_not_above_one_is_refused(c2: float) -> None:
    with pytest.raises(BscritError):
        predict([("b128", load("sgd_b128.json"))], c2)


def test_no_measurement_is_refused() -> None:
    with pytest.raises(BscritError, match="at least one"):
        predict([])


# ----------------------------------------------------------------------------------------------
# check
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def b128_prediction() -> Prediction:
    return predict([("b128", load("sgd_b128.json"))])


def test_check_verdicts_around_the_bounds(b128_prediction: Prediction) -> None:
    p = b128_prediction
    star, lo, _ = b_star_by_hand(load("sgd_b128.json"))
    assert p.recommended.max == pytest.approx(lo, rel=1e-9)
    assert p.b_star_min == pytest.approx(star, rel=1e-12)
    base = p.base.batch_size
    inside = math.floor(lo)
    between = [math.floor(lo) + 1, (math.floor(lo) + math.floor(star)) // 2, math.floor(star)]
    above = [math.floor(star) + 1, 10 * math.ceil(star)]
    assert base < inside < between[0] <= between[1] <= between[2] < above[0]

    # one checkpoint: inside the range is provisional (exit 6), scaling down is not
    expected = [(t, "ok", 0) for t in (1, base // 2, base)]
    expected += [(t, "ok", 6) for t in (base + 1, inside)]
    expected += [(t, "warn", 5) for t in between]  # the default gate: the lower bound
    expected += [(t, "fail", 1) for t in above]
    for target, verdict, code in expected:
        r = check(p, target)
        assert (r.verdict, int(r.exit_code)) == (verdict, code), target
        assert r.target == target and r.strict is False and r.gate == "lower"
        assert r.provisional is (target > base)
        assert str(target) in r.reason
        assert ("provisional: the 95% interval covers" in r.reason) is (target > base)
    assert check(p, above[0]).exit_code is ExitCode.CHECK_FAILED
    assert check(p, between[0]).exit_code is ExitCode.UNDECIDED
    assert check(p, inside).exit_code is ExitCode.PROVISIONAL


def test_gate_point_and_allow_provisional_relax_the_gate(b128_prediction: Prediction) -> None:
    p = b128_prediction
    lo, star = p.recommended.max, p.b_star_min
    between, inside = math.floor(star), math.floor(lo)
    # --gate point: the warn zone passes (exit 0 once provisional answers are allowed)
    assert int(check(p, between, gate="point").exit_code) == 6
    r = check(p, between, gate="point", allow_provisional=True)
    assert (r.verdict, int(r.exit_code)) == ("warn", 0) and "gate: point estimate" in r.reason
    # --allow-provisional: in range passes, still said to be provisional
    r = check(p, inside, allow_provisional=True)
    assert (r.verdict, int(r.exit_code), r.provisional) == ("ok", 0, True)
    assert r.to_dict()["provisional"] is True and r.to_dict()["allow_provisional"] is True
    # it never turns undecided or fail into a pass
    assert int(check(p, between, allow_provisional=True).exit_code) == 5
    assert int(check(p, math.floor(star) + 1, allow_provisional=True).exit_code) == 1
    with pytest.raises(UsageError, match="gate"):
        check(p, inside, gate="upper")


def test_strict_turns_warn_into_fail(b128_prediction: Prediction) -> None:
    p = b128_prediction
    lo, star = p.recommended.max, p.b_star_min
    warn_target = math.floor(star)
    assert lo < warn_target <= star
    r = check(p, warn_target, strict=True)
    assert (r.verdict, int(r.exit_code), r.strict) == ("fail", 1, True)
    assert "--strict" in r.reason
    # strict changes nothing for ok (provisional here: one checkpoint) and fail.
    ok = check(p, math.floor(lo), strict=True)
    assert (ok.verdict, int(ok.exit_code)) == ("ok", 6)
    fail = check(p, math.floor(star) + 1, strict=True)
    assert (fail.verdict, int(fail.exit_code)) == ("fail", 1)


def test_check_uses_the_smallest_point_estimate_across_baselines() -> None:
    b512, b128 = load("sgd_b512.json"), load("sgd_b128.json")
    p = predict([("b512", b512), ("b128", b128)])
    star512, lo512, _ = b_star_by_hand(b512)
    star128, lo128, _ = b_star_by_hand(b128)
    assert star128 < star512
    assert p.b_star_min == pytest.approx(star128, rel=1e-12)
    assert p.recommended.max == pytest.approx(min(lo128, lo512), rel=1e-9)
    # Below b512's own B* but above b128's: fails.
    target = math.floor(star128) + 1
    assert target < star512
    assert check(p, target).verdict == "fail"
    assert check(p, math.floor(star128)).verdict == "warn"


def test_check_says_which_limit_binds_the_range() -> None:
    """Range capped at n: check names n, not the lower bound of B*, and B' > n fails."""
    m = load("sgd_b128.json")
    star, lo, _ = b_star_by_hand(m)
    n = 1000
    assert n < lo  # the dataset size binds
    p = predict([("small-n", dataclasses.replace(m, dataset_size=n))])
    at_n = check(p, n)
    assert (at_n.verdict, at_n.limited_by) == ("ok", "dataset_size")
    assert at_n.exit_code is ExitCode.PROVISIONAL  # one checkpoint's interval
    assert at_n.range_max == n
    assert f"capped at the dataset size n = {n}" in at_n.reason
    assert f"lower 95% bound of B* = {n}" not in at_n.reason  # n is not called a bound of B*
    assert f"{lo:.4g}" in at_n.reason  # the bound itself, above n
    d = at_n.to_dict()
    assert d["limited_by"] == "dataset_size" and d["dataset_size"] == n
    assert d["range_max"] == n and d["b_star_lower"] == pytest.approx(lo, rel=1e-9)
    # past the data: a failure, even below the lower bound of B* (it only warned before)
    for target in (n + 1, math.floor(lo) - 1, math.floor(star)):
        for strict in (False, True):
            r = check(p, target, strict)
            assert (r.verdict, r.exit_code) == ("fail", ExitCode.CHECK_FAILED), target
            assert f"larger than the dataset size n = {n}" in r.reason
            assert "cannot hold more distinct examples than the data" in r.reason
    # uncapped: the lower bound of B* binds and is named as such
    q = predict([("b128", m)])
    ok = check(q, math.floor(lo))
    assert ok.limited_by == "b_star" and ok.range_max == pytest.approx(lo, rel=1e-9)
    assert f"lower 95% bound of B* = {lo:.4g}" in ok.reason
    assert ok.to_dict()["limited_by"] == "b_star"


def test_check_fails_past_the_dataset_size_even_when_b_star_is_unbounded() -> None:
    m = load("adam_wide.json")  # B* has no upper bound; its lower bound is just below n
    p = predict([("adam", m)])
    lo = p.recommended.max
    assert lo < m.dataset_size < p.b_star_min
    assert check(p, m.dataset_size).verdict == "warn"
    r = check(p, m.dataset_size + 1)
    assert (r.verdict, r.exit_code, r.limited_by) == ("fail", ExitCode.CHECK_FAILED, "b_star")
    assert f"n = {m.dataset_size}" in r.reason


@pytest.mark.parametrize("target", [0, -8, True])
def test_check_refuses_non_positive_targets(b128_prediction: Prediction, target) -> None:
    with pytest.raises(BscritError):
        check(b128_prediction, target)


# ----------------------------------------------------------------------------------------------
# JSON forms
# ----------------------------------------------------------------------------------------------


def _strict_json(d: dict) -> dict:
    return json.loads(json.dumps(d, allow_nan=False))


@pytest.mark.parametrize("name", FIXTURES)
def test_prediction_and_check_to_dict_are_strict_json(name: str) -> None:
    m = load(name)
    p = predict([(name, m)])
    d = _strict_json(p.to_dict())
    b = p.base
    assert d["c2"] == DEFAULT_C2
    assert d["measurements"][0]["b_star"] == pytest.approx(b.b_star, rel=1e-15)
    assert d["measurements"][0]["b_star_ci95"][0] == pytest.approx(b.b_star_ci95[0], rel=1e-15)
    hi = d["measurements"][0]["b_star_ci95"][1]
    if math.isinf(b.b_star_ci95[1]):
        assert hi is None
    else:
        assert hi == pytest.approx(b.b_star_ci95[1], rel=1e-15)
    assert d["recommended"]["max"] == pytest.approx(p.recommended.max, rel=1e-15)
    assert d["recommended"]["max_pow2"] == p.recommended.max_pow2
    assert d["recommended"]["max_mult8"] == p.recommended.max_mult8
    assert d["range"] == pytest.approx(list(p.range), rel=1e-15)

    for target in (m.batch_size, math.floor(b.b_star), math.floor(b.b_star) + 1):
        r = check(p, target)
        assert isinstance(r, CheckResult)
        cd = _strict_json(r.to_dict())
        assert cd["batch_size"] == target
        assert cd["verdict"] == r.verdict
        assert cd["exit_code"] == int(r.exit_code)
        assert cd["b_star"] == pytest.approx(p.b_star_min, rel=1e-15)
        assert cd["b_star_lower"] == pytest.approx(b.b_star_ci95[0], rel=1e-15)
        assert cd["base_batch_size"] == m.batch_size


def test_unbounded_prediction_is_strict_json_with_nulls() -> None:
    # Ĝ's whole interval below 0: NSR, B* and the top of the range are all inf.
    m = load("sgd_b128.json")
    si = m.scale_invariant
    assert si is not None
    neg = dataclasses.replace(
        si,
        G=-0.05,
        jackknife_G=tuple(-0.05 + (0.004 if j % 2 == 0 else -0.004) for j in range(10)),
    )
    p = predict([("neg", dataclasses.replace(m, scale_invariant=neg))])
    assert p.base.b_star == math.inf and p.recommended.max == math.inf
    assert p.recommended.max_pow2 is None and p.recommended.target is None
    d = _strict_json(p.to_dict())
    assert d["measurements"][0]["b_star"] is None
    assert d["measurements"][0]["nsr"] is None
    assert d["recommended"]["max"] is None
    assert d["range"] == [None, None]
    cd = _strict_json(check(p, 4 * m.batch_size).to_dict())
    assert cd["b_star"] is None and cd["b_star_lower"] is None
