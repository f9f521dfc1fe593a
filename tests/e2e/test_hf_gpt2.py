"""examples/hf-gpt2 end to end: a short run of its train.py, then `bscrit measure --json` of its
spec.yaml from the three forms it writes (save_pretrained folder, HF Trainer checkpoint-N/ folder,
torch dict). Same weights, same batches, same seed: G and N agree to float rounding; and in whole
batches (--micro-batch-size = B) as in the spec's micro-batches of 8."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from typer.testing import CliRunner  # noqa: E402

from bscrit.cli import app

pytestmark = pytest.mark.slow
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hf-gpt2"
STEPS = 40
#: Float rounding: summing the same gradients in another order (micro-batches) moves G and N by
#: a few float32 ulps of the gradient's squared norm, G + N per batch (tests/torch: 8e-6).
ROUNDING = 8e-6
runner = CliRunner()


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    """The example copied to a temporary folder, trained for STEPS steps into its run/."""
    folder = tmp_path_factory.mktemp("hf-gpt2")
    for name in ("spec.yaml", "data.py", "train.py"):
        shutil.copy(EXAMPLE / name, folder / name)
    spec = importlib.util.spec_from_file_location("hf_gpt2_train_e2e", folder / "train.py")
    train = importlib.util.module_from_spec(spec)
    path = list(sys.path)
    try:
        spec.loader.exec_module(train)
    finally:
        sys.path[:] = path
        sys.modules.pop("data", None)
    return folder / "spec.yaml", train.train(STEPS, folder / "run")


def measure(spec: Path, checkpoint: Path, *extra: str) -> dict:
    r = runner.invoke(
        app,
        ["measure", str(spec), "-c", str(checkpoint), "--batches", "8", "--groups", "4",
         "--device", "cpu", "--json", "--quiet", *extra],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def close(a: dict, b: dict) -> bool:
    scale = abs(a["G"]) + a["N"]
    return all(abs(a[k] - b[k]) <= ROUNDING * scale for k in ("G", "N"))


@pytest.fixture(scope="module")
def results(work) -> dict[str, dict]:
    spec, forms = work
    return {name: measure(spec, path) for name, path in forms.items()}


def test_three_forms_measure_the_same(results):
    ref = results["trainer"]["stats"]["all"]
    assert ref["G"] > 0 and ref["N"] > 0 and ref["num_params"] > 100_000
    for name, m in results.items():
        assert m["batch_size"] == 16 and m["micro_batch_size"] == 8, name
        assert close(m["stats"]["all"], ref), (name, m["stats"]["all"], ref)
    # the optimizer comes from the Trainer folder's optimizer.pt and from the torch dict alike
    assert results["trainer"]["optimizer"] == results["torch"]["optimizer"]
    assert results["trainer"]["optimizer"]["name"] == "adamw"


def test_micro_batches_measure_the_batch_gradient(work, results):
    spec, forms = work
    chunked = results["trainer"]["stats"]["all"]
    whole = measure(spec, forms["trainer"], "--micro-batch-size", "16")["stats"]["all"]
    assert close(whole, chunked), (whole, chunked)
