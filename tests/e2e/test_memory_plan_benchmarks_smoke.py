"""The memory benchmarks do not rot: the plan table (10M to 70B parameters) renders with the
measured points of the committed results, and ``sharded_memory.py --smoke`` measures one process
end to end (numbers mean nothing at that size)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _table_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(
        "memory_plan_table", ROOT / "benchmarks" / "memory_plan_table.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_plan_table_covers_10m_to_70b_and_marks_the_measured_points(tmp_path: Path) -> None:
    mod = _table_module()
    # the parameter counts of the standard configurations (biases and norms left out)
    assert mod.model_size(768, 12, 3072, 50257, True, 768) == (123_532_032, 38_597_376)
    assert round(mod.model_size(4096, 32, 11008, 32000, False, 4096)[0] / 1e9, 2) == 6.74
    measured = tmp_path / "results.json"
    sums = [{"name": "group sums", "bytes": 450}]
    ranks = [{"peak": 2000, "sums_held": 450}, {"peak": 2100, "sums_held": 440}]
    pair = {
        "memory": {"plan": {"total_bytes": 500, "components": sums}, "ranks": ranks},
        "spilled": {"plan": {"total_bytes": 100}, "ranks": [{"peak": 1600}, {"peak": 1800}]},
    }
    measured.write_text(json.dumps({"params": 1e6, "groups": 4, "runs": {"sharded-2": pair}}))
    out = tmp_path / "table.md"
    mod.main(["--out", str(out), "--measured", str(measured)])
    text = out.read_text()
    assert sum(r.startswith("| Llama-2 70B |") for r in text.splitlines()) == 2  # fp32, bf16
    assert "| small GPT | 11.5M |" in text and "| GPT-2 small | 124M | 38.6M | fp32 |" in text
    # held: max over ranks; by RSS: max over ranks of (memory − spilled) = 400 B, its plan 400 B
    assert "| sharded | 2 | 500 B | 450 B | 450 B | 1.000 | 400 B | 400 B | 2.05 KiB |" in text
    # the measured model's row in the main table: W = 2 measured, the others not
    row = "| ✱ MLP, m = 4, CPU (measured) | 1M | — | fp32 | — | — | 500 B (sums 450 B) ✱ held "
    assert row + "450 B | — | — | — |" in text
    assert "no measured points" in "\n".join(mod.measured_rows(tmp_path / "missing.json"))


def test_sharded_memory_smoke(tmp_path: Path) -> None:
    out = tmp_path / "smoke.md"
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/sharded_memory.py"), "--smoke", "--out", str(out)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    text = out.read_text()
    assert "| replicated | 1 | " in text and "| 1.000 |" in text
    data = json.loads(out.with_suffix(".json").read_text())
    run = data["runs"]["replicated-1"]
    plan = run["memory"]["plan"]
    sums = [c["bytes"] for c in plan["components"] if c["name"] == "group sums"]
    assert sums == [data["groups"] * data["params"] * 4]  # m x P float32
    assert run["memory"]["ranks"][0]["sums_held"] == sums[0]  # what the tensors really held
    assert run["memory"]["plan"]["sums"] == "host" and run["spilled"]["plan"]["sums"] == "spilled"
    assert run["memory"]["ranks"][0]["peak"] > run["memory"]["ranks"][0]["before"] > 0
