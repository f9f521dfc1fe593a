"""confirm's absolute tolerance (issue 23, item 9): ``--tolerance-abs X`` puts δ in the loss's own
units (nats for a cross-entropy) on d = L_B' − L_B per seed, with the same one-sided verdict as the
relative δ; its unit is said in the verdict, the criterion, the printed result, confirm.json and the
conclusion; both options together are refused (exit 2); old confirm.json files read as relative."""

from __future__ import annotations

import io
import json
import math

import pytest
from typer.testing import CliRunner

from bscrit.cli import app
from bscrit.errors import ArtifactError, UsageError
from bscrit.optim.registry import OptimizerInfo
from bscrit.runs.confirm.results import Branch, ConfirmResult, load_confirm, write_confirm
from bscrit.runs.confirm.verdict import (
    ABSOLUTE,
    DEFAULT_TOLERANCE,
    RELATIVE,
    TOLERANCE_UNIT,
    ConfirmVerdict,
    absolute_difference,
    criterion,
    decide,
    describe_tolerance,
    difference,
    tolerance_and_unit,
)
from bscrit.workflows.conclusion import conclude, confirmation_of

ABS_WORDS = "δ = 0.01 (absolute, in the loss's units, e.g. nats)"
#: Final held-out losses (nats/char) of a char-LM-like run, per seed: the target ends 0.05 nats
#: above the base, 2.2% of L_B = 2.2. Relative δ = 10% (0.22 nats) calls that "holds"; an
#: absolute δ = 0.01 nats calls it "fails".
BASE = (2.20, 2.21, 2.19)
TARGET = (2.25, 2.26, 2.245)


def _branch(name: str, seed: int, b: int, final: float) -> Branch:
    losses = (3.0, 2.6, final, final, final)  # the tail (3 points) is `final`
    grid = tuple(range(len(losses)))
    return Branch(name, seed, b, grid, tuple(g * b for g in grid),
                  {"eval_loss": losses, "train_loss": tuple(x - 0.1 for x in losses)})  # fmt: skip


def _result(unit: str, tolerance: float) -> ConfirmResult:
    branches = tuple(
        br
        for s, (lb, lt) in enumerate(zip(BASE, TARGET, strict=True))
        for br in (_branch("base", s, 8, lb), _branch("target", s, 16, lt))
    )
    d = [difference(lb, lt, unit) for lb, lt in zip(BASE, TARGET, strict=True)]
    adam = OptimizerInfo("adamw", lr=1e-3, weight_decay=0.1, betas=(0.9, 0.999), eps=1e-8)
    return ConfirmResult(
        batch_size=8, target_batch_size=16, kappa=2.0, rule="square-root", rule_reference="ref",
        base_optimizer=adam, target_optimizer=adam, examples=64, examples_why="given",
        seeds=(0, 1, 2), branches=branches, dataset_size=64, tail_points=3,
        verdict=decide(d, tolerance, unit=unit, target_batch_size=16),
        forward_backward={"base": 10, "target": 6},
    )  # fmt: skip


def test_the_same_runs_hold_relative_and_fail_absolute():
    rel, ab = _result(RELATIVE, DEFAULT_TOLERANCE), _result(ABSOLUTE, 0.01)
    assert rel.verdict.code == "holds" and rel.verdict.unit == RELATIVE
    assert ab.verdict.code == "fails" and ab.verdict.unit == ABSOLUTE
    assert ab.verdict.per_seed == pytest.approx([0.05, 0.05, 0.055])
    assert ab.verdict.ci95[0] > 0.01
    assert ABS_WORDS in ab.verdict.text and "d = +0.05167" in ab.verdict.text
    # d in nats, not a percentage: mean ± t_{0.975,2}·sd/√3 = 0.05167 ± 4.303 · 0.002887/√3
    assert "(95%: +0.0445 to +0.05884)" in ab.verdict.text


