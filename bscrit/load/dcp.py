"""``torch.distributed.checkpoint`` (DCP) folders, read in one process, without running pickles.

A DCP folder (what torchtitan, OLMo-core and ``dcp.save`` write) holds a ``.metadata`` file and
``__R_F.distcp`` data files. DCP's own reader is not weights-only: ``FileSystemReader`` reads
``.metadata`` with a bare ``pickle.load`` and DCP's default planner reads every non-tensor value
with ``torch.load(weights_only=False)``, so a crafted folder could run code. bscrit reads
``.metadata`` with an unpickler that only builds DCP's own metadata classes (and ``torch.Size``,
dtypes, paths), and every non-tensor value with ``torch.load(weights_only=True)``; the tensors
are read by DCP itself (``torch.load(weights_only=True)`` per tensor). Only the keys bscrit needs
are read: the model's tensors, the optimizer state, the step; ``lr_scheduler``, ``dataloader``
and other entries are left unread.

Layouts (the first path component of each saved key decides):

- OLMo-core ``{"model": ..., "optim": ...}`` and plain ``{"model": ..., "optimizer": ...}``;
- torchtitan: the model's keys at the top level, ``optimizer`` beside them (with
  ``lr_scheduler``, ``dataloader``, ``train_state`` possibly too).

The optimizer state, from ``get_optimizer_state_dict``, is keyed by parameter name, either nested
(``{"state": {name: {...}}, "param_groups": [{"params": [names]}]}``) or flattened
(``flatten_optimizer_state_dict=True``: ``state.<name>.exp_avg``, ``param_groups.<name>.lr``); it
is returned as saved-by-name and turned into PyTorch's index form by
:func:`bscrit.optim.state.indexed`. The step is ``train_state.step`` or a top-level ``step`` /
``global_step``, else the folder's name (``step-1000``, ``step1000``).

:func:`read_folder` reads the whole model and optimizer state into host memory (a full gather);
a sharded measurement (``--shard fsdp``) reads each rank's shards only
(:mod:`bscrit.load.dcp_sharded`, with the same reader and planner).
"""

from __future__ import annotations

import io
import os
import pickle
import re
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from bscrit.errors import CheckpointError, first_line

#: The file that makes a folder one DCP checkpoint.
METADATA = ".metadata"
#: OLMo-core keeps the DCP checkpoint in this subfolder of ``stepN/``.
OLMO_SUBFOLDER = "model_and_optim"
MODEL_KEYS = ("model",)
OPTIM_KEYS = ("optim", "optimizer")
STEP_KEYS = ("train_state", "step", "global_step")
#: torchtitan's other top-level entries (never read).
OTHER_KEYS = ("lr_scheduler", "dataloader")
MIN_TORCH = (2, 4)
_STEP_NAME = re.compile(r"(?:step|checkpoint)[-_]?(\d+)$", re.I)


def dcp_folder(path: str | os.PathLike[str]) -> str | None:
    """The DCP folder ``path`` is or holds: ``path`` with a ``.metadata``, or OLMo-core's
    ``path/model_and_optim`` with one; None otherwise."""
    p = os.fspath(path)
    if not os.path.isdir(p):
        return None
    for folder in (p, os.path.join(p, OLMO_SUBFOLDER)):
        if os.path.isfile(os.path.join(folder, METADATA)):
            return folder
    return None


def step_from_name(path: str | os.PathLike[str]) -> int | None:
    """``1000`` for a folder named ``step-1000`` / ``step1000`` / ``checkpoint_1000``."""
    m = _STEP_NAME.search(os.path.basename(os.path.normpath(os.fspath(path))))
    return int(m.group(1)) if m else None


def _check_torch(folder: str) -> None:
    version = tuple(int(x) for x in re.findall(r"\d+", torch.__version__)[:2])
    if version < MIN_TORCH:
        raise CheckpointError(
            f"checkpoint {folder} is a torch.distributed.checkpoint folder; reading it needs "
            f"torch >= {'.'.join(map(str, MIN_TORCH))} (installed: {torch.__version__}): "
            "pip install -U 'torch>=2.4'"
        )


class _MetadataUnpickler(pickle.Unpickler):
    """Builds DCP's metadata classes only: no function or class from elsewhere is called."""

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("torch.distributed.checkpoint."):
            obj = super().find_class(module, name)
            if isinstance(obj, type):
                return obj
        elif (module, name) in (("torch", "Size"), ("torch.serialization", "_get_layout")):
            return super().find_class(module, name)
        elif module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        elif module == "pathlib" and name in ("PosixPath", "WindowsPath", "PurePosixPath"):
            return super().find_class(module, name)
        elif (module, name) == ("collections", "OrderedDict"):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not DCP metadata")


def read_metadata(folder: str) -> Any:
    """The folder's ``.metadata`` (a DCP ``Metadata``), read without running foreign code.

    Raises:
        CheckpointError: unreadable, damaged, or naming anything but DCP's metadata classes.
    """
    _check_torch(folder)
    path = os.path.join(folder, METADATA)
    try:
        with open(path, "rb") as f:
            md = _MetadataUnpickler(f).load()
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror}") from None
    except Exception as e:
        raise CheckpointError(
            f"cannot read {path}: not torch.distributed.checkpoint metadata ({first_line(e)})"
        ) from None
    if not isinstance(getattr(md, "state_dict_metadata", None), Mapping):
        raise CheckpointError(f"cannot read {path}: no state_dict_metadata in it")
    return md


