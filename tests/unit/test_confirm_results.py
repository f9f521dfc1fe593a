"""bscrit confirm's pure part: the interval, the verdict, the budget, the grid and confirm.json."""

from __future__ import annotations

import csv
import io
import json
import math

import pytest

from bscrit.errors import ArtifactError, UsageError
from bscrit.optim.registry import OptimizerInfo
from bscrit.runs.confirm.budget import FALLBACK_EPOCHS, default_examples, example_grid
from bscrit.runs.confirm.results import (
    CONFIRM_SCHEMA,
    KIND_CONFIRM,
    Branch,
    ConfirmResult,
    curves_csv,
    load_confirm,
    write_confirm,
)
from bscrit.runs.confirm.verdict import DEFAULT_TOLERANCE, decide, relative_difference, t_interval

#: Student's t 0.975 quantiles from a printed table (scipy-free reference), by degrees of freedom.
T975 = {1: 12.706204736, 2: 4.302652730, 3: 3.182446305, 4: 2.776445105, 9: 2.262157163}


@pytest.mark.parametrize("df", sorted(T975))
def test_t_interval_is_mean_plus_minus_t_sd_over_root_k(df):
    k = df + 1
    values = [0.01 * (i * i - 3 * i) + 0.002 * (-1) ** i for i in range(k)]
    mean = sum(values) / k
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (k - 1))
    got_mean, got_sd, ci = t_interval(values)
    half = T975[df] * sd / math.sqrt(k)
    assert got_mean == pytest.approx(mean, rel=1e-12)
    assert got_sd == pytest.approx(sd, rel=1e-12)
    assert ci[0] == pytest.approx(mean - half, rel=1e-8, abs=1e-12)
    assert ci[1] == pytest.approx(mean + half, rel=1e-8, abs=1e-12)


def test_t_interval_has_no_interval_for_one_value_or_a_non_finite_one():
    assert t_interval([0.1])[2] is None
    assert t_interval([0.1, math.inf])[2] is None
    assert math.isnan(t_interval([])[0])


def test_holds_when_the_whole_interval_is_below_tolerance():
    v = decide([0.001, 0.011, -0.004], 0.05, target_batch_size=256)
    assert v.code == "holds"
    assert v.ci95[1] < 0.05
    assert "B' = 256" in v.text and "holds" in v.text


def test_a_much_lower_target_loss_holds_too():
    assert decide([-0.3, -0.2, -0.25], 0.05).code == "holds"


def test_fails_when_the_whole_interval_is_above_tolerance():
    v = decide([0.20, 0.22, 0.19], 0.05)
    assert v.code == "fails" and v.ci95[0] > 0.05


def test_inconclusive_when_the_interval_contains_the_tolerance():
    v = decide([0.0, 0.1, 0.05], 0.05)
    assert v.ci95[0] < 0.05 < v.ci95[1]
    assert v.code == "inconclusive"


def test_noise_makes_it_inconclusive_even_with_a_mean_far_from_tolerance():
    # mean 0.2 > δ but two seeds that disagree a lot: t_{0.975,1} = 12.7 widens the interval
    v = decide([0.05, 0.35], 0.05)
    assert v.mean == pytest.approx(0.2)
    assert v.code == "inconclusive"


def test_one_seed_is_inconclusive_unless_the_target_diverged():
    assert decide([0.5], 0.05).code == "inconclusive"
    assert decide([-0.5], 0.05).code == "inconclusive"
    v = decide([math.inf], 0.05, diverged=["seed 0 at 512 examples"])
    assert v.code == "fails" and "diverged" in v.text


def test_a_diverged_target_branch_fails_whatever_the_other_seeds_say():
    v = decide([0.0, 0.001, math.inf], 0.05, diverged=["seed 2 at 4096 examples"])
    assert v.code == "fails"
    assert v.diverged == ("seed 2 at 4096 examples",)