@pytest.mark.parametrize(
    "d, code",
    [([0.001, 0.004, -0.002], "holds"), ([0.05, 0.052, 0.049], "fails"),
     ([0.0, 0.02, 0.01], "inconclusive"), ([0.005], "inconclusive")],
)  # fmt: skip
def test_absolute_verdicts_follow_the_interval_against_delta(d, code):
    v = decide(d, 0.01, unit=ABSOLUTE)
    assert v.code == code
    if v.ci95 is not None:
        lo, hi = v.ci95
        assert (hi < 0.01) == (code == "holds") and (lo > 0.01) == (code == "fails")


def test_absolute_difference_and_a_diverged_target():
    assert absolute_difference(2.2, 2.25) == pytest.approx(0.05)
    assert absolute_difference(2.2, math.nan) == math.inf
    assert difference(2.0, 2.2, RELATIVE) == pytest.approx(0.1)
    v = decide([0.0, math.inf], 0.01, unit=ABSOLUTE, diverged=["seed 1 at 32 examples"])
    assert v.code == "fails"


def test_criterion_and_description_say_the_unit():
    assert describe_tolerance(0.01, ABSOLUTE) == ABS_WORDS
    assert describe_tolerance(0.1) == "δ = 10% of the base run's loss (relative)"
    c = criterion(0.01, "eval_loss", 5, ABSOLUTE)
    assert "d = L_B' − L_B per seed" in c and "δ = 0.01 (absolute, in the loss's units)" in c
    assert "(L_B' − L_B)/L_B" not in c


def test_both_tolerances_or_a_bad_one_are_refused():
    assert tolerance_and_unit() == (DEFAULT_TOLERANCE, RELATIVE)  # the default is unchanged
    assert tolerance_and_unit(0.05) == (0.05, RELATIVE)
    assert tolerance_and_unit(None, 0.01) == (0.01, ABSOLUTE)
    with pytest.raises(UsageError, match="not both") as e:
        tolerance_and_unit(0.1, 0.01)
    assert "--tolerance-abs" in e.value.for_cli() and "--tolerance " in e.value.for_cli()
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(UsageError) as e:
            tolerance_and_unit(None, bad)
        assert "--tolerance-abs" in e.value.for_cli()
    with pytest.raises(ValueError, match="unit"):
        decide([0.0, 0.0], 0.01, unit="nats")


def test_the_cli_refuses_both_options_with_exit_2(tmp_path):
    spec = tmp_path / "spec.yaml"  # never read: the refusal comes first
    spec.write_text("batch_size: 8\n")
    r = CliRunner().invoke(app, ["confirm", str(spec), "-t", "16", "--tolerance", "0.1",
                                 "--tolerance-abs", "0.01", "--quiet"])  # fmt: skip
    assert r.exit_code == 2, r.output
    assert "--tolerance" in r.output and "--tolerance-abs" in r.output and "not both" in r.output
    r = CliRunner().invoke(app, ["confirm", str(spec), "-t", "16", "--tolerance-abs", "0"])
    assert r.exit_code == 2 and "--tolerance-abs must be > 0" in r.output
    r = CliRunner().invoke(app, ["confirm", "--help"], env={"COLUMNS": "200"})
    assert "--tolerance-abs" in r.output


def test_confirm_json_round_trips_the_absolute_unit(tmp_path):
    r = _result(ABSOLUTE, 0.01)
    d = json.loads(json.dumps(r.to_dict(), allow_nan=False))
    assert d["tolerance"] == 0.01 and d["tolerance_unit"] == "absolute"
    assert d["relative_difference"]["tolerance_unit"] == "absolute"
    assert "d = L_B' − L_B" in d["criterion"]
    assert d["per_seed"][0]["absolute_difference"] == pytest.approx(0.05)
    assert d["train_loss_difference"]["per_seed"] == pytest.approx([0.05, 0.05, 0.055])
    write_confirm(r, tmp_path / "abs")
    back = load_confirm(tmp_path / "abs")
    assert back.verdict == r.verdict and back.verdict.unit == ABSOLUTE


