"""The equilibrium coverage benchmark runs end to end in its smoke mode (numbers mean nothing)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_equilibrium_coverage_smoke(tmp_path: Path) -> None:
    pytest.importorskip("mnist1d")  # the benchmark generates MNIST-1D locally (pip install mnist1d)
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/equilibrium_coverage.py"), "--smoke", "--reps",
         "2", "--method-reps", "50", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    d = json.loads((tmp_path / "smoke" / "results.json").read_text())
    assert d["truth"] > 0 and d["reference_width"] > 0
    labels = [row["label"] for row in d["rows"]]
    assert "K = 1" in labels and labels[-1].startswith("measure --sample-steps")
    assert len(d["sampled"]) == 2 and all(s["cost"] > 0 for s in d["sampled"])
    assert "| intervals from |" in (tmp_path / "smoke" / "results.md").read_text()
