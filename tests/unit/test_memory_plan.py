"""The per-rank memory plan (bscrit.stats.memory_plan): hand-computed components, the 1/W
shrinking of the sharded ones, the time estimate, the refusal message, the printed line."""

from __future__ import annotations

import pytest

from bscrit.report.memory_plan import MEMORY_LINE_MIN_BYTES, memory_line
from bscrit.stats.memory_plan import (
    NOT_INCLUDED,
    SPILL_READ_BYTES,
    MemoryInputs,
    estimate_seconds,
    fit_problem,
    format_bytes,
    plan_memory,
)


def _parts(**kw: object) -> dict[str, tuple[int, str]]:
    plan = plan_memory(MemoryInputs(**kw))  # type: ignore[arg-type]
    return {c.name: (c.bytes, c.where) for c in plan.components}


def test_replicated_cpu_fp32_by_hand() -> None:
    plan = plan_memory(MemoryInputs(params=1000, trainable=800, groups=10))
    assert {c.name: c.bytes for c in plan.components} == {
        "model": 4000,  # 1000 x 4 B, every parameter
        "gradient": 3200,  # 800 trainable x 4 B
        "running sum": 3200,
        "group sums": 32000,  # m = 10 x 800 x 4 B
    }
    assert {c.where for c in plan.components} == {"host"}  # CPU: the device is the host
    assert plan.total == plan.host_bytes == 42400 and plan.device_bytes == 0
    assert plan.to_come("host") == 42400 - 4000  # the model exists before the loop
    d = plan.to_dict()
    assert d["total_bytes"] == 42400 and d["not_included"] == NOT_INCLUDED
    assert d["components"][0] == {"name": "model", "bytes": 4000, "where": "host", "run": False}


def test_replicated_cuda_keeps_the_sums_in_host_memory() -> None:
    plan = plan_memory(MemoryInputs(params=100, trainable=100, groups=5, on_cpu=False))
    assert plan.device_bytes == 400 + 400 + 400  # model, gradient, running sum
    assert plan.host_bytes == 5 * 400
    assert plan.to_come("device") == 800 and plan.to_come("host") == 2000


def test_bf16_weights_copy_cast_and_float32_sums() -> None:
    parts = _parts(params=100, trainable=100, groups=2, weight_bytes=4, compute_bytes=2, copy=True)
    assert parts["model"][0] == 400 and parts["model copy"][0] == 200  # fp32 kept, bf16 runs
    assert parts["gradient"][0] == 100 * (2 + 4)  # the bf16 gradient and its float32 cast
    assert parts["running sum"][0] == 400 and parts["group sums"][0] == 2 * 400
    # bf16 weights stored as such (a sharded bf16 run): no copy, sums still float32
    parts = _parts(params=100, trainable=100, groups=2, weight_bytes=2)
    assert "model copy" not in parts and parts["model"][0] == 200
    assert parts["group sums"][0] == 800
    assert _parts(params=10, trainable=10, groups=2, weight_bytes=8)["group sums"][0] == 160


def test_sharded_components_shrink_as_one_over_world() -> None:
    p, block = 8_000_000, 1_000_000
    base = plan_memory(MemoryInputs(params=p, trainable=p, groups=10, preconditioner=True))
    for w in (1, 2, 4, 8):
        kw = dict(params=p, trainable=p, groups=10, world_size=w, preconditioner=True)
        sharded = plan_memory(MemoryInputs(**kw, sharded=True, sums="device", largest_block=block))  # type: ignore[arg-type]
        replicated = plan_memory(MemoryInputs(**kw))  # type: ignore[arg-type]
        for name in ("model", "gradient", "running sum", "group sums", "preconditioner"):
            assert sharded.component(name) * w == base.component(name), (name, w)
            assert replicated.component(name) == base.component(name), (name, w)
        # the gathered blocks do not shrink with W (and do not exist on one rank)
        assert sharded.component("gathered blocks") == (4 * block * 4 if w > 1 else 0)
    assert base.component("preconditioner") == 4 * p  # P floats (Adam's exp_avg_sq factors)


def test_sharded_shards_round_up_and_sums_live_on_the_device() -> None:
    plan = plan_memory(
        MemoryInputs(
            params=10,
            trainable=10,
            groups=3,
            world_size=4,
            sharded=True,
            sums="device",
            on_cpu=False,
            largest_block=5,
        )  # fmt: skip
    )
    assert plan.component("model") == 3 * 4  # ceil(10 / 4) parameters of 4 B
    assert plan.component("group sums") == 3 * 3 * 4
    assert plan.host_bytes == 0 and plan.device_bytes == plan.total
    assert plan.component("gathered blocks") == 4 * 5 * 4  # two blocks' params and gradients


