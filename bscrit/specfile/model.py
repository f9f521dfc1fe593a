"""The spec's ``model`` section for a Hugging Face folder (pure: no torch, no transformers).

``model: {hf: path/to/folder, hf_class: AutoModelForCausalLM}`` names a local folder written by
``save_pretrained`` (a ``config.json``, and usually the weights). The folder is resolved against
the spec's folder and checked here; :mod:`bscrit.load.hf` builds the model from its config (random
init), and the checkpoint's weights are then loaded into it like any model's. Without
``checkpoint.path``, a folder that holds weights is the checkpoint itself
(:func:`default_checkpoint`). bscrit never downloads: a hub id such as ``gpt2`` is refused with
the way to get a local copy.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from bscrit.checker import Checker
from bscrit.load import checkpoint_file
from bscrit.specfile.references import user_path

#: The hint every "transformers is missing" message carries.
HF_INSTALL = "pip install 'bscrit[hf]'"


@dataclass(frozen=True)
class ModelSpec:
    """A torchvision model ``name``, a ``factory`` reference (called with ``kwargs``), or a
    Hugging Face folder ``hf`` (absolute; ``kwargs`` override its config's values) with an
    optional ``hf_class`` (an Auto class or a model class of ``transformers``)."""

    name: str | None
    factory: str | None
    kwargs: dict = field(default_factory=dict)
    hf: Path | None = None
    hf_class: str | None = None

    @property
    def label(self) -> str | None:
        """How measurement artifacts name the model: the torchvision name, the factory, or
        ``hf:<folder>`` (with the class when ``hf_class`` names one)."""
        if self.hf is not None:
            return f"hf:{self.hf}" + (f" ({self.hf_class})" if self.hf_class else "")
        return self.name or self.factory


def parse_hf(c: Checker, d: dict, base_dir: Path, kwargs: dict) -> ModelSpec | None:
    """``model.hf`` (+ ``model.hf_class``) → ModelSpec; problems go to ``c`` with key paths."""
    raw = c.string(d["hf"], "model.hf", "a local Hugging Face model folder (with config.json)")
    hf_class = None
    if d.get("hf_class") is not None:
        hf_class = c.string(d["hf_class"], "model.hf_class", "a transformers class name")
        if hf_class is not None and not hf_class.strip().isidentifier():
            c.add(
                "model.hf_class",
                f"expected a transformers class name such as AutoModelForCausalLM or "
                f"GPT2LMHeadModel, got {hf_class!r}",
            )
            hf_class = None
        elif hf_class is not None:
            hf_class = hf_class.strip()
    if raw is None:
        return None
    if "\0" in raw:
        c.add("model.hf", "a folder cannot hold a NUL character (\\0)")
        return None
    p = user_path(raw)
    folder = (p if p.is_absolute() else base_dir / p).resolve()
    if not folder.exists():
        hub_id = not p.is_absolute() and len(p.parts) <= 2 and not raw.startswith(".")
        hint = (
            " (bscrit reads local folders only and downloads nothing: save the model with "
            "save_pretrained, or download it with `huggingface-cli download ID --local-dir DIR`, "
            "and give that folder)"
            if hub_id
            else ""
        )
        c.add("model.hf", f"folder not found: {folder}{hint}")
        return None
    if not folder.is_dir():
        c.add("model.hf", f"{folder} is a file; expected the folder save_pretrained writes")
        return None
    if not (folder / "config.json").is_file():
        c.add(
            "model.hf",
            f"{folder} has no config.json (a Hugging Face model folder, as save_pretrained "
            f"writes it, holds one; {checkpoint_file.listing(folder)})",
        )
        return None
    return ModelSpec(name=None, factory=None, kwargs=kwargs, hf=folder, hf_class=hf_class)


C = TypeVar("C")


def default_checkpoint(model: ModelSpec | None, checkpoint: C) -> C:
    """The spec's checkpoint section, with the HF folder as its path when no path is given and
    the folder holds weights (``model.safetensors``, ``pytorch_model.bin`` or sharded)."""
    paths: Any = getattr(checkpoint, "paths", None)
    if model is None or model.hf is None or checkpoint is None or paths:
        return checkpoint
    if checkpoint_file.folder_weights(model.hf) is None:
        return checkpoint
    return dataclasses.replace(checkpoint, paths=(model.hf,))  # type: ignore[type-var]
