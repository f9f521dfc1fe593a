"""The spec's ``model: {hf: folder, hf_class: ...}`` keys and the HF folder as default checkpoint
(no torch, no transformers: the folder is only looked at)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bscrit.errors import SpecError
from bscrit.specfile.document import load_spec, parse_spec
from bscrit.specfile.model import ModelSpec


def minimal(**over):
    raw = {
        "model": {"hf": "gpt2-tiny"},
        "data": {"dataset": "CIFAR10", "kwargs": {"root": "data"}},
        "loss": "cross_entropy",
        "batch_size": 32,
    }
    raw.update(over)
    return raw


def hf_folder(root: Path, name: str = "gpt2-tiny", weights: str | None = None) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    if weights:
        (folder / weights).write_bytes(b"x")
    return folder


def problems(raw, base_dir: Path) -> dict[str, str]:
    with pytest.raises(SpecError) as info:
        parse_spec(raw, "spec.yaml", base_dir)
    return {p.key: p.message for p in info.value.problems}


def test_hf_folder_resolves_against_the_spec_folder(tmp_path):
    folder = hf_folder(tmp_path / "models")
    (tmp_path / "spec.yaml").write_text(
        "model: {hf: models/gpt2-tiny, hf_class: AutoModelForCausalLM, kwargs: {n_layer: 1}}\n"
        "data: {dataset: CIFAR10}\nloss: cross_entropy\nbatch_size: 8\n"
    )
    spec = load_spec(tmp_path / "spec.yaml")
    assert spec.model == ModelSpec(
        name=None, factory=None, kwargs={"n_layer": 1}, hf=folder, hf_class="AutoModelForCausalLM"
    )
    assert spec.checkpoint.paths == ()  # no weights in the folder: no default checkpoint
    assert spec.model.label == f"hf:{folder} (AutoModelForCausalLM)"


@pytest.mark.parametrize(
    "weights",
    [
        "model.safetensors",
        "pytorch_model.bin",
        "model.safetensors.index.json",
        "pytorch_model.bin.index.json",
    ],
)
def test_a_folder_with_weights_is_the_checkpoint_when_none_is_given(tmp_path, weights):
    folder = hf_folder(tmp_path, weights=weights)
    assert parse_spec(minimal(), "spec.yaml", tmp_path).checkpoint.paths == (folder,)
    # an explicit checkpoint wins; a strip_prefix alone still gets the folder
    (tmp_path / "c.pt").write_bytes(b"x")
    spec = parse_spec(minimal(checkpoint="c.pt"), "spec.yaml", tmp_path)
    assert spec.checkpoint.paths == (tmp_path / "c.pt",)
    spec = parse_spec(minimal(checkpoint={"strip_prefix": "m."}), "spec.yaml", tmp_path)
    assert spec.checkpoint.paths == (folder,) and spec.checkpoint.strip_prefix == ("m.",)


def test_hf_with_name_or_factory_or_hf_class_alone_is_refused(tmp_path):
    hf_folder(tmp_path)
    found = problems(minimal(model={"hf": "gpt2-tiny", "name": "resnet18"}), tmp_path)
    assert "exactly one of 'name'" in found["model"] and "'hf'" in found["model"]
    found = problems(minimal(model={"name": "resnet18", "hf_class": "AutoModel"}), tmp_path)
    assert found == {"model.hf_class": "only used with 'hf' (a Hugging Face model folder)"}
    found = problems(minimal(model={"hf": "gpt2-tiny", "hf_class": "Auto Model"}), tmp_path)
    assert "expected a transformers class name" in found["model.hf_class"]
    found = problems(minimal(model={"hf": "gpt2-tiny", "hf_klass": "AutoModel"}), tmp_path)
    assert "did you mean 'hf_class'" in found["model.hf_klass"]


def test_hf_folder_problems_say_what_is_wrong(tmp_path):
    # a hub id: bscrit downloads nothing and says how to get a local copy
    found = problems(minimal(model={"hf": "openai-community/gpt2"}), tmp_path)
    assert (
        "folder not found" in found["model.hf"] and "huggingface-cli download" in found["model.hf"]
    )
    # a relative path that is clearly local: no download advice
    found = problems(minimal(model={"hf": "./runs/nope"}), tmp_path)
    assert "folder not found" in found["model.hf"] and "download" not in found["model.hf"]
    (tmp_path / "file.json").write_text("{}")
    found = problems(minimal(model={"hf": "file.json"}), tmp_path)
    assert "is a file; expected the folder save_pretrained writes" in found["model.hf"]
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "model.safetensors").write_bytes(b"x")
    found = problems(minimal(model={"hf": "empty"}), tmp_path)
    assert "has no config.json" in found["model.hf"] and "model.safetensors" in found["model.hf"]
    found = problems(minimal(model={"hf": 3}), tmp_path)
    assert "a local Hugging Face model folder" in found["model.hf"]
