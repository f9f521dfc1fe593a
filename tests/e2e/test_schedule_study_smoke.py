"""The schedule study (digits) runs end to end in its smoke mode (numbers mean nothing)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_schedule_study_smoke(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")  # the digits data ship with scikit-learn
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/schedule_study.py"), "--smoke", "--out",
         str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    d = json.loads((tmp_path / "results.json").read_text())
    assert [p["step"] for p in d["schedule"]["points"]] == sorted(
        p["step"] for p in d["schedule"]["points"]
    )
    sizes = [s["batch_size"] for s in d["schedule"]["stages"]]
    assert sizes[0] >= 32 and sizes == sorted(sizes)  # a point at step 0 sets the first
    arms = {r["arm"] for r in d["runs"]}  # + the largest stage from step 0 (a control)
    assert {"fixed", "schedule"} <= arms and any(a.startswith("fixed ") for a in arms)
    assert len(d["runs"]) == 2 * len(arms)
    assert all(r["examples"] >= d["total_examples"] for r in d["runs"])
    assert (tmp_path / "fig_schedule.png").stat().st_size > 1000
    assert "| arm | optimizer steps |" in (tmp_path / "results.md").read_text()
