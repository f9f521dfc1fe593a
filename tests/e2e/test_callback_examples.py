"""The callback examples of docs/api.md run (shortened) and write what they say they write."""

from __future__ import annotations

import csv
import importlib.util
import math
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
    """Each line of series.jsonl is what ``bscrit predict`` says of the measurement it names."""
    rows = read_series(out / "series.jsonl")
    assert [r["step"] for r in rows] == steps
    for r in rows:
        m = bscrit.load_measurement(out / r["file"])
        assert m.checkpoints[0].step == r["step"] and r["batch_size"] == m.batch_size
        b = bscrit.predict(m).base
        assert r["param_set"] == b.param_set
        for key, value in (("G", b.noise.G.value), ("N", b.noise.N.value),
                           ("nsr", b.noise.nsr), ("b_star", b.b_star)):  # fmt: skip
            if math.isfinite(value):
                assert r[key] == pytest.approx(value, rel=1e-9), key
            else:
                assert r[key] is None, key
        lo, hi = r["b_star_ci95"]
        assert lo == pytest.approx(b.b_star_ci95[0], rel=1e-9)
        assert (hi is None) == (not math.isfinite(b.b_star_ci95[1]))


def test_lightning_example(tmp_path):
    pytest.importorskip("lightning")
    pytest.importorskip("sklearn")
    rows = load("lightning_digits").main(str(tmp_path), steps=200, every=100)
    assert len(rows) == 2
    check(tmp_path, [100, 200])
    (metrics,) = tmp_path.glob("logs/*/metrics.csv")  # the CSV logger got the metrics
    header = metrics.read_text().splitlines()[0].split(",")
    assert {"bscrit/nsr_raw", "bscrit/b_star_raw", "train_loss"} <= set(header)
    # the NSR logged at each measured step is the one series.jsonl has for the same set
    logged = list(csv.DictReader(metrics.read_text().splitlines()))
    series = read_series(tmp_path / "series.jsonl")
    reading = {"all": "raw"}.get(series[0]["param_set"], series[0]["param_set"])
    nsr = [float(r[f"bscrit/nsr_{reading}"]) for r in logged if r.get(f"bscrit/nsr_{reading}")]
    assert nsr == pytest.approx([r["nsr"] for r in series], rel=1e-6)


def test_hf_example(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    rows = load("hf_tiny_gpt2").main(str(tmp_path), steps=20, every=10)
    assert len(rows) == 2
    check(tmp_path, [10, 20])
