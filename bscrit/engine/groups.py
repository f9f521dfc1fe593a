"""The m group sums (in host memory, or spilled to a file), how batches are dealt into groups,
and the float64 Gram matrices (torch).

The hot loop (:mod:`bscrit.engine.loop`) folds every batch gradient into a running sum on the device
and, at the end of each block of batches, adds it to its group's sum S_j (:class:`HostSums`).
Every estimator needs only ⟨S_a, S_b⟩ and the Q_j (:class:`bscrit.stats.estimators.GroupSums`),
formed here in float64, chunk by chunk (no m × numel float64 copy).

Memory. The m sums cost m × parameter bytes (GPT-2 124M at m = 10: 5 GB). No streamed form
avoids holding them: leaving group j out needs ⟨S, S_j⟩ with S = Σ S_h the *final* total, and
S_j is complete long before S is, so every S_j must be kept until the end (a row of the Gram
matrix formed when group j completes misses the groups after it). Before the first batch
:func:`plan_sums` therefore decides where they live: in host memory while m × parameter bytes
fits a budget (default: half the available memory), else in a temporary file
(:class:`SpilledSums`), read back in spans for the Gram matrices: the same numbers bit for bit,
at the cost of writing each group once and reading all of them once per Gram computation.

Adaptive runs read the sums after every few batches: :class:`GramCache` keeps the m×m matrices
and recomputes only the rows of the groups that changed or were added since the last read; with
the number of groups capped (:attr:`bscrit.engine.loop.LoopHooks.max_groups`) a read costs the same
however long the run has been.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import torch
from torch import Tensor

from bscrit.engine import gram
from bscrit.engine.allocator import available_memory
from bscrit.errors import MeasurementError, UsageError
from bscrit.stats.memory_plan import MemoryPlan, format_bytes

#: Share of the available host memory the group sums may take before they spill to disk.
HOST_MEMORY_FRACTION = 0.5
#: Bytes read from spilled sums at once (all groups together) while forming a Gram matrix.
SPILL_READ_BYTES = 64 << 20
#: Largest single read or write of the spill file (some systems cap one call near 2 GiB).
_IO_BYTES = 1 << 30


def _memory_filesystem(folder: str) -> bool:
    """Whether ``folder`` is on tmpfs/ramfs (a spill file there is in memory); False if unknown."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return False
    real, best, kind = os.path.realpath(folder), "", ""
    for line in mounts:
        parts = line.split()
        if len(parts) > 2 and (real == parts[1] or real.startswith(parts[1].rstrip("/") + "/")):
            if len(parts[1]) >= len(best):
                best, kind = parts[1], parts[2]
    return kind in ("tmpfs", "ramfs")


