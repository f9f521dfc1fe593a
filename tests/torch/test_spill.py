"""Group sums spilled to disk (bscrit.engine.groups.plan_sums / SpilledSums): the same numbers as in
host memory, bit for bit; the plan decided and checked before any batch; the file removed."""

from __future__ import annotations

import os
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from reference import mse as _mse
from reference import tiny_problem as _tiny_problem
from torch import nn
from torch.utils.data import TensorDataset

import bscrit.engine.gram
import bscrit.engine.groups
import bscrit.engine.loop
from bscrit.engine.adaptive import adaptive_hooks, adaptive_plan
from bscrit.engine.groups import SumsPlan, plan_sums
from bscrit.engine.loop import measure_model
from bscrit.errors import UsageError


class _Mixed(nn.Module):
    """float32 layers and a float64 gain: tensors of two dtypes and several sizes."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(5, 24)
        self.b = nn.Linear(24, 1)
        self.gain = nn.Parameter(1.0 + 0.1 * torch.randn(24, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x)) * self.gain.float())


def _mixed_problem(n: int = 64) -> tuple[nn.Module, TensorDataset]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 5, generator=g)
    y = torch.sin(x.sum(1)) + 0.3 * torch.randn(n, generator=g)
    return _Mixed(), TensorDataset(x, y)


@pytest.fixture()
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny chunks, spans and blocks, so that a tiny model exercises every path of the spill
    file: Gram matrices read in several spans of several chunks, groups of several blocks
    (read, add, rewrite), adds in several pieces."""
    monkeypatch.setattr(bscrit.engine.gram, "GRAM_CHUNK", 8)
    monkeypatch.setattr(bscrit.engine.groups, "SPILL_READ_BYTES", 300)
    monkeypatch.setattr(bscrit.engine.loop, "BLOCK_BATCHES", 3)


def _spilled_and_not(tmp_path: Path, run) -> tuple:  # type: ignore[no-untyped-def]
    plans: list[SumsPlan] = []
    memory = run(on_plan=plans.append)
    spilled = run(on_plan=plans.append, host_memory=0, spill_dir=str(tmp_path))
    assert not plans[0].spilled and plans[1].spilled and plans[1].spill_dir == str(tmp_path)
    return memory, spilled


def _assert_identical(a, b) -> None:  # type: ignore[no-untyped-def]
    assert a.counts == b.counts and a.mean_loss == b.mean_loss
    for ta, tb in zip(a.tensors, b.tensors, strict=True):
        assert ta == tb  # every float: Gram matrices, Q_j, invariance sums, preconditioned sums


def test_spilled_sums_give_the_same_numbers_bit_for_bit(tmp_path: Path, small_chunks) -> None:
    model, ds = _mixed_problem()
    params = [p for p in model.parameters()]
    pre = [torch.rand(p.shape, dtype=p.dtype, generator=torch.Generator().manual_seed(2)) + 0.5
           for p in params]  # fmt: skip

    def run(**kw):  # type: ignore[no-untyped-def]
        return measure_model(
            model, ds, _mse, batch_size=6, num_batches=40, groups=4, preconditioner=pre, **kw
        )

    memory, spilled = _spilled_and_not(tmp_path, run)
    assert memory.counts == (10, 10, 10, 10)  # blocks of 3, 3, 3, 1: three adds per group
    assert spilled.tensors[0].preconditioned is not None
    _assert_identical(memory, spilled)
    assert list(tmp_path.iterdir()) == []


def test_spilled_sums_match_in_adaptive_runs_past_max_groups(tmp_path: Path, small_chunks) -> None:
    """New groups, then batches dealt into existing groups (read, add, rewrite) and the Gram
    rows of the changed groups re-read at every check: the same as in memory."""
    model, ds = _tiny_problem(64)

    def run(**kw):  # type: ignore[no-untyped-def]
        st = adaptive_plan(1e-6, 24, 9, 3, len(ds), 6)
        assert st is not None
        st.max_groups = 4
        hooks = adaptive_hooks(st, len(ds), 6, seed=5)
        return measure_model(
            model, ds, _mse, batch_size=6, num_batches=9, groups=3, seed=5, hooks=hooks, **kw
        )

    memory, spilled = _spilled_and_not(tmp_path, run)
    assert memory.counts == (6, 6, 6, 6)
    _assert_identical(memory, spilled)


def _open_spill_files(folder: Path) -> list[str]:
    links = []
    for fd in Path("/proc/self/fd").iterdir():
        try:
            links.append(os.readlink(fd))
        except OSError:
            continue
    return [x for x in links if x.startswith(str(folder))]


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc (Linux)")
def test_the_spill_file_is_deleted_at_once_and_closed_after_a_run_or_an_error(
    tmp_path: Path,
) -> None:
    model, ds = _tiny_problem()
    seen: list[list[str]] = []

    class Stop(Exception):
        pass

    def progress(n: int) -> None:
        seen.append(_open_spill_files(tmp_path))
        assert list(tmp_path.iterdir()) == []  # unlinked as soon as created: nothing to leak
        if len(seen) == 3:
            raise Stop

    kw = dict(batch_size=6, num_batches=40, groups=4, host_memory=0, spill_dir=str(tmp_path))
    with pytest.raises(Stop):
        measure_model(model, ds, _mse, progress=progress, **kw)  # type: ignore[arg-type]
    assert len(seen[0]) == 1 and seen[0][0].endswith("(deleted)")  # open, with no name
    assert _open_spill_files(tmp_path) == []  # closed on the error too
    measure_model(model, ds, _mse, **kw)  # type: ignore[arg-type]
    assert _open_spill_files(tmp_path) == []


