"""The memory plan from live tensors (bscrit.engine.memory): counts and dtypes of the model that
runs, a bf16 copy beside an fp32 model, frozen parameters, spilled sums, and FSDP2's largest
all-gathered block (one gloo rank on CPU)."""

from __future__ import annotations

import socket

import pytest
import torch
from torch import nn

from bscrit.engine.groups import plan_sums
from bscrit.engine.memory import check_memory_fits, largest_block, plan_run_memory
from bscrit.engine.precision import place_model, sum_templates
from bscrit.errors import UsageError


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 5))  # 220 + 105 params


def _plan(model: nn.Module, source: nn.Module | None = None, **kw: object):  # type: ignore[no-untyped-def]
    weights = [p.detach() for p in model.parameters() if p.requires_grad]
    sums = plan_sums(sum_templates(weights), 4, **kw)  # type: ignore[arg-type]
    return plan_run_memory(model, source or model, sums, torch.device("cpu"), False)


def test_counts_and_bytes_of_the_running_model() -> None:
    model = _model()
    model[0].bias.requires_grad_(False)  # 20 frozen parameters: in the model, not measured
    plan = _plan(model)
    assert (plan.inputs.params, plan.inputs.trainable) == (325, 305)
    assert plan.component("model") == 325 * 4 and plan.component("gradient") == 305 * 4
    assert plan.component("group sums") == 4 * 305 * 4 and plan.inputs.sums == "host"
    assert not plan.inputs.sharded and plan.inputs.world_size == 1


def test_a_bf16_copy_counts_beside_the_fp32_model_and_sums_stay_float32() -> None:
    source = _model()
    running = place_model(source, torch.device("cpu"), "bf16")
    assert running is not source
    plan = _plan(running, source)
    assert plan.component("model") == 325 * 4 and plan.component("model copy") == 325 * 2
    assert plan.component("gradient") == 325 * (2 + 4)  # bf16 gradient and its float32 cast
    assert plan.component("group sums") == 4 * 325 * 4


def test_spilled_sums_count_their_read_buffer_only() -> None:
    plan = _plan(_model(), host_memory=0)
    assert plan.inputs.sums == "spilled"
    assert plan.component("group sums (spilled: read buffer)") == 4 * 325 * 4  # < 64 MiB


def test_the_fit_check_counts_this_process_free_heap_and_the_rank_share(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import bscrit.engine.allocator as allocator

    plan = _plan(_model())  # 325 params, m = 4: the loop still allocates 6 x 1300 B = 7800 B
    assert plan.to_come("host") == 7800
    cpu = torch.device("cpu")
    monkeypatch.setattr(allocator, "available_memory", lambda: 7799)
    monkeypatch.setattr(allocator, "free_heap", lambda: 0)
    with pytest.raises(UsageError, match="needs at least 7.62 KiB more host memory"):
        check_memory_fits(plan, cpu)
    monkeypatch.setattr(allocator, "free_heap", lambda: 1)  # freed memory malloc can reuse
    check_memory_fits(plan, cpu)
    monkeypatch.setattr(allocator, "available_memory", lambda: 2 * 7800)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")  # a third of the machine's per rank
    with pytest.raises(UsageError, match="and 5.08 KiB is free"):
        check_memory_fits(plan, cpu)
    monkeypatch.setattr(allocator, "available_memory", lambda: None)  # unknown: not checked
    check_memory_fits(plan, cpu)
    assert isinstance(allocator.free_heap(), int) and allocator.free_heap() >= 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_largest_block_of_an_fsdp2_model(monkeypatch: pytest.MonkeyPatch) -> None:
    fsdp = pytest.importorskip("torch.distributed.fsdp")
    if not hasattr(fsdp, "fully_shard"):
        pytest.skip("torch without the public FSDP2 (fully_shard)")
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    assert largest_block(_model()) == 0  # not sharded: no block
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 30), nn.Linear(30, 2))
        fsdp.fully_shard(model[1], mesh=mesh)  # 150 parameters
        fsdp.fully_shard(model[2], mesh=mesh)  # 62
        fsdp.fully_shard(model, mesh=mesh)  # the root's own: model[0], 20
        assert largest_block(model) == 150
        weights = [p.detach() for p in model.parameters()]
        sums = plan_sums(sum_templates([w.to_local() for w in weights]), 3)
        plan = plan_run_memory(model, model, sums, torch.device("cpu"), False)
        assert plan.inputs.sharded and plan.inputs.world_size == 1
        assert plan.inputs.params == 232 and plan.inputs.largest_block == 150
        assert plan.inputs.sums == "device"  # a sharded rank keeps its shard's sums on its device
    finally:
        dist.destroy_process_group()
