"""The GPU suite's CPU smoke variant runs every step end to end (numbers mean nothing), so that
``benchmarks/gpu_suite.py --device cuda`` does not rot between the rare GPU sessions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_suite_cpu_smoke(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")  # the digits data of the bf16 step and the demo
    out = tmp_path / "suite.md"
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/gpu_suite.py"), "--device", "cpu", "--smoke",
         "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    text = out.read_text()
    for step in ("overhead", "memory", "free", "bf16", "demo", "sharded"):
        assert f"| {step} | ok |" in text, text[:2000]
        assert f"### {step}\n" in text
    assert "| --shard fsdp (world of one) |" in text  # the sharded step's row
    assert "| small_cnn | fp32 | 8 | 8 |" in text  # the overhead row
    assert "| digits (B = 32) | 0 | bf16-weights |" in text  # the bf16 error row
    assert "\n# " not in text  # the steps' titles are paragraphs, not top-level headings
