"""Checkpoints: a file read safely, its weights loaded into the spec's model, its optimizer.

Checkpoints are read with ``torch.load(weights_only=True)`` unless the user opts in to
``unsafe=True`` (the CLI's ``--unsafe-load``), which unpickles arbitrary Python objects and so can
execute code from the file. Common layouts are recognised: a plain state_dict, wrappers
(``state_dict``, ``model``, ``model_state_dict``, ``module``, ``net``), Lightning checkpoints
(``state_dict`` with a ``model.`` prefix) and, unsafe only, a pickled ``nn.Module``. An optimizer
state saved next to the weights gives the run's hyperparameters (:class:`OptimizerInfo`).

A file that cannot be read or does not fit the model is a :class:`CheckpointError` with a
one-line cause. What a file is, without torch, is :mod:`bscrit.checkpoint_file`.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from . import checkpoint_file, optim
from .errors import CheckpointError
from .loading import build_model, one_line
from .optim import OptimizerInfo
from .spec import Spec

# Wrapper keys under which training scripts commonly store the model's state_dict, in order.
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network")
# Prefixes added by DataParallel/DDP (``module.``), Lightning (``model.``), torch.compile.
AUTO_PREFIXES = ("module.", "model.", "_orig_mod.")


@dataclass
class LoadedCheckpoint:
    """What a checkpoint file held: the model's state_dict and, if saved, the optimizer's."""

    state_dict: dict[str, Tensor]
    optimizer: OptimizerInfo | None  # source="checkpoint"
    path: Path
    optimizer_state: Mapping | None = None  # the saved optimizer state_dict, as saved
    optimizer_note: str | None = None  # why no optimizer was read, or a disagreement (a warning)


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) for k in obj)
        and all(isinstance(v, Tensor) for v in obj.values())
    )


def _find_state_dict(obj: Any, depth: int = 0) -> dict[str, Tensor] | None:
    if isinstance(obj, nn.Module):
        return dict(obj.state_dict())
    if _is_state_dict(obj):
        return dict(obj)
    if not isinstance(obj, Mapping) or depth > 2:
        return None
    for k in STATE_DICT_KEYS:
        if k in obj:
            found = _find_state_dict(obj[k], depth + 1)
            if found is not None:
                return found
    return None


def _describe_keys(obj: Any) -> str:
    if isinstance(obj, Mapping):
        keys = [str(k) for k in list(obj)[:10]]
        more = f", ... ({len(obj)} keys)" if len(obj) > 10 else ""
        return f"top-level keys: {', '.join(keys)}{more}"
    return f"it holds a {type(obj).__name__}"


def load_checkpoint(
    path: Path | str, *, key: str | None = None, unsafe: bool = False
) -> LoadedCheckpoint:
    """Read a checkpoint file (read-only) into a state_dict and, if present, optimizer info.

    Args:
        path: the file.
        key: explicit key of the state_dict inside the file (dotted for nesting, ``"ema.model"``).
        unsafe: ``torch.load(weights_only=False)``: unpickles arbitrary objects, which can
            execute code from the file. Only for trusted files (CLI ``--unsafe-load``).

    Raises:
        CheckpointError: missing, corrupt, holds pickled objects (without ``unsafe``), or no
            state_dict found.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder; expected a file saved by torch.save")
    problem = checkpoint_file.file_problem(path)
    if problem is not None:
        raise CheckpointError(f"cannot read checkpoint {path}: {problem}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not unsafe)
    except Exception as e:
        msg = str(e)
        if not unsafe and re.search(r"unsupported (global|class)|TorchScript", msg, re.I):
            refused = checkpoint_file.refusal(path, msg, key, STATE_DICT_KEYS)
            raise CheckpointError(refused, unsafe_load="unsafe_load") from None
        if unsafe and isinstance(e, (AttributeError, ImportError)):  # a pickled class
            raise CheckpointError(
                f"checkpoint {path} holds a pickled object whose class cannot be imported "
                f"({one_line(e)}): a model saved whole with torch.save(model) needs its class "
                "importable (its module beside the spec); or save model.state_dict() instead"
            ) from None
        # torch's own reason, without its advice about weights_only
        msg = msg.rpartition("WeightsUnpickler error:")[2].split("Check the documentation")[0]
        msg = re.sub(r"In PyTorch 2\.6, we changed.*?trusted source\.", "", msg, flags=re.S)
        raise CheckpointError(
            f"cannot read checkpoint {path}: not a PyTorch checkpoint or corrupted "
            f"({type(e).__name__}: {' '.join(msg.split())[:300]})"
        ) from None
    root = obj
    if key is not None:
        for part in key.split("."):
            if isinstance(obj, Mapping) and part in obj:
                obj = obj[part]
            else:
                raise CheckpointError(
                    f"checkpoint {path} has no key {key!r}; {_describe_keys(root)}"
                )
    state_dict = _find_state_dict(obj)
    if state_dict is None:
        found = checkpoint_file.key_paths(
            obj, lambda x: isinstance(x, nn.Module) or _is_state_dict(x)
        )
        where = f"weights are at {' and '.join(repr(p) for p, _ in found)}: " if found else ""
        raise CheckpointError(
            f"no state_dict found in checkpoint {path} ({_describe_keys(obj)}); "
            f"{where}name it with checkpoint.key in the spec"
        )
    reading = optim.read_checkpoint(root)
    return LoadedCheckpoint(
        state_dict=state_dict,
        optimizer=reading.info,
        path=path,
        optimizer_state=optim.optimizer_state(root),
        optimizer_note=reading.note,
    )


def _strip(sd: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in sd.items()}


def _auto_strip(sd: dict[str, Tensor], model_keys: set[str]) -> dict[str, Tensor]:
    """Strip ``module.``/``model.``/``_orig_mod.`` when no key matches the model as is."""
    for _ in range(len(AUTO_PREFIXES) * 2):  # e.g. "_orig_mod.module." takes two rounds
        if not sd or set(sd) & model_keys:
            return sd
        for p in AUTO_PREFIXES:
            with_p = {k[len(p) :]: v for k, v in sd.items() if k.startswith(p)}
            if len(with_p) == len(sd):
                sd = with_p
                break
            if with_p and set(with_p) == model_keys:  # Lightning module with extra submodules
                sd = with_p
                break
        else:
            return sd
    return sd


def load_model(
    spec: Spec, checkpoint: Path | str | None = None, *, unsafe: bool = False
) -> tuple[nn.Module, LoadedCheckpoint]:
    """Build the spec's model and load the checkpoint's weights into it (strict).

    Args:
        spec: the spec.
        checkpoint: overrides the spec's checkpoint (CLI ``--checkpoint``); else the spec's first
            ``checkpoint.path``.
        unsafe: see :func:`load_checkpoint`.

    Returns:
        The model on CPU, and the checkpoint (its ``state_dict`` after prefix stripping).

    Raises:
        CheckpointError: no checkpoint given, unreadable, or keys / shapes do not match the model
            (counts, first 5 missing and unexpected keys, shape mismatches).
        SpecError: the model cannot be built.
    """
    if checkpoint is None:
        if not spec.checkpoint.paths:
            raise CheckpointError(
                "no checkpoint: give {checkpoint} or checkpoint.path in the spec",
                checkpoint="checkpoint",
            )
        checkpoint = spec.checkpoint.paths[0]
    model = build_model(spec)
    # A pickled nn.Module (unsafe only) names its class's module: let it import from the
    # spec's folder, as the factories do.
    folder = str(spec.base_dir)
    if unsafe:
        sys.path.insert(0, folder)
    try:
        ckpt = load_checkpoint(checkpoint, key=spec.checkpoint.key, unsafe=unsafe)
    finally:
        if unsafe and folder in sys.path:
            sys.path.remove(folder)
    expected = model.state_dict()
    sd = ckpt.state_dict
    if spec.checkpoint.strip_prefix:
        for p in spec.checkpoint.strip_prefix:
            sd = _strip(sd, p)
    else:
        sd = _auto_strip(sd, set(expected))
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    shapes = [
        (k, tuple(sd[k].shape), tuple(v.shape))
        for k, v in expected.items()
        if k in sd and isinstance(v, Tensor) and tuple(sd[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        lines = [f"checkpoint {ckpt.path} does not fit the model:"]
        if missing:
            more = ", ..." if len(missing) > 5 else ""
            lines.append(f"  {len(missing)} missing key(s): {', '.join(missing[:5])}{more}")
        if unexpected:
            more = ", ..." if len(unexpected) > 5 else ""
            lines.append(
                f"  {len(unexpected)} unexpected key(s): {', '.join(unexpected[:5])}{more}"
            )
        for k, got, want in shapes[:5]:
            lines.append(f"  shape mismatch {k}: checkpoint {list(got)}, model {list(want)}")
        if len(shapes) > 5:
            lines.append(f"  ... {len(shapes) - 5} more shape mismatch(es)")
        if missing and unexpected:
            lines.append("  (a key prefix? set checkpoint.strip_prefix in the spec)")
        raise CheckpointError("\n".join(lines))
    try:
        model.load_state_dict(sd, strict=True)
    except Exception as e:
        raise CheckpointError(f"cannot load checkpoint {ckpt.path}: {one_line(e)}") from None
    ckpt.state_dict = sd
    return model.cpu(), ckpt


def resolve_optimizer(
    spec: Spec, ckpt: LoadedCheckpoint | None
) -> tuple[OptimizerInfo | None, list[str]]:
    """The optimizer of the base run, and warnings about it.

    The spec's ``optimizer:`` when it gives the hyperparameters; the checkpoint's optimizer state
    when the spec gives only ``optimizer.name`` (which settles a state that cannot tell Adam,
    AdamW and RAdam apart; every param group is read) or nothing; else None. Warnings: why the
    checkpoint's optimizer could not be named, or a spec that names another optimizer than the
    state is.

    Raises:
        CheckpointError: the spec gives only ``optimizer.name`` and the checkpoint holds no
            optimizer state to read the rest from.
    """
    s = spec.optimizer
    state = ckpt.optimizer_state if ckpt is not None else None
    if s is not None and s.source == optim.NAME_ONLY:
        if state is None:
            where = f"checkpoint {ckpt.path}" if ckpt is not None else "no checkpoint"
            raise CheckpointError(
                f"{spec.path}: optimizer gives only name: {s.name}, and {where} holds no "
                "optimizer state to read its hyperparameters from: give optimizer.lr (and the "
                "others) in the spec"
            )
        reading = optim.read_state(state, name=s.name)
        return reading.info, [reading.note] if reading.note else []
    if s is not None:
        notes = []
        if state is not None:
            groups = optim.read_state(state, name=s.name).info
            reading = optim.read_state(state)
            cands = reading.identification.candidates if reading.identification else ()
            if cands and s.name not in cands:
                notes.append(f"the spec names {s.name}, but the checkpoint's optimizer state "
                             f"looks like {' or '.join(cands)}'s; using the spec's")  # fmt: skip
            if groups is not None and optim.group_optimizers(groups):
                notes.append(
                    f"the spec's optimizer replaces the checkpoint's {len(groups.groups)} param "
                    "groups, whose values differ; give only optimizer.name in the spec to use "
                    "them (scaled per group)"
                )
        return s, notes
    if ckpt is None:
        return None, []
    return ckpt.optimizer, [ckpt.optimizer_note] if ckpt.optimizer_note else []


def optimizer_for(spec: Spec, ckpt: LoadedCheckpoint | None) -> OptimizerInfo | None:
    """The optimizer of the base run (:func:`resolve_optimizer` without its warnings)."""
    return resolve_optimizer(spec, ckpt)[0]
