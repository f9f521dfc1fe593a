"""The per-rank memory plan of a measurement from its live tensors, and the refusal of one that
cannot fit (torch side of :mod:`bscrit.stats.memory_plan`).

:func:`plan_run_memory` reads the parameter counts and dtypes of the model that runs, where the
group sums live (:class:`~bscrit.engine.groups.SumsPlan`), the world size and whether the
parameters are sharded (FSDP2 ``DTensor`` parameters: found by itself, or told), and the largest
block FSDP all-gathers at once. :func:`check_memory_fits` compares what the measurement loop
still allocates with the free device memory (``torch.cuda.mem_get_info``) and this rank's share
of the host's available memory (:func:`bscrit.engine.allocator.available_memory` / the ranks of
the machine), and refuses with exit 2 before the first batch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from bscrit.engine import allocator
from bscrit.engine.groups import SumsPlan, plan_sums
from bscrit.engine.hot_loop import local_tensor
from bscrit.engine.precision import sum_templates
from bscrit.errors import UsageError
from bscrit.stats.memory_plan import MemoryInputs, MemoryPlan, fit_problem, plan_memory


def _mesh_size(t: Tensor) -> int | None:
    """The number of ranks a ``DTensor`` is spread over, None for a plain tensor."""
    mesh = getattr(t, "device_mesh", None)
    return int(mesh.size()) if mesh is not None and hasattr(t, "to_local") else None


def largest_block(model: nn.Module) -> int:
    """Parameters of the largest unit FSDP2 all-gathers at once: each parameter belongs to its
    nearest ``fully_shard``-ed module (a wrapped block, or the root's own parameters: embeddings,
    head); 0 when the model has no such module."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch < 2.6: no public FSDP2
        return 0
    owner: dict[int, str] = {}
    counts: dict[str, int] = {}
    for name, module in model.named_modules():  # parents before children: the nearest wins
        if isinstance(module, FSDPModule):
            for p in module.parameters():
                owner[id(p)] = name
    for p in model.parameters():
        if id(p) in owner:
            counts[owner[id(p)]] = counts.get(owner[id(p)], 0) + p.numel()
    return max(counts.values(), default=0)


def plan_run_memory(
    model: nn.Module,
    source: nn.Module,
    sums: SumsPlan,
    device: torch.device,
    preconditioner: bool,
    *,
    sharded: bool | None = None,
    world_size: int | None = None,
    block: int | None = None,
    sums_on_device: bool | None = None,
) -> MemoryPlan:
    """The per-rank memory plan of measuring ``model``'s trainable parameters (``requires_grad``;
    a sharded one's global size).

    ``source``: the model the caller gave; when ``model`` is a copy of it on the same kind of
    device (``--precision bf16-weights``), both count. ``sharded``, ``world_size``, ``block``
    (parameters of the largest all-gathered unit) and ``sums_on_device`` default to what the
    tensors say: ``DTensor`` parameters are sharded over their mesh (sums on the device), else
    one replica per rank of ``WORLD_SIZE`` (sums where ``sums`` puts them).
    """
    params = list(model.parameters())
    meshes = [n for n in (_mesh_size(p) for p in params) if n is not None]
    if sharded is None:
        sharded = bool(meshes)
    if world_size is None:
        world_size = max(meshes) if meshes else int(os.environ.get("WORLD_SIZE", "1") or 1)
    count = sum(p.numel() for p in params)  # a DTensor's numel is the global one
    stored = sum(p.numel() * p.element_size() for p in source.parameters())
    running = sum(p.numel() * p.element_size() for p in params)
    copy = source is not model and all(p.device.type == device.type for p in source.parameters())
    on_device = sharded if sums_on_device is None else sums_on_device
    where = "spilled" if sums.spilled else ("device" if on_device else "host")
    inputs = MemoryInputs(
        params=count,
        trainable=sum(p.numel() for p in params if p.requires_grad),
        weight_bytes=(stored if copy else running) / max(count, 1),
        compute_bytes=running / max(count, 1),
        copy=copy,
        world_size=max(1, world_size),
        sharded=sharded,
        groups=sums.groups,
        sums=where,
        preconditioner=preconditioner,
        largest_block=(largest_block(model) if block is None else block) if sharded else 0,
        on_cpu=device.type == "cpu",
        spill_buffer=sums.host_bytes if sums.spilled else None,
    )
    return plan_memory(inputs)


def _hint(plan: MemoryPlan, where: str) -> str:
    """What to change when ``where`` (device or host) is short."""
    i = plan.inputs
    out = [f"fewer groups ({{groups}}, now {i.groups})"]
    if where == "host" and i.sums == "host":
        out.append("the group sums spilled to disk (a lower {host_memory}, docs/performance.md)")
    if not i.sharded:
        out.append("the model sharded over more ranks ({shard} fsdp, docs/distributed.md)")
    elif where == "device" or i.on_cpu:
        out.append("more ranks")
    return "try " + ", or ".join(out)


def check_memory_fits(plan: MemoryPlan, device: torch.device) -> None:
    """Refuse, before the first batch, a measurement whose loop cannot fit: the bytes it still
    allocates (gradient, running sum, group sums, gathered blocks) above the free CUDA memory of
    ``device`` (with what torch's caching allocator holds unused), or above this rank's share of
    the host's available memory (``MemAvailable`` capped by the cgroup, divided among
    ``LOCAL_WORLD_SIZE`` ranks) plus what malloc holds free in this process
    (:func:`~bscrit.engine.allocator.free_heap`: an earlier checkpoint's freed sums). Unknown
    sizes are not checked. Activations are not in the plan: passing is no promise, failing is
    certain.

    Raises:
        UsageError: the message names the components, the bytes needed and free, what to do.
    """
    device_free = None
    if device.type == "cuda":  # free on the device, and what torch's cache holds unused
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        device_free = int(torch.cuda.mem_get_info(device)[0]) + max(0, int(cached))
    available = allocator.available_memory()
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    # this rank's share of the machine's, and what malloc holds free in this process already
    host_free = None if available is None else available // local + allocator.free_heap()
    for where in ("device", "host"):
        problem = fit_problem(
            plan,
            device_free if where == "device" else None,
            host_free if where == "host" else None,
            _hint(plan, where),
        )
        if problem is not None:
            raise UsageError(problem, groups="groups", host_memory="host_memory", shard="shard")


def plan_run(
    model: nn.Module,
    source: nn.Module,
    weights: Sequence[Tensor],
    groups: int,
    settings: Any,
    device: torch.device,
    preconditioner: Sequence[Tensor] | None,
) -> SumsPlan:
    """Before the first batch of :func:`bscrit.engine.loop.measure_model`: where the group sums
    of this rank's shards live (:func:`~bscrit.engine.groups.plan_sums`, with the
    ``host_memory`` and ``spill_dir`` of ``settings``), with the measurement's memory plan
    (:func:`plan_run_memory`) checked to fit (:func:`check_memory_fits`).

    Raises:
        UsageError: the sums fit neither host memory nor the spill folder, or the plan cannot
            fit the device or the host.
    """
    local = [local_tensor(w) for w in weights]  # sharded (FSDP2): this rank's shards
    sums = plan_sums(sum_templates(local), groups, settings.host_memory, settings.spill_dir)
    plan = plan_run_memory(model, source, sums, device, preconditioner is not None)
    check_memory_fits(plan, device)
    return replace(sums, memory=plan)
