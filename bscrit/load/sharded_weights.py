"""A checkpoint's weights loaded into a model sharded by FSDP2 (``--shard fsdp``), each rank
copying only the rows of its shards; safetensors files (single, sharded with an
``*.index.json``, or in a Hugging Face folder) are read row range by row range, never whole.

1. The checkpoint is read with :func:`bscrit.load.checkpoints.load_checkpoint` (``lazy``):
   safetensors tensors as :class:`~bscrit.load.lazy_tensors.Entry` handles (name and shape
   from the file's header), a ``torch.save`` file memory-mapped (rows touched on demand; a
   legacy-format file whole), the optimizer state and step as usual.
2. The spec's model is built and the saved keys are matched to its keys on their shapes alone
   (:func:`bscrit.load.keys.match_keys` with ``meta`` tensors: prefixes, Hugging Face rules,
   tied weights saved once), then the model is sharded.
3. Each rank copies into each sharded parameter the rows of its shard (FSDP2 splits dim 0 as
   ``torch.chunk`` over the mesh), and buffers whole.

The checkpoint's ``state_dict`` is left empty (the weights are in the model). Its optimizer
state, read whole, is cut the same way (:func:`shard_optimizer_state`): each rank keeps the rows
of its shard of every state tensor (a DCP folder is read in shards from the start,
:mod:`bscrit.load.dcp_sharded`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bscrit.errors import CheckpointError
from bscrit.load.keys import match_keys
from bscrit.load.lazy_tensors import Entry


def shard_rows(p: Any) -> tuple[int, int]:
    """The rows ``[lo, hi)`` of dim 0 that this rank holds of the FSDP2 parameter ``p``."""
    from torch.distributed.tensor import Shard

    if tuple(p.placements) != (Shard(0),):
        raise CheckpointError(f"a parameter sharded as {p.placements}: expected Shard(0)")
    mesh = p.device_mesh
    n, world, rank = p.shape[0], mesh.size(), mesh.get_local_rank()
    size = math.ceil(n / world)
    lo = min(rank * size, n)
    return lo, min(lo + size, n)


def _fill(target: Tensor, source: Any) -> None:
    """Copy this rank's part of ``source`` (an :class:`Entry` or a whole tensor) into ``target``."""
    if hasattr(target, "to_local"):
        local = target.to_local()  # type: ignore[attr-defined]
        lo, hi = shard_rows(target)
        data = source.read(lo, hi) if isinstance(source, Entry) else source[lo:hi]
        if tuple(data.shape) != tuple(local.shape):
            raise CheckpointError(
                f"rows {lo}:{hi} have shape {tuple(data.shape)}, this rank's shard "
                f"{tuple(local.shape)}"
            )
        local.copy_(data)
        return
    target.copy_(source.read() if isinstance(source, Entry) else source)


def _as_shard(t: Tensor, mesh: Any) -> Tensor:
    """The whole tensor ``t`` as a ``DTensor`` sharded on dim 0 over ``mesh`` as FSDP2 shards a
    parameter of its shape (this rank's rows copied to the mesh's device; no communication)."""
    from torch.distributed.tensor import DTensor, Shard

    size = math.ceil(t.shape[0] / mesh.size())
    lo = min(mesh.get_local_rank() * size, t.shape[0])
    local = t[lo : lo + size].to(mesh.device_type, copy=True)
    return DTensor.from_local(
        local, mesh, [Shard(0)], run_check=False, shape=t.shape, stride=t.stride()
    )


def shard_optimizer_state(opt_state: Any, mesh: Any) -> None:
    """Replace, in place, every whole tensor (at least 1-d) of a saved optimizer state's
    per-parameter entries by its ``DTensor`` shard over ``mesh``: the whole state is not kept
    on every rank.
    A state tensor has its parameter's shape, so the shard is the parameter's (the
    preconditioner's shape checks still see the whole shape)."""
    state = opt_state.get("state") if isinstance(opt_state, dict) else None
    if not isinstance(state, dict):
        return
    for entry in state.values():
        if not isinstance(entry, dict):
            continue
        for key, v in list(entry.items()):
            if isinstance(v, Tensor) and v.dim() >= 1 and not hasattr(v, "to_local"):
                entry[key] = _as_shard(v, mesh)


def _named_tensor(model: nn.Module, name: str) -> Tensor:
    try:
        return model.get_parameter(name)
    except AttributeError:
        return model.get_buffer(name)


def load_sharded_weights(
    spec: Any, path: str | Path, prepare: Callable[[nn.Module], nn.Module], *, unsafe: bool
) -> tuple[nn.Module, Any]:
    """The spec's model, sharded by ``prepare``, at checkpoint ``path`` (module docstring),
    and the checkpoint (optimizer state, step; an empty ``state_dict``).

    Raises:
        CheckpointError: as :func:`bscrit.load.checkpoints.load_model`: unreadable, keys or
            shapes that do not fit the model (before any weight is copied).
    """
    from bscrit.load.checkpoints import load_checkpoint
    from bscrit.load.factories import build_model

    ckpt = load_checkpoint(path, key=spec.checkpoint.key, unsafe=unsafe, lazy=True)
    model = build_model(spec)
    meta = {k: torch.empty(tuple(v.shape), device="meta") for k, v in ckpt.state_dict.items()}
    saved_of = {id(t): k for k, t in meta.items()}
    matched = match_keys(meta, model, spec.checkpoint.strip_prefix, ckpt.path)
    model = prepare(model)
    try:
        with torch.no_grad():
            for name, t in matched.items():
                _fill(_named_tensor(model, name), ckpt.state_dict[saved_of[id(t)]])
    except CheckpointError as e:
        raise CheckpointError(f"cannot load checkpoint {ckpt.path}: {e}") from None
    except Exception as e:  # noqa: BLE001 - a damaged file: the reader's own words
        raise CheckpointError(f"cannot load checkpoint {ckpt.path}: {e}") from None
    ckpt.state_dict = {}
    meshes = [p.device_mesh for p in model.parameters() if hasattr(p, "device_mesh")]
    if meshes:
        shard_optimizer_state(ckpt.optimizer_state, meshes[0])
    return model, ckpt
