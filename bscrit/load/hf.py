"""Hugging Face models: ``model: {hf: folder}`` built from its config, transformers imported lazily.

``transformers`` is an optional extra (``pip install 'bscrit[hf]'``); without it a spec that
names an ``hf`` folder stops with that command (exit 2), and nothing else in bscrit needs it.
The model is built from the folder's ``config.json`` (random init, offline: ``local_files_only``);
its class is ``model.hf_class`` when given (an Auto class such as ``AutoModelForCausalLM``, built
with ``from_config``, or a model class such as ``GPT2LMHeadModel``), else the config's
``architectures``; always in float32 (:data:`FLOAT`). The weights come from the checkpoint,
loaded by :mod:`bscrit.load.checkpoints` like any model's (tied weights such as GPT-2's
``lm_head.weight`` included).
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bscrit.errors import SpecError, SpecProblem, first_line
from bscrit.specfile.model import HF_INSTALL, ModelSpec

#: The dtype models are built in, whatever the config names: a bf16 checkpoint's weights are
#: upcast exactly on loading, and gradients are computed in float32.
FLOAT = torch.float32


def require_transformers(source: str, key: str = "model.hf") -> Any:
    """The ``transformers`` module, or a SpecError naming ``pip install 'bscrit[hf]'``."""
    try:
        import transformers
    except ImportError as e:
        why = "not installed" if e.name == "transformers" else f"broken ({first_line(e)})"
        raise SpecError(
            source,
            [
                SpecProblem(
                    key,
                    f"a Hugging Face model needs the transformers package, which is {why}: "
                    f"{HF_INSTALL}",
                )
            ],
        ) from None
    return transformers


def _problem(source: str, key: str, message: str) -> SpecError:
    return SpecError(source, [SpecProblem(key, message)])


def _model_class(transformers: Any, name: str, source: str, key: str) -> Any:
    try:
        cls = getattr(transformers, name)
    except Exception:  # transformers' lazy module raises for a name it cannot import
        cls = None
    if cls is None or not isinstance(cls, type):
        names = [n for n in dir(transformers) if n.startswith("Auto") or n.endswith("Model")]
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise _problem(source, key, f"transformers has no model class {name!r}{hint}")
    return cls


def build_hf_model(m: ModelSpec, source: str) -> nn.Module:
    """The model of a Hugging Face folder, built from its config with random weights.

    Args:
        m: the spec's model section (``m.hf`` set).
        source: the spec, named in errors.

    Raises:
        SpecError: transformers missing (with the install command), the config unreadable, no
            class to build (no ``architectures`` and no ``hf_class``), an unknown class, or the
            constructor failed.
    """
    assert m.hf is not None
    transformers = require_transformers(source)
    try:
        config = transformers.AutoConfig.from_pretrained(
            str(m.hf), local_files_only=True, **m.kwargs
        )
    except Exception as e:
        raise _problem(
            source, "model.hf", f"cannot read {m.hf / 'config.json'}: {first_line(e)}"
        ) from None
    if m.hf_class is not None:
        name, key = m.hf_class, "model.hf_class"
    else:
        archs = getattr(config, "architectures", None) or []
        if not archs:
            raise _problem(
                source,
                "model.hf",
                f"{m.hf / 'config.json'} names no architectures; set model.hf_class "
                "(e.g. AutoModelForCausalLM)",
            )
        name, key = str(archs[0]), "model.hf"
    cls = _model_class(transformers, name, source, key)
    try:
        if name.startswith("Auto"):  # from_config takes the config's dtype (bf16...) unless told
            major = int(str(transformers.__version__).split(".")[0])
            model = cls.from_config(config, **{"dtype" if major >= 5 else "torch_dtype": FLOAT})
        else:
            model = cls(config)  # torch's default dtype
    except Exception as e:
        raise _problem(
            source, key, f"cannot build {name} from {m.hf / 'config.json'}: {first_line(e)}"
        ) from None
    if not isinstance(model, nn.Module):
        raise _problem(source, key, f"{name} built a {type(model).__name__}, not an nn.Module")
    return model


# ----------------------------------------------------------------------------------------------
# trainer_state.json: the batch of the run (read as JSON: no transformers, no pickle)
# ----------------------------------------------------------------------------------------------

#: The examples per optimizer step that ``epoch`` and ``global_step`` imply may differ from B by
#: this factor before a warning (epoch boundaries and a last short batch move it a little).
BATCH_TOLERANCE = 1.25


def _number(raw: Mapping[str, Any], key: str) -> float | None:
    v = raw.get(key)
    ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v > 0
    return float(v) if ok else None


def trainer_batch_warning(
    folder: Path, batch_size: int, dataset_size: int | None, key: str = "batch_size"
) -> str | None:
    """A warning when an HF Trainer folder's ``trainer_state.json`` disagrees with the batch
    size B that the measurement takes for the run's (``key`` names where B came from).

    The Trainer records ``train_batch_size``, the batch *per device*; the batch of one optimizer
    step is that × ``gradient_accumulation_steps`` × devices, which it does not record. Its
    ``epoch`` (fractional) and ``global_step`` do: ``dataset_size × epoch / global_step``
    examples per step (given ``dataset_size``, the spec's whole training set). A warning when
    that differs from B by more than :data:`BATCH_TOLERANCE`, else when B is not a multiple of
    ``train_batch_size``; None when the file is missing or unreadable, or both agree.
    """
    try:
        raw = json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(raw, Mapping):
        return None
    per_device, step, epoch = (
        _number(raw, k) for k in ("train_batch_size", "global_step", "epoch")
    )
    where = f"{folder / 'trainer_state.json'}"
    device = f"train_batch_size = {per_device:g} per device" if per_device else None
    rule = "B is the batch of one optimizer step: per device × gradient accumulation × devices"
    if step and epoch and dataset_size:
        per_step = dataset_size * epoch / step
        if not 1 / BATCH_TOLERANCE <= per_step / batch_size <= BATCH_TOLERANCE:
            said = f" and {device}" if device else ""
            return (
                f"{key} = {batch_size}, but {where} records epoch {epoch:.4g} at step {step:g}"
                f"{said}: about {per_step:,.0f} examples per optimizer step over the spec's "
                f"{dataset_size:,} training examples; {rule}"
            )
        return None
    if per_device and batch_size % per_device:
        return f"{key} = {batch_size} is not a multiple of {where}'s {device}; {rule}"
    return None