def test_spilled_sums_leave_a_read_buffer_in_host_memory() -> None:
    big = 100_000_000
    cpu = _parts(params=big, trainable=big, groups=10, sums="spilled")
    assert cpu["group sums (spilled: read buffer)"] == (SPILL_READ_BYTES, "host")
    cuda = _parts(params=big, trainable=big, groups=10, sums="spilled", on_cpu=False)
    assert cuda["group sums (spilled: read buffer)"][0] == SPILL_READ_BYTES + 4 * big  # staging
    tiny = _parts(params=10, trainable=10, groups=10, sums="spilled")
    assert tiny["group sums (spilled: read buffer)"][0] == 400  # never more than the sums
    told = _parts(params=10, trainable=10, groups=10, sums="spilled", spill_buffer=7)
    assert told["group sums (spilled: read buffer)"][0] == 7


def test_time_estimate_counts_the_batches_one_rank_runs() -> None:
    assert estimate_seconds(200, 0.5, 1, False) == 100.0
    assert estimate_seconds(200, 0.5, 8, False) == 25 * 0.5  # whole batches dealt over ranks
    assert estimate_seconds(201, 1.0, 8, False) == 26.0  # ceil(201 / 8)
    assert estimate_seconds(200, 0.5, 8, True) == 100.0  # every rank takes part in every batch
    plan = plan_memory(MemoryInputs(params=1, trainable=1, world_size=4), 100, 2.0)
    assert plan.seconds == 50.0 and plan_memory(MemoryInputs(params=1, trainable=1)).seconds is None
    with pytest.raises(ValueError):
        estimate_seconds(10, 1.0, 0, False)


def test_fit_problem_names_what_does_not_fit_and_ignores_what_exists() -> None:
    plan = plan_memory(MemoryInputs(params=1000, trainable=1000, groups=10, world_size=2))
    need = plan.to_come("host")  # gradient + running sum + sums: 48 000 B; the model exists
    assert need == 48000
    assert fit_problem(plan, None, need) is None and fit_problem(plan, None, None) is None
    msg = fit_problem(plan, None, need - 1, hint="try fewer groups")
    assert msg is not None
    assert msg.startswith("memory: the measurement needs at least 46.9 KiB more host memory")
    assert "per rank (gradient 3.91 KiB, running sum 3.91 KiB, group sums 39.1 KiB;" in msg
    assert NOT_INCLUDED in msg and msg.endswith("is free: try fewer groups")
    cuda = plan_memory(MemoryInputs(params=1000, trainable=1000, groups=10, on_cpu=False))
    assert fit_problem(cuda, 8000, 10**9) is None  # gradient + running sum on the device
    assert "more device memory" in str(fit_problem(cuda, 7999, 10**9))
    assert "more host memory" in str(fit_problem(cuda, 8000, 39999))


@pytest.mark.parametrize(
    "kw",
    [
        {"params": -1, "trainable": 0},
        {"params": 1, "trainable": 1, "world_size": 0},
        {"params": 1, "trainable": 1, "groups": 0},
        {"params": 1, "trainable": 1, "sums": "disk"},
        {"params": 1, "trainable": 1, "weight_bytes": 0},
    ],
)
def test_bad_inputs_are_refused(kw: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        MemoryInputs(**kw)  # type: ignore[arg-type]


def test_format_bytes() -> None:
    assert format_bytes(512) == "512 B" and format_bytes(1536) == "1.5 KiB"
    assert format_bytes(3 * 2**30) == "3 GiB" and format_bytes(150 * 2**30) == "150 GiB"
    assert format_bytes(2.5 * 2**40) == "2.5 TiB"


def test_memory_line_prints_large_or_sharded_plans_with_what_is_left_out() -> None:
    small = plan_memory(MemoryInputs(params=1000, trainable=1000, groups=4))
    assert small.total < MEMORY_LINE_MIN_BYTES and memory_line(small) is None
    assert memory_line(small, force=True) == (
        "memory plan per rank, 4 group sums: host: model 3.91 KiB + gradient 3.91 KiB + running "
        f"sum 3.91 KiB + group sums 15.6 KiB = 27.3 KiB; {NOT_INCLUDED}"
    )
    big = plan_memory(MemoryInputs(params=10**8, trainable=10**8, groups=10, world_size=2,
                                   on_cpu=False))  # fmt: skip
    line = memory_line(big)
    assert line is not None and line.startswith("memory plan per rank (2 ranks, replicated)")
    assert "device: model 381 MiB + gradient 381 MiB + running sum 381 MiB = 1.12 GiB;" in line
    assert "host: group sums 3.73 GiB = 3.73 GiB;" in line
    sharded = plan_memory(MemoryInputs(params=8, trainable=8, world_size=2, sharded=True))
    assert str(memory_line(sharded)).startswith("memory plan per rank (2 ranks, sharded)")
    one = plan_memory(MemoryInputs(params=8, trainable=8, world_size=1, sharded=True))
    assert str(memory_line(one)).startswith("memory plan per rank (1 rank, sharded), 10 group")
