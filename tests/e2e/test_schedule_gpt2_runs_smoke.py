"""The tiny GPT-2 schedule-vs-fixed benchmark (issue 16 evidence) runs on a few hundred examples
from the committed schedule (numbers mean nothing)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_schedule_gpt2_runs_smoke(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    shutil.copy(ROOT / "benchmarks/schedule_results/gpt2/schedule.json", tmp_path)
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/schedule_gpt2_runs.py"), "--examples", "320",
         "--seeds", "1", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    runs = json.loads((tmp_path / "runs.json").read_text())["runs"]
    assert [x["arm"] for x in runs] == ["fixed", "schedule", "control"]
    assert all(x["examples"] >= 320 and x["held_out_loss"] > 0 for x in runs)
    # the fixed arm takes B = 16 steps; the control the last stage's batch from the start
    stages = json.loads((tmp_path / "schedule.json").read_text())["stages"]
    assert runs[0]["steps"] == 320 // stages[0]["batch_size"]
    assert runs[2]["steps"] == -(-320 // stages[-1]["batch_size"])