@pytest.mark.parametrize("bad", [0.0, -0.1, math.inf, math.nan])
def test_tolerance_must_be_positive(bad):
    with pytest.raises(UsageError, match="tolerance"):
        decide([0.0, 0.0], bad)


def test_relative_difference():
    assert relative_difference(2.0, 2.2) == pytest.approx(0.1)
    assert relative_difference(2.0, 1.0) == pytest.approx(-0.5)
    assert relative_difference(2.0, math.nan) == math.inf
    assert relative_difference(0.0, 0.0) == 0.0
    assert relative_difference(0.0, 1.0) == math.inf


def test_default_budget_is_two_relaxation_times_times_b():
    sgd = OptimizerInfo("sgd", lr=0.1, weight_decay=5e-4)
    e, why = default_examples(sgd, 32, 1500)
    assert e == math.ceil(2 * 32 / (2 * 0.1 * 5e-4))  # τ = 1/(2ηλ) = 10⁴ steps
    assert "relaxation" in why
    mom = OptimizerInfo("sgd", lr=0.1, weight_decay=5e-4, momentum=0.9)
    assert default_examples(mom, 32, 1500)[0] == math.ceil(2 * 32 * 0.1 / (2 * 0.1 * 5e-4))


def test_default_budget_falls_back_to_epochs_without_weight_decay():
    e, why = default_examples(OptimizerInfo("sgd", lr=0.1), 32, 1500)
    assert e == FALLBACK_EPOCHS * 1500 and "epochs" in why
    adam = OptimizerInfo("adam", lr=1e-3, weight_decay=1e-4, betas=(0.9, 0.999), eps=1e-8)
    assert default_examples(adam, 32, 1000)[0] == FALLBACK_EPOCHS * 1000


@pytest.mark.parametrize("b, bp", [(32, 256), (32, 512), (8, 64), (16, 16)])
def test_grid_gives_both_branches_the_same_examples_when_kappa_is_an_integer(b, bp):
    base, target, total = example_grid(100_000, b, bp, points=20)
    assert target[0] == 0 and target[-1] == total == round(100_000 / bp)
    assert [s * b for s in base] == [t * bp for t in target]
    assert len(target) == 21 and target == sorted(set(target))


def test_grid_with_few_steps_evaluates_every_step_and_non_integer_kappa_rounds():
    base, target, total = example_grid(3 * 512, 32, 512, points=20)
    assert target == [0, 1, 2, 3] and total == 3
    base, target, _ = example_grid(10_000, 32, 48, points=10)
    assert all(abs(s * 32 - t * 48) <= 16 for s, t in zip(base, target, strict=True))


def test_grid_refuses_bad_counts():
    with pytest.raises(UsageError, match="examples"):
        example_grid(0, 32, 64)
    with pytest.raises(UsageError, match="points"):
        example_grid(100, 32, 64, points=0)


def _branch(name: str, seed: int, b: int, losses: list[float]) -> Branch:
    grid = list(range(len(losses)))
    return Branch(
        name, seed, b, tuple(grid), tuple(g * b for g in grid),
        {"eval_loss": tuple(losses), "train_loss": tuple(x * 0.9 for x in losses)},
        diverged_at=None if all(math.isfinite(x) for x in losses) else 2 * b,
    )  # fmt: skip


def _result() -> ConfirmResult:
    sgd = OptimizerInfo("sgd", lr=0.1, weight_decay=5e-4)
    branches = (
        _branch("base", 0, 8, [1.0, 0.5, 0.41, 0.40, 0.39]),
        _branch("target", 0, 16, [1.0, 0.6, 0.42, 0.40, 0.40]),
        _branch("base", 1, 8, [1.0, 0.5, 0.40, 0.40, 0.40]),
        _branch("target", 1, 16, [1.0, 0.6, math.nan, math.nan, math.nan]),
    )
    d = [
        relative_difference(b.final("eval_loss", 3), t.final("eval_loss", 3))
        for b, t in ((branches[0], branches[1]), (branches[2], branches[3]))
    ]
    return ConfirmResult(
        batch_size=8, target_batch_size=16, kappa=2.0, rule="linear", rule_reference="ref",
        base_optimizer=sgd, target_optimizer=OptimizerInfo("sgd", lr=0.2, weight_decay=5e-4),
        examples=64, examples_why="given", seeds=(0, 1), branches=branches,
        verdict=decide(d, DEFAULT_TOLERANCE, diverged=["seed 1 at 32 examples"]),
        dataset_size=64, forward_backward={"base": 10, "target": 6}, tail_points=3,
    )  # fmt: skip


