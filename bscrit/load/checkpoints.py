"""Checkpoints: a file read safely, its weights loaded into the spec's model, its optimizer.

Checkpoints are read with ``torch.load(weights_only=True)`` unless the user opts in to
``unsafe=True`` (the CLI's ``--unsafe-load``), which unpickles arbitrary Python objects and so can
execute code from the file. Common layouts are recognised: a plain state_dict, wrappers
(``state_dict``, ``model``, ``model_state_dict``, ``module``, ``net``), Lightning checkpoints
(``state_dict`` with a ``model.`` prefix, or any one prefix that makes the keys fit) and, unsafe
only, a pickled ``nn.Module``. An optimizer state saved next to the weights gives the run's
hyperparameters (:class:`OptimizerInfo`), a ``global_step``/``step`` the training step.

Hugging Face forms are read too (safetensors needs no pickle at all): a ``*.safetensors`` file, a
folder with ``model.safetensors`` or ``pytorch_model.bin`` or a sharded ``*.index.json``, and an
HF Trainer ``checkpoint-N/`` folder, whose ``optimizer.pt`` is the optimizer state and whose
``trainer_state.json`` gives the step; its ``training_args.bin`` (a pickle) is read only with
``unsafe=True``, for the optimizer's name. Weights tied in the model (GPT-2's ``lm_head.weight``
is ``transformer.wte.weight``) are saved once; a missing key whose model tensor is the same memory
as a present key's is filled from it.

A ``torch.distributed.checkpoint`` folder (a ``.metadata`` file: torchtitan, OLMo-core,
``dcp.save``) is read whole in one process by :mod:`bscrit.load.dcp`, weights-only too; its
optimizer state, keyed by parameter name, is turned into the index form the rest of bscrit reads
(:func:`bscrit.optim.state.indexed`).

A file that cannot be read or does not fit the model is a :class:`CheckpointError` with a
one-line cause. What a file is, without torch, is :mod:`bscrit.load.checkpoint_file`.
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

from bscrit.errors import CheckpointError, first_line
from bscrit.load import checkpoint_file
from bscrit.load.factories import build_model, one_line
from bscrit.load.keys import match_keys
from bscrit.load.scheduler import read_folder_schedule, read_object_schedule
from bscrit.optim import saved
from bscrit.optim.registry import OptimizerInfo
from bscrit.optim.state import indexed
from bscrit.specfile.document import Spec
from bscrit.specfile.model import HF_INSTALL

# Wrapper keys under which training scripts commonly store the model's state_dict, in order.
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network")


@dataclass
class LoadedCheckpoint:
    """What a checkpoint file held: the model's state_dict and, if saved, the optimizer's."""

    state_dict: dict[str, Tensor]
    optimizer: OptimizerInfo | None  # source="checkpoint"
    path: Path
    optimizer_state: Mapping | None = None  # the saved optimizer state_dict, as saved
    step: int | None = None  # the training step it was saved at, when recorded
    optimizer_note: str | None = None  # why no optimizer was read, or a disagreement (a warning)
    schedule: Mapping[str, Any] | None = None  # the run's LR schedule (bscrit.optim.lr_schedule)
    schedule_note: str | None = None  # what of the scheduler could not be read (a warning)


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


def _torch_load(
    path: Path, *, unsafe: bool, key: str | None = None, what: str = "checkpoint",
    mmap: bool = False,
):  # fmt: skip
    """``torch.load`` with bscrit's messages: not a torch file, pickled objects, damage.
    ``mmap``: the tensors map the file (a sharded run reads only its rows; a legacy-format
    file, which cannot be mapped, is read whole)."""
    problem = checkpoint_file.file_problem(path)
    if problem is not None:
        raise CheckpointError(f"cannot read {what} {path}: {problem}")
    try:
        if mmap:
            try:
                return torch.load(path, map_location="cpu", weights_only=not unsafe, mmap=True)
            except RuntimeError as e:  # not the zip format: read whole below
                if "mmap" not in str(e):
                    raise
        return torch.load(path, map_location="cpu", weights_only=not unsafe)
    except Exception as e:
        msg = str(e)
        if not unsafe and re.search(r"unsupported (global|class)|TorchScript", msg, re.I):
            refused = checkpoint_file.refusal(path, msg, key, STATE_DICT_KEYS)
            raise CheckpointError(refused, unsafe_load="unsafe_load") from None
        if unsafe and isinstance(e, (AttributeError, ImportError)):  # a pickled class
            raise CheckpointError(
                f"{what} {path} holds a pickled object whose class cannot be imported "
                f"({one_line(e)}): a model saved whole with torch.save(model) needs its class "
                "importable (its module beside the spec); or save model.state_dict() instead"
            ) from None
        # torch's own reason, without its advice about weights_only
        msg = msg.rpartition("WeightsUnpickler error:")[2].split("Check the documentation")[0]
        msg = re.sub(r"In PyTorch 2\.6, we changed.*?trusted source\.", "", msg, flags=re.S)
        raise CheckpointError(
            f"cannot read {what} {path}: not a PyTorch checkpoint or corrupted "
            f"({type(e).__name__}: {' '.join(msg.split())[:300]})"
        ) from None


def _read_safetensors(path: Path, lazy: bool = False) -> dict[str, Any]:
    """The tensors of a safetensors file; ``lazy``: :class:`~bscrit.load.lazy_tensors.Entry`
    handles instead (names and shapes from the header, rows read on demand)."""
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise CheckpointError(
            f"checkpoint {path} is a safetensors file; reading it needs the safetensors "
            f"package: {HF_INSTALL}"
        ) from None
    try:
        if lazy:
            from bscrit.load.lazy_tensors import entries

            return entries(path)
        return dict(load_file(str(path), device="cpu"))
    except Exception as e:
        raise CheckpointError(
            f"cannot read checkpoint {path}: a damaged safetensors file ({one_line(e)})"
        ) from None


def _read_weights(
    layout: checkpoint_file.Layout, *, unsafe: bool, lazy: bool = False
) -> dict[str, Tensor]:
    """A weights-only file: ``*.safetensors``, a sharded ``*.index.json`` (every shard), or a
    ``pytorch_model.bin`` (a torch.save'd state_dict); ``lazy``: safetensors tensors as
    handles that read rows on demand (a sharded measurement)."""
    path = Path(layout.path)
    if layout.kind == "index":
        shards = layout.shards or {}
        sd: dict[str, Tensor] = {}
        for part in layout.parts:
            sd.update(_read_weights(part, unsafe=unsafe, lazy=lazy))
        absent = [k for k in shards if k not in sd]
        if absent:
            more = ", ..." if len(absent) > 3 else ""
            raise CheckpointError(
                f"the shard index {path} names {len(absent)} tensor(s) its shards do not hold: "
                f"{', '.join(absent[:3])}{more}"
            )
        return sd
    if layout.kind == "safetensors":
        return _read_safetensors(path, lazy)
    obj = _torch_load(path, unsafe=unsafe, mmap=lazy)
    sd = _find_state_dict(obj)
    if sd is None:
        keys = checkpoint_file.describe_keys(obj)
        raise CheckpointError(f"no state_dict found in {path} ({keys})")
    return sd


def _no_key(path: Path, key: str | None, what: str) -> None:
    if key is not None:
        raise CheckpointError(
            f"checkpoint {path} is {what}, whose tensors are named at the top level: "
            f"checkpoint.key ({key!r}) applies to torch.save files only; remove it"
        )


def trainer_optimizer_name(path: Any) -> str | None:
    """``optim`` of an HF Trainer's ``training_args.bin`` (e.g. ``"adamw_torch"``).

    The file is a pickle of ``TrainingArguments``: only read when the user passed
    ``--unsafe-load`` (the caller checks), and it needs transformers to unpickle.

    Raises:
        CheckpointError: the file cannot be unpickled (transformers missing: the install command).
    """
    try:
        args = torch.load(path, map_location="cpu", weights_only=False)
    except ImportError as e:
        raise CheckpointError(
            f"cannot read {path}: it is a pickle of transformers' TrainingArguments and "
            f"transformers is not installed ({first_line(e)}): {HF_INSTALL}"
        ) from None
    except Exception as e:
        raise CheckpointError(f"cannot read {path}: {first_line(e)}") from None
    value = getattr(args, "optim", None)
    value = getattr(value, "value", value)  # an OptimizerNames enum
    return value if isinstance(value, str) and value else None


def _load_folder(
    layout: checkpoint_file.Layout, *, key: str | None, unsafe: bool, lazy: bool = False
) -> LoadedCheckpoint:
    """A Hugging Face folder (``save_pretrained``) or an HF Trainer ``checkpoint-N/`` folder."""
    folder = Path(layout.path)
    if layout.weights is None:
        runs = sorted(
            (p for p in folder.glob("checkpoint-*") if p.is_dir() and p.name[11:].isdigit()),
            key=lambda p: int(p.name[11:]),
        )
        hint = (
            f"; an HF Trainer output folder: give one checkpoint, e.g. {runs[-1]}" if runs else ""
        )
        raise CheckpointError(
            f"checkpoint {folder}: no model weights in this folder (expected "
            f"{', '.join(checkpoint_file.WEIGHT_FILES)}; {checkpoint_file.listing(folder)}){hint}"
        )
    _no_key(folder, key, "a Hugging Face folder")
    sd = _read_weights(layout.weights, unsafe=unsafe, lazy=lazy)
    root: dict[str, Any] = {}
    if layout.optimizer_file is not None:
        opt_file = Path(layout.optimizer_file)
        state = _torch_load(opt_file, unsafe=unsafe, what="the optimizer state", mmap=lazy)
        if not (isinstance(state, Mapping) and "param_groups" in state):
            raise CheckpointError(
                f"{opt_file} holds no optimizer state_dict (no 'param_groups'; "
                f"{checkpoint_file.describe_keys(state)})"
            )
        root["optimizer"] = state
    args_file = layout.args_file
    if unsafe and args_file is not None:  # a pickle: the optimizer's name (optim="adamw_torch")
        name = trainer_optimizer_name(Path(args_file))
        if name is not None:
            root["optim"] = name  # read by saved.name_from_param_group as a context
    reading = saved.read_checkpoint(root)
    note = reading.note
    if note and reading.info is None and not unsafe and args_file is not None:
        note += (
            f" ({checkpoint_file.TRAINER_ARGS} names it but is a pickle,"
            f" read only with --unsafe-load)"
        )
    opt_state = saved.optimizer_state(root)
    sched = read_folder_schedule(str(folder), opt_state, layout.step)
    return LoadedCheckpoint(
        state_dict=sd,
        optimizer=reading.info,
        path=folder,
        optimizer_state=opt_state,
        step=layout.step,
        optimizer_note=note,
        schedule=sched.schedule,
        schedule_note=sched.note,
    )


def _load_dcp(path: Path) -> LoadedCheckpoint:
    """A ``torch.distributed.checkpoint`` folder (:mod:`bscrit.load.dcp`): its optimizer state,
    keyed by parameter name, is turned into PyTorch's index form."""
    from bscrit.load import dcp

    sd, opt_by_name, step = dcp.read_folder(path)
    opt_state = indexed(opt_by_name)
    return _from_root(sd, path, {"optimizer": opt_state} if opt_state is not None else {}, step)


def _from_root(
    state_dict: dict[str, Tensor], path: Path, root: Any, step: int | None
) -> LoadedCheckpoint:
    """The checkpoint whose optimizer state and scheduler are read from the loaded ``root``
    (a ``torch.save`` dict, or a DCP folder's optimizer state in index form)."""
    reading = saved.read_checkpoint(root)
    opt_state = indexed(saved.optimizer_state(root))
    sched = read_object_schedule(root, opt_state)
    return LoadedCheckpoint(
        state_dict=state_dict,
        optimizer=reading.info,
        path=path,
        optimizer_state=opt_state,
        step=step,
        optimizer_note=reading.note,
        schedule=sched.schedule,
        schedule_note=sched.note,
    )


def load_checkpoint(
    path: Path | str, *, key: str | None = None, unsafe: bool = False, lazy: bool = False
) -> LoadedCheckpoint:
    """Read a checkpoint (read-only) into a state_dict and, if present, optimizer info and step.

    Args:
        path: a ``torch.save`` file, a ``*.safetensors`` file, a sharded ``*.index.json``, or a
            folder: Hugging Face (``model.safetensors``, ``pytorch_model.bin`` or sharded) or an
            HF Trainer ``checkpoint-N/`` (weights, ``optimizer.pt``, ``trainer_state.json``).
        key: explicit key of the state_dict inside a torch.save file (dotted for nesting,
            ``"ema.model"``).
        unsafe: ``torch.load(weights_only=False)``: unpickles arbitrary objects, which can
            execute code from the file. Only for trusted files (CLI ``--unsafe-load``). For a
            Trainer folder it also reads ``training_args.bin`` (the optimizer's name).
        lazy: safetensors weights as handles that read rows on demand
            (:mod:`bscrit.load.lazy_tensors`: each rank of a sharded run reads its own).

    Raises:
        CheckpointError: missing, corrupt, holds pickled objects (without ``unsafe``), no
            state_dict found, a folder without weights, a shard missing.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    layout = checkpoint_file.layout(path)
    if layout.kind == "dcp":
        _no_key(path, key, "a torch.distributed.checkpoint folder")
        return _load_dcp(path)
    if layout.kind == "folder":
        return _load_folder(layout, key=key, unsafe=unsafe, lazy=lazy)
    if layout.kind in ("index", "safetensors"):
        _no_key(path, key, "a sharded index" if layout.kind == "index" else "a safetensors file")
        return LoadedCheckpoint(_read_weights(layout, unsafe=unsafe, lazy=lazy), None, path)
    obj = _torch_load(path, unsafe=unsafe, key=key, mmap=lazy)
    root = obj
    if key is not None:
        for part in key.split("."):
            if isinstance(obj, Mapping) and part in obj:
                obj = obj[part]
            else:
                raise CheckpointError(
                    f"checkpoint {path} has no key {key!r}; {checkpoint_file.describe_keys(root)}"
                )
    state_dict = _find_state_dict(obj)
    if state_dict is None:
        found = checkpoint_file.key_paths(
            obj, lambda x: isinstance(x, nn.Module) or _is_state_dict(x)
        )
        where = f"weights are at {' and '.join(repr(p) for p, _ in found)}: " if found else ""
        raise CheckpointError(
            f"no state_dict found in checkpoint {path} ({checkpoint_file.describe_keys(obj)}); "
            f"{where}name it with checkpoint.key in the spec"
        )
    return _from_root(state_dict, path, root, checkpoint_file.step_of(root))


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
        The model on CPU, and the checkpoint (its ``state_dict`` after prefix stripping, with
        the keys of tied weights filled in).

    Raises:
        CheckpointError: no checkpoint given, unreadable, keys / shapes do not match the model
            (counts, first 5 missing and unexpected keys, shape mismatches), or the keys fit
            under more than one prefix.
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
    sd = match_keys(ckpt.state_dict, model, spec.checkpoint.strip_prefix, ckpt.path)
    try:
        model.load_state_dict(sd, strict=True)
    except Exception as e:
        raise CheckpointError(f"cannot load checkpoint {ckpt.path}: {one_line(e)}") from None
    ckpt.state_dict = sd
    return model.cpu(), ckpt
