"""A ``torch.distributed.checkpoint`` (DCP) folder read straight into a model sharded by FSDP2
(``--shard fsdp``): each rank reads its own shards of the weights and of the optimizer state,
never the whole of either.

1. The spec's model is built (the factory, at its initial weights) and the saved model keys are
   matched to its keys on their shapes only (:func:`bscrit.load.keys.match_keys` with ``meta``
   tensors: prefixes, Hugging Face rules, tied weights saved once), before any data is read.
2. The model is sharded (:meth:`bscrit.engine.sharded.ShardedContext.prepare_model`).
3. ``dcp.load`` on every rank, with the process group, into the sharded state_dict: the
   ``DTensor`` parameters (each rank reads the parts of the ``.distcp`` files that overlap its
   shard, whatever the number of ranks that wrote them), and the optimizer state tensors shaped
   like a parameter (``exp_avg``, ``exp_avg_sq``, ...) into ``DTensor`` shards like that
   parameter's; small values (``step``, the param groups) whole. The reader and planner are
   those of :mod:`bscrit.load.dcp`: ``.metadata`` read without running pickles, every
   non-tensor value with ``torch.load(weights_only=True)``.

The optimizer state, keyed by parameter name, is put in PyTorch's index form as for one process;
its ``exp_avg_sq`` shards give the preconditioned reading on each rank. The checkpoint's
``state_dict`` is left empty (the weights are in the model).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bscrit.errors import CheckpointError
from bscrit.load import dcp as bdcp
from bscrit.load.keys import AUTO_PREFIXES, match_keys
from bscrit.load.sharded_weights import shard_optimizer_state


def _saved_model_keys(
    md: Any, paths: Mapping[str, tuple], wanted: Mapping[str, str], model: nn.Module, spec: Any,
    folder: str,
) -> dict[str, str]:  # fmt: skip
    """``{model key: flat saved key}`` from the metadata's shapes (nothing read yet)."""
    meta = {
        k: torch.empty(tuple(md.state_dict_metadata[k].size), device="meta")
        for k, role in wanted.items()
        if role == "model"
    }
    by_id = {id(t): k for k, t in meta.items()}
    named = {bdcp.model_key(paths[k]): t for k, t in meta.items()}
    matched = match_keys(named, model, spec.checkpoint.strip_prefix, folder)
    return {name: by_id[id(t)] for name, t in matched.items()}


def _param_named(name: str, params: Mapping[str, Tensor], strip: tuple[str, ...]) -> Tensor | None:
    """The model's parameter an optimizer state entry names (a wrapper prefix dropped)."""
    if name in params:
        return params[name]
    for prefix in (*strip, *AUTO_PREFIXES):
        if name.startswith(prefix) and name[len(prefix) :] in params:
            return params[name[len(prefix) :]]
    return None


def _state_entry(path: tuple) -> tuple[str, str] | None:
    """``(parameter name, state key)`` of an optimizer state value at nested ``path`` (below
    ``optim``): ``("state", name, key)``, or flattened ``("state.<name>.<key>",)``."""
    rest = path[1:]
    if len(rest) == 3 and rest[0] == "state":
        return str(rest[1]), str(rest[2])
    if len(rest) == 1 and str(rest[0]).startswith("state."):
        name, _, key = str(rest[0])[len("state.") :].rpartition(".")
        return (name, key) if name else None
    return None


def _shard_like(p: Tensor, dtype: torch.dtype) -> Tensor:
    """An empty ``DTensor`` of ``dtype`` sharded as the parameter ``p``."""
    from torch.distributed.tensor import DTensor

    local = torch.empty_like(p.to_local(), dtype=dtype)  # type: ignore[attr-defined]
    return DTensor.from_local(
        local, p.device_mesh, p.placements, run_check=False, shape=p.shape, stride=p.stride()
    )  # type: ignore[attr-defined]


def _optim_targets(
    md: Any, paths: Mapping[str, tuple], wanted: Mapping[str, str], model: nn.Module,
    strip: tuple[str, ...],
) -> dict[str, Tensor]:  # fmt: skip
    """``DTensor`` targets for the optimizer state tensors shaped like their parameter."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    params = {n: p for n, p in model.named_parameters() if hasattr(p, "to_local")}
    out = {}
    for k, role in wanted.items():
        entry = _state_entry(paths[k]) if role == "optim" else None
        m = md.state_dict_metadata[k]
        if entry is None or not isinstance(m, TensorStorageMetadata):
            continue
        p = _param_named(entry[0], params, strip)
        if p is not None and tuple(m.size) == tuple(p.shape):
            out[k] = _shard_like(p, m.properties.dtype)
    return out


def load_sharded(
    spec: Any, path: str | Path, prepare: Callable[[nn.Module], nn.Module]
) -> tuple[nn.Module, Any]:
    """The spec's model, sharded by ``prepare``, at the DCP checkpoint ``path``, and the
    checkpoint (optimizer state by index, ``DTensor`` shards in it; the step).

    Raises:
        CheckpointError: as :func:`bscrit.load.dcp.read_folder`, and keys or shapes that do not
            fit the model (before anything is read).
    """
    from bscrit.load.checkpoints import _from_root
    from bscrit.load.factories import build_model
    from bscrit.optim.state import indexed

    folder, md, paths, wanted = bdcp.plan_read(path)
    model = build_model(spec)
    keys = _saved_model_keys(md, paths, wanted, model, spec, folder)
    model = prepare(model)
    sd = model.state_dict()
    targets: dict[str, Any] = {}
    for name, flat in keys.items():
        targets.setdefault(flat, sd[name])  # tied weights: one saved key, one target
    strip = tuple(spec.checkpoint.strip_prefix or ())
    targets.update(_optim_targets(md, paths, wanted, model, strip))
    values = bdcp._read(folder, md, list(wanted), targets=targets, no_dist=False)
    try:
        model.load_state_dict({name: values[flat] for name, flat in keys.items()}, strict=True)
    except Exception as e:
        raise CheckpointError(f"cannot load checkpoint {folder}: {e}") from None
    optim_flat = {paths[k][1:]: values[k] for k, role in wanted.items() if role == "optim"}
    steps = [bdcp._step(values[k]) for k, role in wanted.items() if role == "step"]
    step = next((s for s in steps if s is not None), None)
    if step is None:
        step = bdcp.step_from_name(path if folder != str(path) else folder)
    opt_state = indexed(bdcp._optimizer(optim_flat))
    meshes = [p.device_mesh for p in model.parameters() if hasattr(p, "device_mesh")]
    if meshes:  # a state tensor whose parameter was not found by name, read whole: cut it too
        shard_optimizer_state(opt_state, meshes[0])
    root = {"optimizer": opt_state} if opt_state is not None else {}
    return model, _from_root({}, Path(path), root, step)
