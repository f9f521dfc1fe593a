"""The adaptive (AdamW) validation sweep runs end to end in its smoke mode (numbers meaningless)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_adaptive_sweep_smoke(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/validation/adaptive_sweep.py"), "--smoke",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "results.json").read_text())
    # bscrit's engine and the brute force agree on the raw NSR (same batches)
    assert res["noise"]["engine_vs_bruteforce_rel_diff"] < 1e-4
    assert {c["candidate"][0] for c in res["candidates"]} == {"1", "2", "3", "4"}
    summary = list(csv.DictReader((tmp_path / "summary.csv").open()))
    assert {row["variant"] for row in summary} == {"a", "b"}
    runs = list(csv.DictReader((tmp_path / "runs.csv").open()))
    # the square-root rule's hyperparameters (bscrit.theory.scaling) at κ = 2
    k2 = next(r for r in runs if r["kappa"] == "2")
    assert float(k2["beta1"]) == pytest.approx(1 - 2 * (1 - 0.99))
    assert int(k2["steps"]) * 2 == int(next(r for r in runs if r["kappa"] == "1")["steps"])
    for f in ("fig_adaptive.png", "results.md", "predictions.csv", "base_curve.csv"):
        assert (tmp_path / f).stat().st_size > 0
    assert "| κ | B' |" in r.stdout
