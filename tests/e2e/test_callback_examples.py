"""The callback examples of docs/api.md run (shortened) and write what they say they write."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

import bscrit
from bscrit.integrations.recorder import read_series

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "callbacks"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::UserWarning", "ignore:.*LeafSpec:FutureWarning"),
]


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def check(out: Path, steps: list[int]) -> None:
    rows = read_series(out / "series.jsonl")
    assert [r["step"] for r in rows] == steps
    for r in rows:
        m = bscrit.load_measurement(out / r["file"])
        assert m.checkpoints[0].step == r["step"]
        assert r["b_star"] is None or r["b_star"] >= m.batch_size


def test_lightning_example(tmp_path):
    pytest.importorskip("lightning")
    pytest.importorskip("sklearn")
    rows = load("lightning_digits").main(str(tmp_path), steps=200, every=100)
    assert len(rows) == 2
    check(tmp_path, [100, 200])
    (metrics,) = tmp_path.glob("logs/*/metrics.csv")  # the CSV logger got the metrics
    header = metrics.read_text().splitlines()[0].split(",")
    assert {"bscrit/nsr", "bscrit/b_star", "train_loss"} <= set(header)


def test_hf_example(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    rows = load("hf_tiny_gpt2").main(str(tmp_path), steps=20, every=10)
    assert len(rows) == 2
    check(tmp_path, [10, 20])