def _reader(folder: str) -> Any:
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class _SafeReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            md = read_metadata(folder)
            if getattr(md, "storage_meta", None) is None:
                md.storage_meta = StorageMeta()
            md.storage_meta.load_id = self.load_id
            return md

    return _SafeReader(folder)


def _planner(values: dict[str, Any], problems: list[str], folder: str) -> Any:
    from torch.distributed.checkpoint import DefaultLoadPlanner

    class _WeightsOnlyPlanner(DefaultLoadPlanner):
        def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
            fqn = read_item.dest_index.fqn
            try:
                values[fqn] = torch.load(value, weights_only=True)
            except Exception as e:
                m = re.search(r"unsupported (?:global|class):?\s*(?:GLOBAL\s+)?([\w.]+)", str(e),
                              re.I)  # fmt: skip
                what = f" (e.g. {m.group(1)})" if m else ""
                problems.append(
                    f"checkpoint {folder}: the value at key {fqn!r} holds pickled Python "
                    f"objects{what}, which weights-only loading refuses"
                )
                raise

    return _WeightsOnlyPlanner(flatten_state_dict=False, flatten_sharded_tensors=False)


def _read(
    folder: str,
    md: Any,
    keys: list[str],
    targets: Mapping[str, Any] | None = None,
    no_dist: bool = True,
) -> dict[str, Any]:
    """The saved values of ``keys`` (flat DCP keys): tensors allocated from the metadata, or
    read into ``targets`` (``DTensor`` shards of a sharded model: each rank reads its own part,
    ``no_dist=False``, every rank calling with the same keys)."""
    from torch.distributed.checkpoint import load
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    values: dict[str, Any] = {}
    read_bytes: dict[str, Any] = {}  # dcp.load writes its own copy back over ``values``
    problems: list[str] = []  # a refused value (DCP wraps the planner's exceptions)
    for k in keys:
        m = md.state_dict_metadata[k]
        if targets is not None and k in targets:
            values[k] = targets[k]
        elif isinstance(m, TensorStorageMetadata):
            values[k] = torch.empty(tuple(m.size), dtype=m.properties.dtype)
        else:
            values[k] = None  # filled by load_bytes
    try:
        with warnings.catch_warnings():  # "assuming the intent is to load in a single process"
            warnings.simplefilter("ignore", UserWarning)
            planner = _planner(read_bytes, problems, folder)
            load(values, storage_reader=_reader(folder), planner=planner, no_dist=no_dist)
    except (Exception, CheckpointException) as e:  # DCP's is a BaseException
        if problems:
            raise CheckpointError(problems[0]) from None
        raise CheckpointError(
            f"cannot read checkpoint {folder}: a damaged or incomplete "
            f"torch.distributed.checkpoint folder ({type(e).__name__}: {first_line(e)[:300]})"
        ) from None
    return {**values, **read_bytes}


def _paths(md: Any) -> dict[str, tuple]:
    """Each flat key's path in the saved nested dict (DCP's ``planner_data``)."""
    data = md.planner_data if isinstance(getattr(md, "planner_data", None), Mapping) else {}
    out = {}
    for k in md.state_dict_metadata:
        p = data.get(k)
        out[k] = tuple(p) if isinstance(p, (tuple, list)) and p else tuple(k.split(".", 1))
    return out


def _nest(flat: Mapping[tuple, Any]) -> dict[Any, Any]:
    """Rebuild nested dicts / lists from ``{path: value}`` (list indices are ints)."""
    root: dict[Any, Any] = {}
    for path, value in flat.items():
        node: Any = root
        for part, nxt in zip(path[:-1], path[1:]):
            if isinstance(node, list):
                while len(node) <= part:
                    node.append(None)
                if node[part] is None:
                    node[part] = [] if isinstance(nxt, int) else {}
                node = node[part]
            else:
                node = node.setdefault(part, [] if isinstance(nxt, int) else {})
        if isinstance(node, list):
            while len(node) <= path[-1]:
                node.append(None)
        node[path[-1]] = value
    return root


def unflatten_optimizer(flat: Mapping[str, Any]) -> dict[str, Any]:
    """A ``flatten_optimizer_state_dict=True`` state (``state.<name>.<key>``,
    ``param_groups.<name>.<key>``) in the nested by-name form; parameters whose group values are
    equal form one group, groups in the order their first parameter is saved."""
    state: dict[str, dict[str, Any]] = {}
    per_param: dict[str, dict[str, Any]] = {}
    for k, v in flat.items():
        head, _, rest = k.partition(".")
        name, _, key = rest.rpartition(".")
        if head == "state" and name:
            state.setdefault(name, {})[key] = v
        elif head == "param_groups" and name:
            per_param.setdefault(name, {})[key] = v
    groups: list[dict[str, Any]] = []
    for name, values in per_param.items():
        values.pop("params", None)
        group = next((g for g in groups if _same(g, values)), None)
        if group is None:
            group = {**values, "params": []}
            groups.append(group)
        group["params"].append(name)
    for name in state:
        if name not in per_param:  # a state without group values: its own group
            groups.append({"params": [name]})
    return {"state": state, "param_groups": groups}