def test_an_old_confirm_json_without_the_unit_reads_as_relative(tmp_path):
    r = _result(RELATIVE, DEFAULT_TOLERANCE)
    d = json.loads(json.dumps(r.to_dict(), allow_nan=False))
    assert d["tolerance_unit"] == TOLERANCE_UNIT  # the relative form is written as before
    del d["tolerance_unit"], d["relative_difference"]["tolerance_unit"]
    (tmp_path / "confirm.json").write_text(json.dumps(d))
    back = load_confirm(tmp_path / "confirm.json")
    assert back.verdict.unit == RELATIVE and back.verdict == r.verdict
    assert ConfirmVerdict.from_dict(d["relative_difference"]).unit == RELATIVE
    d["tolerance_unit"] = d["relative_difference"]["tolerance_unit"] = "furlongs"
    (tmp_path / "confirm.json").write_text(json.dumps(d))
    with pytest.raises(ArtifactError, match="tolerance_unit"):
        load_confirm(tmp_path / "confirm.json")


def test_the_printed_result_says_the_absolute_unit():
    from rich.console import Console

    from bscrit.report import show
    from bscrit.report.confirm import format_confirm

    console = Console(file=io.StringIO(), width=300, highlight=False)
    show(format_confirm(_result(ABSOLUTE, 0.01)), console=console)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "d = L_B' − L_B (in the loss's units)" in text
    assert f"tolerance {ABS_WORDS}, i.e. 0.455% of L_B = 2.2" in text
    assert "+0.05" in text and "+2.27%" not in text


def test_the_conclusion_says_the_absolute_unit():
    c = confirmation_of(_result(ABSOLUTE, 0.01))
    assert c.unit == ABSOLUTE and c.to_dict()["tolerance_unit"] == ABSOLUTE
    out = conclude(base_batch_size=8, recommended_max=math.inf, b_star_lower=math.inf,
                   rule="square-root", svag=None, confirmations=[c])  # fmt: skip
    failed = [line for line in out.lines if "the scaled run was worse" in line]
    assert failed and f"above {ABS_WORDS}" in failed[0] and "d = +0.0517" in failed[0]
    held = confirmation_of(_result(RELATIVE, DEFAULT_TOLERANCE))
    out = conclude(base_batch_size=8, recommended_max=math.inf, b_star_lower=math.inf,
                   rule="square-root", svag=None, confirmations=[held])  # fmt: skip
    assert "less than δ = 10% above the base run's" in out.lines[0]  # as docs/samples/demo
    failed = conclude(base_batch_size=8, recommended_max=math.inf, b_star_lower=math.inf,
                      rule="square-root", svag=None,
                      confirmations=[confirmation_of(_result(RELATIVE, 0.001))])  # fmt: skip
    assert "above δ = 0.1% of the base run's loss (relative)" in failed.lines[1]


def test_absolute_delta_is_the_rule_the_tolerance_study_scores_on_the_char_lm():
    """docs/validation.md's "δ = 0.01 nats" column is confirm's absolute rule on the committed
    char-LM runs: decide(d = L_B' − L_B per seed, 0.01, absolute) gives the study's verdicts."""
    import csv
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location(
        "_tolerance_abs", root / "benchmarks" / "validation" / "tolerance.py"
    )
    study = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(study)  # type: ignore[union-attr]
    path = root / "benchmarks" / "validation" / "results" / "adaptive" / "runs.csv"
    rows = study._lm_rows(path)[0]
    runs = list(csv.DictReader(path.open()))
    loss = {(int(r["kappa"]), int(r["seed"])): float(r["heldout_loss"]) for r in runs
            if r["variant"] == "b" or int(r["kappa"]) == 1}  # fmt: skip
    seeds = sorted({s for _, s in loss})
    codes = []
    for row in rows:
        k = row["B'"] // 16
        d = [absolute_difference(loss[(1, s)], loss[(k, s)]) for s in seeds]
        codes.append(decide(d, 0.01, unit=ABSOLUTE).code)
        assert codes[-1] == study.verdict(row, "abs", 0.01)
    # never wrong against the sweep; inconclusive where the intervals reach over 0.01 nats
    assert all(c in (row["sweep"], "inconclusive") for c, row in zip(codes, rows, strict=True))
