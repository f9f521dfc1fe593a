"""The validation study runs end to end in its smoke mode (its numbers mean nothing)."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_validation_study_smoke(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/validation/run.py"), "--smoke", "--estimator",
         "bscrit", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    rows = list(csv.DictReader((tmp_path / "summary.csv").open()))
    assert rows and float(rows[0]["predicted_min"]) > 0
    for f in ("fig_gn.png", "fig_test_error.png", "results.md", "runs.csv", "noise.csv"):
        assert (tmp_path / f).stat().st_size > 0