def test_the_plan_spills_beyond_the_budget_and_checks_the_space(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = [torch.zeros(1000), torch.zeros(24, dtype=torch.float64)]
    group_bytes = 1000 * 4 + 24 * 8
    monkeypatch.setattr(bscrit.engine.groups, "available_memory", lambda: 10**9)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    p = plan_sums(w, 10)  # default budget: half the available memory
    assert (p.group_bytes, p.total, p.budget) == (group_bytes, 10 * group_bytes, 10**9 // 2)
    assert not p.spilled
    assert p.host_bytes == p.total and "in host memory" in p.describe()
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # four ranks of one node share the memory
    assert plan_sums(w, 10).budget == 10**9 // 4 // 2
    p = plan_sums(w, 10, host_memory=10 * group_bytes - 1, spill_dir=str(tmp_path))
    assert p.spilled and p.spill_dir == str(tmp_path)
    monkeypatch.setattr(bscrit.engine.groups, "SPILL_READ_BYTES", 1000)
    assert p.host_bytes == 1000  # the read buffer (no staging buffer on CPU)
    assert replace(p, cuda=True).host_bytes == 1000 + group_bytes
    assert f"spilled to {tmp_path}" in p.describe()
    note = p.note(host_peak=2**30, device_peak=2**20, ranks=2)
    assert note.startswith("host memory on each rank about 1 GiB at peak, the 10 group sums")
    assert note.endswith("device memory on each rank 1 MiB at peak so far")
    assert plan_sums(w, 10, host_memory=10 * group_bytes).spilled is False  # fits exactly

    monkeypatch.setattr(bscrit.engine.groups, "available_memory", lambda: 100)
    with pytest.raises(UsageError, match="only 25 B is available") as e:
        plan_sums(w, 10, host_memory=10**6)  # an explicit budget past the memory there is
    assert "lower --host-memory to spill them" in e.value.for_cli()

    class Usage:
        free = 1000

    monkeypatch.setattr(bscrit.engine.groups.shutil, "disk_usage", lambda folder: Usage)
    with pytest.raises(
        UsageError, match=re.escape(f"more than the 1000 B free in {tmp_path}")
    ) as e:
        plan_sums(w, 10, spill_dir=str(tmp_path))
    assert "set TMPDIR to a larger disk, or raise --host-memory" in e.value.for_cli()


def test_a_spill_that_cannot_fit_stops_before_the_first_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = str(tmp_path / "missing")
    with pytest.raises(UsageError, match=re.escape(f"spill folder {missing}: ")):
        plan_sums([torch.zeros(3)], 4, host_memory=0, spill_dir=missing)

    class Usage:
        free = 10

    monkeypatch.setattr(bscrit.engine.groups.shutil, "disk_usage", lambda folder: Usage)
    model, ds = _tiny_problem()

    def progress(n: int) -> None:
        raise AssertionError("a batch ran")

    with pytest.raises(UsageError, match="would spill"):
        measure_model(
            model, ds, _mse, batch_size=6, num_batches=40, groups=4, progress=progress,
            host_memory=0, spill_dir=str(tmp_path),
        )  # fmt: skip


def test_host_memory_helpers_report_this_machine() -> None:
    from bscrit.engine.allocator import available_memory, peak_rss

    if not Path("/proc/meminfo").exists():
        pytest.skip("needs /proc (Linux)")
    total = next(
        int(line.split()[1]) * 1024
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    avail = available_memory()
    assert avail is not None and 0 < avail <= total  # bytes, not KiB
    big = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched: resident now
    peak = peak_rss()
    assert peak is not None and big.numel() * 4 <= peak <= total


def test_float64_norms_are_accumulated_in_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """‖W‖ in float64 without a float64 copy of W: chunk by chunk, equal to the norm of the
    float64 copy up to float64 rounding (and exactly that of one chunk for small tensors)."""
    from bscrit.engine.gram import norm64

    w = torch.randn(1000, 37, generator=torch.Generator().manual_seed(0))
    exact = float(w.double().norm())
    assert float(norm64(w)) == float(torch.linalg.vector_norm(w, dtype=torch.float64))
    monkeypatch.setattr(bscrit.engine.gram, "NORM_CHUNK", 999)  # 38 chunks, the last one partial
    assert float(norm64(w)) == pytest.approx(exact, rel=1e-14)
    assert float(norm64(w.T)) == pytest.approx(exact, rel=1e-14)  # not contiguous
    assert float(norm64(torch.zeros(0))) == 0.0
