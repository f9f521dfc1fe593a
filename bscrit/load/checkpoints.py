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

from bscrit.errors import CheckpointError
from bscrit.load import checkpoint_file
from bscrit.load.factories import build_model, one_line
from bscrit.load.hf import trainer_optimizer_name
from bscrit.optim import registry as optim
from bscrit.optim.registry import OptimizerInfo
from bscrit.spec.document import Spec
from bscrit.spec.model import HF_INSTALL

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
    step: int | None = None  # the training step it was saved at, when recorded
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


def _torch_load(path: Path, *, unsafe: bool, key: str | None = None, what: str = "checkpoint"):
    """``torch.load`` with bscrit's messages: not a torch file, pickled objects, damage."""
    problem = checkpoint_file.file_problem(path)
    if problem is not None:
        raise CheckpointError(f"cannot read {what} {path}: {problem}")
    try:
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


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise CheckpointError(
            f"checkpoint {path} is a safetensors file; reading it needs the safetensors "
            f"package: {HF_INSTALL}"
        ) from None
    try:
        return dict(load_file(str(path), device="cpu"))
    except Exception as e:
        raise CheckpointError(
            f"cannot read checkpoint {path}: a damaged safetensors file ({one_line(e)})"
        ) from None


def _read_weights(path: Path, *, unsafe: bool) -> dict[str, Tensor]:
    """A weights-only file: ``*.safetensors``, a sharded ``*.index.json`` (every shard), or a
    ``pytorch_model.bin`` (a torch.save'd state_dict)."""
    if path.name.endswith(".index.json"):
        shards = checkpoint_file.read_index(path)
        sd: dict[str, Tensor] = {}
        for shard in dict.fromkeys(shards.values()):
            sd.update(_read_weights(Path(shard), unsafe=unsafe))
        absent = [k for k in shards if k not in sd]
        if absent:
            more = ", ..." if len(absent) > 3 else ""
            raise CheckpointError(
                f"the shard index {path} names {len(absent)} tensor(s) its shards do not hold: "
                f"{', '.join(absent[:3])}{more}"
            )
        return sd
    if checkpoint_file.is_safetensors(path):
        return _read_safetensors(path)
    obj = _torch_load(path, unsafe=unsafe)
    sd = _find_state_dict(obj)
    if sd is None:
        raise CheckpointError(f"no state_dict found in {path} ({_describe_keys(obj)})")
    return sd


def _no_key(path: Path, key: str | None, what: str) -> None:
    if key is not None:
        raise CheckpointError(
            f"checkpoint {path} is {what}, whose tensors are named at the top level: "
            f"checkpoint.key ({key!r}) applies to torch.save files only; remove it"
        )


def _load_folder(folder: Path, *, key: str | None, unsafe: bool) -> LoadedCheckpoint:
    """A Hugging Face folder (``save_pretrained``) or an HF Trainer ``checkpoint-N/`` folder."""
    weights = checkpoint_file.folder_weights(folder)
    if weights is None:
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
    sd = _read_weights(Path(weights), unsafe=unsafe)
    root: dict[str, Any] = {}
    opt_file = folder / checkpoint_file.TRAINER_OPTIMIZER
    if opt_file.is_file():
        state = _torch_load(opt_file, unsafe=unsafe, what="the optimizer state")
        if not (isinstance(state, Mapping) and "param_groups" in state):
            raise CheckpointError(
                f"{opt_file} holds no optimizer state_dict (no 'param_groups'; "
                f"{_describe_keys(state)})"
            )
        root["optimizer"] = state
    args_file = folder / checkpoint_file.TRAINER_ARGS
    if unsafe and args_file.is_file():  # a pickle: the optimizer's name (optim="adamw_torch")
        name = trainer_optimizer_name(args_file)
        if name is not None:
            root["optim"] = name  # read by optim.name_from_param_group as a context
    reading = optim.read_checkpoint(root)
    note = reading.note
    if note and reading.info is None and not unsafe and args_file.is_file():
        note += f" ({args_file.name} names it but is a pickle, read only with --unsafe-load)"
    return LoadedCheckpoint(
        state_dict=sd,
        optimizer=reading.info,
        path=folder,
        optimizer_state=optim.optimizer_state(root),
        step=checkpoint_file.trainer_step(folder),
        optimizer_note=note,
    )


def load_checkpoint(
    path: Path | str, *, key: str | None = None, unsafe: bool = False
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

    Raises:
        CheckpointError: missing, corrupt, holds pickled objects (without ``unsafe``), no
            state_dict found, a folder without weights, a shard missing.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        return _load_folder(path, key=key, unsafe=unsafe)
    if path.name.endswith(".index.json") or checkpoint_file.is_safetensors(path):
        _no_key(path, key, "a sharded index" if path.suffix == ".json" else "a safetensors file")
        return LoadedCheckpoint(_read_weights(path, unsafe=unsafe), None, path)
    obj = _torch_load(path, unsafe=unsafe, key=key)
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
        step=checkpoint_file.step_of(root),
        optimizer_note=reading.note,
    )