@dataclass(frozen=True)
class SumsPlan:
    """Where the m group sums live, decided before the first batch (:func:`plan_sums`).

    Attributes:
        group_bytes: one group's sums of every tensor (the parameter bytes).
        groups: the most groups the run holds (m, or an adaptive run's ``max_groups``).
        budget: bytes the sums may take in host memory (None: no limit known).
        spill_dir: the folder of the spill file; None: the sums stay in host memory.
        in_memory_fs: the spill folder is tmpfs/ramfs (the "file" is memory after all).
        cuda: the running sums are on a CUDA device (spilled sums then need a host staging
            buffer; on CPU the running sum is host memory already).
        memory: the per-rank memory plan of the whole measurement (set by the engine,
            :func:`bscrit.engine.memory.plan_run_memory`).
    """

    group_bytes: int
    groups: int
    budget: int | None
    spill_dir: str | None = None
    in_memory_fs: bool = False
    cuda: bool = False
    memory: MemoryPlan | None = None

    @property
    def total(self) -> int:
        """Bytes of all the group sums: groups × parameter bytes."""
        return self.groups * self.group_bytes

    @property
    def spilled(self) -> bool:
        return self.spill_dir is not None

    @property
    def host_bytes(self) -> int:
        """Host memory the sums add: all of them, or once spilled the buffer of the Gram
        matrices' reads (and on CUDA one group's staging buffer)."""
        if not self.spilled:
            return self.total
        return min(self.total, SPILL_READ_BYTES + self.group_bytes * self.cuda)

    def describe(self) -> str:
        """``"the 10 group sums (4.6 GiB) in host memory"`` or ``"... spilled to /tmp (over the
        2.0 GiB budget for them)"``."""
        what = f"the {self.groups} group sums ({format_bytes(self.total)})"
        if not self.spilled:
            return f"{what} in host memory"
        budget = f"over the {format_bytes(self.budget or 0)} budget for them"
        tmpfs = "; that folder is in memory (tmpfs): set TMPDIR to a disk" * self.in_memory_fs
        return f"{what} spilled to {self.spill_dir} ({budget}{tmpfs})"

    def note(self, host_peak: int | None, device_peak: int | None = None, ranks: int = 1) -> str:
        """The plan line's memory part: the host memory at the peak, where the sums live.

        ``host_peak``: the process's peak resident size so far (model, data, a batch's
        activations and gradient): the sums still to come (:attr:`host_bytes`) are added to it.
        ``device_peak``: CUDA memory at its peak so far (it does not grow with the groups).
        """
        each = " on each rank" * (ranks > 1)
        if host_peak is None:
            text = f"host memory{each}: {self.describe()}"
        else:
            peak = format_bytes(host_peak + self.host_bytes)
            text = f"host memory{each} about {peak} at peak, {self.describe()}"
        if device_peak is not None:
            text += f"; device memory{each} {format_bytes(device_peak)} at peak so far"
        return text


def plan_sums(
    weights: Sequence[Tensor],
    groups: int,
    host_memory: int | None = None,
    spill_dir: str | None = None,
) -> SumsPlan:
    """Decide, before any work, whether the group sums fit in host memory or spill to disk.

    In host memory while groups × parameter bytes ≤ ``host_memory`` (default
    ``HOST_MEMORY_FRACTION`` of :func:`~bscrit.engine.allocator.available_memory`, shared among the
    ``LOCAL_WORLD_SIZE`` processes of a torchrun node; no limit where unknown); else in a file in
    ``spill_dir`` (default: the system's temporary folder, ``$TMPDIR``).

    Raises:
        UsageError: the sums fit nowhere: an explicit ``host_memory`` above the memory available,
            or a spill folder without the space (or not writable).
    """
    group_bytes = sum(w.numel() * w.element_size() for w in weights)
    cuda = any(w.device.type == "cuda" for w in weights)
    total = groups * group_bytes
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    available = available_memory()
    share = None if available is None else available // local
    budget = host_memory
    if budget is None and share is not None:
        budget = int(HOST_MEMORY_FRACTION * share)
    what = f"the {groups} group sums need {format_bytes(total)}"
    if budget is None or total <= budget:
        if host_memory is not None and share is not None and total > share:
            raise UsageError(
                f"{{host_memory}} {format_bytes(host_memory)}: {what} of host memory, and only "
                f"{format_bytes(share)} is available; lower {{host_memory}} to spill them to disk",
                host_memory="host_memory",
            )
        return SumsPlan(group_bytes, groups, budget, cuda=cuda)
    folder = spill_dir if spill_dir is not None else tempfile.gettempdir()
    try:
        free = shutil.disk_usage(folder).free
    except OSError as e:
        raise UsageError(f"spill folder {folder}: {e.strerror or e}") from None
    if free < total:
        raise UsageError(
            f"{what}: more than their host-memory budget ({format_bytes(budget)}, "
            f"{{host_memory}}) and more than the {format_bytes(free)} free in {folder}, where they "
            "would spill: free disk space there, set TMPDIR to a larger disk, or raise "
            "{host_memory}",
            host_memory="host_memory",
        )
    return SumsPlan(group_bytes, groups, budget, folder, _memory_filesystem(folder), cuda)


