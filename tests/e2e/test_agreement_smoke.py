"""The agreement benchmark (sweep / predict / svag / confirm, issue 15) runs end to end in its
smoke mode (tiny MNIST-1D run, a few B'; the numbers mean nothing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_agreement_smoke(tmp_path: Path) -> None:
    pytest.importorskip("mnist1d")  # the benchmark generates MNIST-1D locally
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/validation/agreement.py"), "--smoke",
         "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    (res,) = json.loads((tmp_path / "out" / "smoke" / "agreement.json").read_text())
    assert res["rows"] and res["confirm_available"]
    for row in res["rows"]:
        assert row["sweep"] in {"holds", "fails"}
        assert row["predict"] in {"holds", "borderline", "fails"}
        assert row["svag"] in {"sde_holds", "sde_fails", "inconclusive", "not_converged"}
        assert set(row["confirm"].values()) <= {"holds", "fails", "inconclusive"}
    md = (tmp_path / "out" / "smoke" / "agreement.md").read_text()
    assert "| B' |" in md and "confirm says" in md