def test_final_is_the_mean_of_the_last_grid_points():
    b = _branch("base", 0, 8, [1.0, 0.5, 0.41, 0.40, 0.39])
    assert b.final("eval_loss", 3) == pytest.approx(0.40)
    assert b.final("eval_loss", 1) == pytest.approx(0.39)
    assert math.isnan(_branch("t", 0, 8, [1.0, math.nan]).final("eval_loss", 1))


def test_json_has_the_contract_keys_and_round_trips(tmp_path):
    r = _result()
    d = json.loads(json.dumps(r.to_dict(), allow_nan=False))
    assert d["kind"] == KIND_CONFIRM and d["schema"] == 1
    assert d["verdict"] == "fails"
    keys = ("base_batch_size", "target_batch_size", "tolerance", "criterion", "examples", "seeds",
            "hyperparameters", "runtime_s", "relative_difference", "losses")  # fmt: skip
    assert not [k for k in keys if k not in d]
    assert d["losses"]["base"] == pytest.approx([0.40, 0.40])
    assert d["losses"]["target"][1] is None  # diverged: not finite
    assert d["relative_difference"]["per_seed"][1] is None
    assert d["hyperparameters"]["target"]["lr"] == 0.2
    j, c = write_confirm(r, tmp_path / "out")
    back = load_confirm(tmp_path / "out")
    assert back.verdict.code == "fails"
    assert back.finals("base") == pytest.approx(r.finals("base"))
    assert back.branches[3].diverged_at == 32
    rows = list(csv.DictReader(io.StringIO(c.read_text())))
    assert len(rows) == 4 * 5
    assert rows[0]["branch"] == "base" and rows[-1]["eval_loss"] == ""
    assert curves_csv(r) == c.read_text()


def test_loading_another_artifact_is_an_error(tmp_path):
    p = tmp_path / "confirm.json"
    p.write_text(json.dumps({"schema": 1, "kind": "bscrit.svag"}))
    with pytest.raises(ArtifactError, match="bscrit.confirm"):
        load_confirm(p)


def test_confirm_json_has_its_own_schema_independent_of_the_measurement(tmp_path, monkeypatch):
    """confirm.json is versioned by CONFIRM_SCHEMA and read with its own (empty) upgrades: a new
    measurement schema, with an upgrade of its own, neither re-versions it nor is applied to it."""
    import bscrit.artifacts.measurement as measurement

    def upgrade(d):
        raise AssertionError("the measurement's upgrade was applied to confirm.json")

    monkeypatch.setattr(measurement, "SCHEMA", CONFIRM_SCHEMA + 1)
    monkeypatch.setattr(measurement, "_UPGRADES", {CONFIRM_SCHEMA: upgrade}, raising=False)
    r = _result()
    assert r.to_dict()["schema"] == CONFIRM_SCHEMA == 1
    write_confirm(r, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "confirm.json").read_text())["schema"] == CONFIRM_SCHEMA
    assert load_confirm(tmp_path / "out").verdict.code == "fails"  # no upgrade applied
    newer = {**r.to_dict(), "schema": CONFIRM_SCHEMA + 1}  # the measurement's number, not ours
    (tmp_path / "newer.json").write_text(json.dumps(newer))
    with pytest.raises(ArtifactError, match="upgrade bscrit"):
        load_confirm(tmp_path / "newer.json")