def host_like(weights: Sequence[Tensor], pin: bool) -> list[Tensor]:
    """Host tensors shaped like ``weights``: one (pinned) allocation per dtype, one view each."""
    out: list[Tensor | None] = [None] * len(weights)
    for dtype in {w.dtype for w in weights}:
        idx = [i for i, w in enumerate(weights) if w.dtype == dtype]
        flat = torch.empty(sum(weights[i].numel() for i in idx), dtype=dtype, pin_memory=pin)
        offset = 0
        for i in idx:
            numel = weights[i].numel()
            out[i] = flat[offset : offset + numel].view(weights[i].shape)
            offset += numel
    return out  # type: ignore[return-value]


class HostSums:
    """Group j's sum of batch gradients, per tensor, in host memory (``sums[j][t]``).

    The first block of a group becomes its sum (on CPU the running tensor itself is kept; on CUDA
    it is copied into pinned memory, asynchronously); later blocks of the group (long groups,
    adaptive runs) are added to it through one pinned staging buffer.
    """

    def __init__(self, weights: Sequence[Tensor], device: torch.device) -> None:
        self.weights = list(weights)
        self.device = device
        self.sums: list[list[Tensor]] = []
        self.staging: list[Tensor] | None = None

    def __len__(self) -> int:
        """The number of groups so far, m."""
        return len(self.sums)

    @property
    def num_tensors(self) -> int:
        return len(self.weights)

    def add(self, j: int, block: list[Tensor]) -> list[Tensor]:
        """Add ``block`` (a running sum on the device) to group j (groups start in order, so a
        new j is ``len(self)``); returns the zeroed running sum to use next."""
        cpu, pin = self.device.type == "cpu", self.device.type == "cuda"
        if j == len(self.sums):  # the group's first block
            if cpu:  # the sum is in host memory already: keep it, start anew
                self.sums.append(block)
                block = host_like(self.weights, False)
            else:
                host = host_like(self.weights, pin)
                for hs, gs in zip(host, block):
                    hs.copy_(gs, non_blocking=pin)
                self.sums.append(host)
        elif cpu:
            torch._foreach_add_(self.sums[j], block)
        else:
            torch._foreach_add_(self.sums[j], self._staged(block))
        torch._foreach_zero_(block)
        return block

    def _staged(self, block: list[Tensor]) -> list[Tensor]:
        """``block`` (on CUDA) copied into the one pinned staging buffer, the copy complete."""
        pin = self.device.type == "cuda"
        if self.staging is None:
            self.staging = host_like(self.weights, pin)
        for st, gs in zip(self.staging, block):
            st.copy_(gs, non_blocking=pin)
        if pin:
            torch.cuda.synchronize(self.device)
        return self.staging

    def gram(
        self, t: int, rows: Sequence[int] | None = None, scale: Tensor | None = None
    ) -> Tensor:
        """Rows ``rows`` (default all) of tensor t's float64 Gram matrix ⟨S_a, S_b⟩."""
        return gram.gram_rows([s[t].reshape(-1) for s in self.sums], rows, scale)

    def close(self) -> None:
        """Release what the sums hold outside Python's memory (nothing here; see subclass)."""


