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