def _strip(sd: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The keys under ``prefix``, without it (the others belong to other submodules: a
    LightningModule's loss, an EMA copy); ``sd`` itself when no key has the prefix."""
    if not any(k.startswith(prefix) for k in sd):
        return sd
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def _identities(expected: Mapping[str, Any]) -> dict[str, tuple]:
    """Each model tensor's memory: (storage, offset, shape, stride); equal for tied weights."""
    out = {}
    for k, v in expected.items():
        if isinstance(v, Tensor) and v.numel() > 0 and v.device.type != "meta":
            storage = v.untyped_storage().data_ptr()
            out[k] = (storage, v.storage_offset(), tuple(v.shape), v.stride())
    return out


def _tied_to(keys: set[str] | dict, model_keys: Mapping[str, Any], ids: dict[str, tuple]) -> dict:
    """``{missing model key: present key}`` for the missing keys tied to a present one."""
    present = {}
    for k in model_keys:
        if k in keys and k in ids:
            present.setdefault(ids[k], k)
    return {k: present[ids[k]] for k in model_keys if k not in keys and ids.get(k) in present}


def _fits(keys: set[str], expected: Mapping[str, Any], ids: dict[str, tuple]) -> bool:
    """The keys are the model's, every one missing tied to a present one."""
    if not keys or not keys <= set(expected):
        return False
    return len(keys) + len(_tied_to(keys, expected, ids)) == len(expected)


def _auto_strip(
    sd: dict[str, Tensor], expected: Mapping[str, Any], ids: dict[str, tuple], path: Path
) -> dict[str, Tensor]:
    """Strip ``module.``/``model.``/``_orig_mod.`` when every key has it and no key matches the
    model as is; else the one prefix (``net.`` of a LightningModule's ``self.net``) under which
    the keys fit the model. Several fitting prefixes: a CheckpointError naming strip_prefix."""
    model_keys = set(expected)
    for _ in range(len(AUTO_PREFIXES) * 2):  # e.g. "_orig_mod.module." takes two rounds
        if not sd or set(sd) & model_keys:
            return sd
        known = [p for p in AUTO_PREFIXES if all(k.startswith(p) for k in sd)]
        if known:
            sd = _strip(sd, known[0])
            continue
        heads = sorted({k.split(".", 1)[0] + "." for k in sd if "." in k})
        fitting = [
            p for p in heads if _fits({k[len(p) :] for k in sd if k.startswith(p)}, expected, ids)
        ]
        if len(fitting) > 1:
            raise CheckpointError(
                f"checkpoint {path}: its keys fit the model under {len(fitting)} prefixes "
                f"({', '.join(map(repr, fitting))}), and which one to measure is not guessed: "
                "set checkpoint.strip_prefix in the spec to one of them"
            )
        if not fitting:
            return sd
        sd = _strip(sd, fitting[0])
    return sd


def _hf_rules(
    sd: dict[str, Tensor], model: nn.Module, expected: Mapping[str, Any], ids: dict[str, tuple]
) -> dict[str, Tensor]:
    """transformers' own loading rules, read from the model's class when it declares them:
    keys that older versions saved and the model no longer has (``attn.bias`` buffers of GPT-2:
    ``_keys_to_ignore_on_load_unexpected``, regexes) are dropped, and a base model's keys saved
    without its prefix (``h.0.…`` for ``transformer.h.0.…``: ``base_model_prefix``) get it when
    they then fit the model."""
    ignore = [p for p in getattr(model, "_keys_to_ignore_on_load_unexpected", None) or ()
              if isinstance(p, str)]  # fmt: skip

    def dropped(d: dict[str, Tensor]) -> dict[str, Tensor]:
        return {
            k: v for k, v in d.items() if k in expected or not any(re.search(p, k) for p in ignore)
        }

    prefix = getattr(model, "base_model_prefix", None)
    if isinstance(prefix, str) and prefix and sd and not set(sd) & set(expected):
        with_prefix = dropped({f"{prefix}.{k}": v for k, v in sd.items()})
        if _fits(set(with_prefix), expected, ids):
            return with_prefix
    return dropped(sd) if ignore else sd


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
    expected = model.state_dict()
    ids = _identities(expected)
    sd = ckpt.state_dict
    if spec.checkpoint.strip_prefix:
        for p in spec.checkpoint.strip_prefix:
            sd = _strip(sd, p)
    else:
        sd = _auto_strip(sd, expected, ids, ckpt.path)
    sd = _hf_rules(sd, model, expected, ids)
    # tied weights (GPT-2's lm_head.weight is transformer.wte.weight) are saved once
    sd = {**sd, **{k: sd[t] for k, t in _tied_to(set(sd), expected, ids).items()}}
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