class SpilledSums(HostSums):
    """The group sums in a temporary file instead of host memory (:func:`plan_sums` decides).

    Group j's sum of tensor t (in the tensor's dtype, flattened) is at byte
    ``j × group_bytes + offset[t]``. A group's first block is written as it is (on CUDA through
    one pinned staging buffer); later blocks are read back, added and rewritten in spans: the
    same float additions as in memory. The file is unlinked as soon as it is created, so it
    disappears when the process ends, however it ends (error, Ctrl-C, kill); its space is
    reserved up front where the filesystem allows, so a full disk shows before the first batch.
    """

    def __init__(self, weights: Sequence[Tensor], device: torch.device, plan: SumsPlan) -> None:
        super().__init__(weights, device)
        self.numels = [w.numel() for w in self.weights]
        self.offsets: list[int] = []
        offset = 0
        for w in self.weights:
            self.offsets.append(offset)
            offset += w.numel() * w.element_size()
        self.group_bytes, self.folder, self.count = offset, str(plan.spill_dir), 0
        self.file: IO[bytes] | None = None
        try:
            self.file = tempfile.TemporaryFile(dir=self.folder, prefix="bscrit-sums-", buffering=0)
            if hasattr(os, "posix_fallocate") and plan.total > 0:
                try:
                    os.posix_fallocate(self.file.fileno(), 0, plan.total)
                except OSError as e:  # unsupported on this filesystem: write as we go
                    if e.errno == errno.ENOSPC:
                        raise
        except OSError as e:
            self.close()
            raise UsageError(
                f"spill folder {self.folder}: cannot hold the {format_bytes(plan.total)} of "
                f"group sums ({e.strerror or e})"
            ) from None

    def __len__(self) -> int:
        return self.count

    def add(self, j: int, block: list[Tensor]) -> list[Tensor]:
        host = block if self.device.type == "cpu" else self._staged(block)
        first = j == self.count
        for t, x in enumerate(host):
            flat = x.reshape(-1)
            if first:
                self._io(j, t, 0, flat.contiguous(), write=True)
                continue
            step = max(1, SPILL_READ_BYTES // max(flat.element_size(), 1))
            buf = torch.empty(min(step, flat.numel()), dtype=flat.dtype)
            for lo in range(0, flat.numel(), step):
                part = buf[: min(step, flat.numel() - lo)]
                self._io(j, t, lo, part, write=False)
                part.add_(flat[lo : lo + len(part)])  # S_j += block, as in memory
                self._io(j, t, lo, part, write=True)
        self.count += first
        torch._foreach_zero_(block)
        return block

    def gram(
        self, t: int, rows: Sequence[int] | None = None, scale: Tensor | None = None
    ) -> Tensor:
        """As :meth:`HostSums.gram`, read back in spans of whole ``GRAM_CHUNK`` chunks (the same
        chunks, so the same float64 sums bit for bit)."""
        m, numel, dtype = self.count, self.numels[t], self.weights[t].dtype
        per_chunk = max(1, m) * gram.GRAM_CHUNK * self.weights[t].element_size()
        span = max(1, SPILL_READ_BYTES // per_chunk) * gram.GRAM_CHUNK
        buf = torch.empty(m, min(span, numel), dtype=dtype)
        acc = gram._GramAccumulator(m, rows, numel)
        for lo in range(0, numel, span):
            hi = min(numel, lo + span)
            for j in range(m):
                self._io(j, t, lo, buf[j, : hi - lo], write=False)
            acc.add([buf[j, : hi - lo] for j in range(m)], None if scale is None else scale[lo:hi])
        return acc.out

    def _io(self, j: int, t: int, lo: int, x: Tensor, write: bool) -> None:
        """Write the contiguous 1-D ``x`` at element ``lo`` of group j's tensor t, or read it."""
        assert self.file is not None
        view = memoryview(x.view(torch.uint8).numpy()) if x.numel() else memoryview(b"")
        pos = j * self.group_bytes + self.offsets[t] + lo * x.element_size()
        done = 0
        try:
            while done < len(view):
                self.file.seek(pos + done)
                part = view[done : done + _IO_BYTES]
                n = self.file.write(part) if write else self.file.readinto(part)  # type: ignore[attr-defined]
                if not n:
                    raise OSError(errno.EIO, "short read")
                done += n
        except OSError as e:
            raise MeasurementError(
                f"the group sums spilled to {self.folder}: {'writing' if write else 'reading'} "
                f"failed ({e.strerror or e})"
            ) from None

    def close(self) -> None:
        """Close (and so delete) the spill file."""
        if self.file is not None:
            self.file.close()
            self.file = None


def open_sums(weights: Sequence[Tensor], device: torch.device, plan: SumsPlan | None) -> HostSums:
    """The group sums where ``plan`` puts them (in host memory without a plan)."""
    if plan is not None and plan.spilled:
        return SpilledSums(weights, device, plan)
    return HostSums(weights, device)


def deal(rows: Tensor, start: int, m: int) -> list[tuple[int, Tensor]]:
    """Row i of ``rows`` to group (start + i) mod m, as one block per group (groups in order
    from ``start``). Started at the first of the smaller groups, it keeps group sizes within one
    batch of each other (the batches are independent, so which block runs first is immaterial).
    """
    return [((start + d) % m, rows[d::m]) for d in range(min(len(rows), m))]