def _same(group: Mapping[str, Any], values: Mapping[str, Any]) -> bool:
    rest = {k: v for k, v in group.items() if k != "params"}
    if set(rest) != set(values):
        return False
    return all(_eq(rest[k], values[k]) for k in rest)


def _eq(a: Any, b: Any) -> bool:
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return isinstance(a, Tensor) and isinstance(b, Tensor) and bool(torch.equal(a, b))
    return a == b


def _is_step(path: tuple) -> bool:
    """``step`` / ``global_step`` at the top level, or under ``train_state``."""
    return path[0] in STEP_KEYS and (len(path) == 1 or path[1] in ("step", "global_step"))


def _step(value: Any) -> int | None:
    if isinstance(value, Mapping):
        value = value.get("step", value.get("global_step"))
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return int(value)
    return None


def read_folder(path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], dict | None, int | None]:
    """The model's state_dict, the optimizer state (by parameter name, nested form) and the step
    of the DCP checkpoint at or in ``path`` (:func:`dcp_folder`).

    Raises:
        CheckpointError: not a DCP folder, unreadable, no model tensors found (the top-level keys
            are named), a value that is not weights-only, or torch older than 2.4.
    """
    folder, md, paths, wanted = plan_read(path)
    values = _read(folder, md, list(wanted))
    model: dict[str, Tensor] = {}
    optim_flat: dict[tuple, Any] = {}
    step = None
    for k, role in wanted.items():
        p = paths[k]
        if role == "model":
            model[model_key(p)] = values[k]
        elif role == "optim":
            optim_flat[p[1:]] = values[k]
        elif step is None:
            step = _step(values[k])
    optimizer = _optimizer(optim_flat)
    if step is None:
        step = step_from_name(path if folder != os.fspath(path) else folder)
    return model, optimizer, step


def model_key(path: tuple) -> str:
    """The model's state_dict key of a saved model tensor at nested ``path``."""
    return ".".join(map(str, path[1:] if path[0] in MODEL_KEYS else path))


def plan_read(path: str | os.PathLike[str]) -> tuple[str, Any, dict[str, tuple], dict[str, str]]:
    """``(folder, metadata, each flat key's nested path, {flat key: "model" | "optim" |
    "step"})``: the keys bscrit reads from the DCP checkpoint at or in ``path``.

    Raises:
        CheckpointError: not a DCP folder, unreadable metadata, no model tensors in it.
    """
    folder = dcp_folder(path)
    if folder is None:
        raise CheckpointError(f"{path} is not a torch.distributed.checkpoint folder (no .metadata)")
    md = read_metadata(folder)
    paths = _paths(md)
    tops = list(dict.fromkeys(p[0] for p in paths.values()))
    nested_model = any(t in MODEL_KEYS for t in tops)
    known = (*OPTIM_KEYS, *STEP_KEYS, *OTHER_KEYS)
    wanted: dict[str, str] = {}  # flat key -> "model" / "optim" / "step"
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    for k, p in paths.items():
        if p[0] in MODEL_KEYS or (not nested_model and p[0] not in known):
            if isinstance(md.state_dict_metadata[k], TensorStorageMetadata):
                wanted[k] = "model"
        elif p[0] in OPTIM_KEYS:
            wanted[k] = "optim"
        elif _is_step(p):
            wanted[k] = "step"
    if not any(v == "model" for v in wanted.values()):
        raise CheckpointError(
            f"checkpoint {folder}: no model tensors in this torch.distributed.checkpoint folder "
            f"(top-level keys: {', '.join(map(str, tops[:10]))}); expected a 'model' key "
            "(OLMo-core, dcp.save({'model': ...})) or the model's keys at the top level "
            "(torchtitan)"
        )
    return folder, md, paths, wanted


def _optimizer(flat: Mapping[tuple, Any]) -> dict | None:
    if not flat:
        return None
    if all(len(p) == 1 for p in flat):  # flatten_optimizer_state_dict=True
        return unflatten_optimizer({str(p[0]): v for p, v in flat.items()})
    nested = _nest(flat)
    return nested if "param_groups" in nested else None


def saved_step(path: str | os.PathLike[str]) -> int | None:
    """The step a DCP checkpoint saved (``train_state.step``, ``step``), else its folder name's
    N; None when neither (or the folder cannot be read: measuring it reports why)."""
    folder = dcp_folder(path)
    step = None
    if folder is not None:
        try:
            md = read_metadata(folder)
            paths = _paths(md)
            keys = [k for k, p in paths.items() if _is_step(p)]
            values = _read(folder, md, keys) if keys else {}
            step = next((s for s in map(_step, values.values()) if s is not None), None)
        except CheckpointError:
            step = None
    return step if step is not None else step_from_name(path)
