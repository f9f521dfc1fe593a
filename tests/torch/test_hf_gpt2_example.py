"""examples/hf-gpt2: a short run of its train.py writes the three forms, and all three load to
bitwise-equal weights, the Trainer folder and the torch dict to the same optimizer state and step.
(Measuring them is tests/e2e/test_hf_gpt2.py.)"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from bscrit.load.checkpoints import load_model
from bscrit.specfile.document import parse_spec

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hf-gpt2"
STEPS = 6


def _load(name: str):
    """The example's ``name``.py (train.py imports its sibling data.py: undone afterwards)."""
    spec = importlib.util.spec_from_file_location(f"hf_gpt2_{name}", EXAMPLE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    path, modules = list(sys.path), dict(sys.modules)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = path
        if "data" not in modules:
            sys.modules.pop("data", None)
    return module


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("hf-gpt2")
    return _load("train").train(STEPS, out)


def test_data_are_dicts_with_padding_ignored_in_the_labels():
    data = _load("data")
    IGNORE = data.IGNORE
    ds = data.make_dataset(seq_len=64)
    ex = ds[0]
    assert set(ex) == {"input_ids", "attention_mask", "labels"}
    padded = ds.attention_mask.sum(dim=1) < 64
    assert 0.1 < padded.float().mean() < 0.9  # some examples padded, some full
    pad = ds.attention_mask == 0
    assert (ds.labels[pad] == IGNORE).all()
    assert torch.equal(ds.labels[~pad], ds.input_ids[~pad])
    assert int(ds.input_ids.max()) < 256


def test_the_three_forms_load_to_the_same_weights_optimizer_and_step(run):
    spec = parse_spec(
        {
            "model": {"hf": str(run["save_pretrained"])},
            "data": {"factory": str(EXAMPLE / "data.py") + ":make_dataset"},
            "loss": "cross_entropy",
            "batch_size": 16,
        },
        "spec.yaml",
        EXAMPLE,
    )
    loaded = {name: load_model(spec, path) for name, path in run.items()}
    ref = loaded["torch"][0].state_dict()
    for name, (model, _) in loaded.items():
        sd = model.state_dict()
        assert sd.keys() == ref.keys() and all(torch.equal(sd[k], ref[k]) for k in ref), name
    trainer, plain = loaded["trainer"][1], loaded["torch"][1]
    assert trainer.step == plain.step == STEPS and loaded["save_pretrained"][1].step is None
    assert trainer.optimizer == plain.optimizer and trainer.optimizer.name == "adamw"
    a, b = trainer.optimizer_state, plain.optimizer_state
    assert a["param_groups"] == b["param_groups"] and len(a["param_groups"]) == 2
    assert all(
        torch.equal(a["state"][i][k], b["state"][i][k]) for i in a["state"] for k in a["state"][i]
    )
