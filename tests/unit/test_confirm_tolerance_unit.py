"""confirm's tolerance says its unit (relative: a fraction of the base run's loss) wherever it is
printed or written (issue 23, "Tolerance"); the committed tolerance study reads as documented."""

from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path

import pytest

from bscrit.runs.confirm.verdict import TOLERANCE_UNIT, ConfirmVerdict, criterion, decide

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str, path: Path):  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@pytest.mark.parametrize("d", [[0.01, 0.02, 0.0], [0.3, 0.31, 0.29], [0.0, 0.2, 0.1]])
def test_every_verdict_text_and_the_json_say_the_tolerance_is_relative(d: list[float]) -> None:
    v = decide(d, 0.1, target_batch_size=512)
    assert "δ = 10% of the base run's loss (relative)" in v.text
    out = v.to_dict()
    assert out["tolerance"] == 0.1 and out["tolerance_unit"] == TOLERANCE_UNIT
    assert "relative" in TOLERANCE_UNIT and "(L_B' − L_B)/L_B" in TOLERANCE_UNIT
    assert ConfirmVerdict.from_dict(out) == v
    assert "δ = 0.1 (relative, a fraction of L_B)" in criterion(0.1, "eval_loss", 5)


def test_the_printed_result_and_its_artifact_say_the_unit() -> None:
    from rich.console import Console

    from bscrit.report import show
    from bscrit.report.confirm import format_confirm

    helpers = _load("_confirm_results", ROOT / "tests" / "unit" / "test_confirm_results.py")
    r = helpers._result()
    console = Console(file=io.StringIO(), width=300, highlight=False)
    show(format_confirm(r), console=console)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "tolerance δ = 10% of the base run's loss (relative), i.e. 0.04 at L_B = 0.4" in text
    d = json.loads(json.dumps(r.to_dict(), allow_nan=False))
    assert d["tolerance_unit"] == TOLERANCE_UNIT
    assert d["relative_difference"]["tolerance_unit"] == TOLERANCE_UNIT


def test_the_tolerance_study_finds_no_relative_delta_for_both_mlps_and_the_char_lm() -> None:
    study = _load("_tolerance", ROOT / "benchmarks" / "validation" / "tolerance.py")
    runs = ROOT / "benchmarks" / "validation" / "results" / "adaptive" / "runs.csv"
    rows = study._lm_rows(runs)[0]
    assert [r["sweep"] for r in rows] == ["holds"] * 3 + ["fails"] * 4
    assert study.agreeing_range(rows, "rel") is None  # at 3 seeds no relative δ fits every B'
    said = [study.verdict(r, "rel", 0.10) for r in rows]
    assert said[3:6] == ["holds"] * 3  # 10% calls B' = 192..512 "holds" where the sweep fails
