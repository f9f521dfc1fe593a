"""`bscrit measure` plans the per-rank memory before the first batch: printed when large (here
forced), recorded in the JSON (`extra.memory_plan`), and a run that cannot fit exits 2 before
any batch, naming what it needs and what is free."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bscrit.cli import app

ASSETS = Path(__file__).resolve().parents[1] / "assets"
runner = CliRunner()
#: tests/assets/tiny.py: 83 float32 parameters, all trainable; valid.yaml: m = 4 groups.
PARAM_BYTES = 83 * 4


@pytest.fixture()
def spec(tmp_path: Path) -> Path:
    for name in ("tiny.py", "tiny.pt", "valid.yaml"):
        shutil.copy(ASSETS / name, tmp_path / name)
    return tmp_path / "valid.yaml"


def test_the_plan_is_printed_before_the_run_and_recorded_in_the_json(
    spec: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = runner.invoke(app, ["measure", str(spec), "-k", "40"])
    assert r.exit_code == 0, r.output
    assert "memory plan" not in r.stderr  # a small run: in the JSON only

    import bscrit.report.memory_plan

    monkeypatch.setattr(bscrit.report.memory_plan, "MEMORY_LINE_MIN_BYTES", 0)
    r = runner.invoke(app, ["measure", str(spec), "-k", "40", "--json"])
    assert r.exit_code == 0, r.output
    text = " ".join(r.stderr.split())
    assert (
        "memory plan per rank, 4 group sums: host: model 332 B + gradient 332 B + running sum "
        "332 B + group sums 1.3 KiB = 2.27 KiB; activations, data and the Python/torch runtime "
        "not included" in text
    )
    plan = json.loads(r.stdout)["extra"]["memory_plan"]
    assert (plan["world_size"], plan["sharded"], plan["params"], plan["groups"]) == (
        1,
        False,
        83,
        4,
    )
    assert {c["name"]: c["bytes"] for c in plan["components"]} == {
        "model": PARAM_BYTES,
        "gradient": PARAM_BYTES,
        "running sum": PARAM_BYTES,
        "group sums": 4 * PARAM_BYTES,
    }
    assert plan["total_bytes"] == 7 * PARAM_BYTES and plan["sums"] == "host"


def test_a_run_that_cannot_fit_exits_2_before_any_batch(
    spec: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bscrit.engine.allocator
    import bscrit.engine.groups  # binds the real available_memory: the sums' own plan keeps them
    import bscrit.engine.hot_loop

    def no_batch(*args: object, **kwargs: object) -> None:
        raise AssertionError("a batch ran")

    monkeypatch.setattr(bscrit.engine.hot_loop._HotLoop, "run", no_batch)
    monkeypatch.setattr(bscrit.engine.allocator, "available_memory", lambda: 1000)
    monkeypatch.setattr(bscrit.engine.allocator, "free_heap", lambda: 0)
    out = spec.parent / "m.json"
    r = runner.invoke(app, ["measure", str(spec), "-k", "40", "--out", str(out)])
    assert r.exit_code == 2, r.output
    text = " ".join(r.output.split())
    assert "Traceback" not in text
    assert (
        "memory: the measurement needs at least 1.95 KiB more host memory (gradient 332 B, "
        "running sum 332 B, group sums 1.3 KiB; activations, data and the Python/torch runtime "
        "not included) and 1000 B is free: try fewer groups (--groups, now 4), or the group "
        "sums spilled to disk (a lower --host-memory" in text
    )
    assert not out.exists()
    # spilled, only the gradient, the running sum and the sums' read buffer (all 4 sums
    # here: 1.3 KiB) are still to come: 1.95 KiB do not fit in 1000 B either
    r = runner.invoke(app, ["measure", str(spec), "-k", "40", "--host-memory", "0"])
    assert r.exit_code == 2, r.output
    assert "group sums (spilled: read buffer) 1.3 KiB" in " ".join(r.output.split())
