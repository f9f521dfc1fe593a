"""benchmarks/validation/adam_rule_variants.py runs end to end in its smoke mode (numbers mean
nothing): both variants run, the full rule refuses the κ past 1/(1 − β₁), LR-only does not."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_adam_rule_variants_smoke(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/validation/adam_rule_variants.py"), "--smoke",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads((tmp_path / "results.json").read_text())["verdicts"]
    by = {(v["rule"], v["kappa"]): v["verdict"] for v in rows}
    assert by[("full", 16)] == "refused" and by[("lr-only", 16)] in ("holds", "fails")
    assert by[("full", 2)] in ("holds", "fails") and (tmp_path / "results.md").stat().st_size
