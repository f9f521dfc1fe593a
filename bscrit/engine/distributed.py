"""Multi-GPU and multi-node measurement on torch.distributed (torchrun).

``torchrun --nproc-per-node 8 -m bscrit measure spec.yaml ...`` runs the same estimator as one
process (docs/theory.md §2), with the k batches shared out between the ranks:

- **Same batches as one process.** Every rank draws the same k × B index rows from the global seed
  (:class:`bscrit.engine.data.BatchPlan`) and keeps the m group boundaries; within each block of
  group j, rank r computes the batches r, r + W, r + 2W, ... of the block
  (:attr:`LoopHooks.local_rows`; a block is the whole group unless the group is longer than 1024
  batches). A batch is B examples on *one* rank (the per-rank batch is the unit of sampling; B is
  not multiplied by W).
- **Sums, not gradients, are reduced.** Each rank accumulates its part of the group sum S_j
  (float32, on its device) and of Q_j (float64); at the end of each group they are summed across
  ranks with one all_reduce per ~64 MB bucket (:attr:`LoopHooks.reduce`), so every rank holds the
  global S_j and Q_j, and after the loop the invariance sums and the loss. Ĝ, N̂ and the jackknife
  are then those of one process over the same k batches, up to the order in which float32 sums
  are added.
- **Independent batches.** The model's own randomness (dropout, augmentation, DataLoader worker
  seeds) is seeded per rank: two batches never share a dropout mask.
- **Failures do not hang.** Before every reduction the ranks exchange a small status message on
  the CPU (gloo). A rank that raised anywhere sends its error instead; every rank then stops with
  "rank R failed: ...", printed once, by rank 0 (the failing rank's own exit code: 3 for a failed
  measurement, 4 for an unexpected error, a bug in bscrit). A rank that dies or hangs is caught
  by the process-group timeout (``--dist-timeout``, env ``BSCRIT_DIST_TIMEOUT``, default 600 s).

``bscrit measure --nproc N`` launches torchrun for the user on one machine (:func:`launch`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from bscrit.engine.data import BatchPlan
from bscrit.engine.hot_loop import LoopHooks
from bscrit.errors import BscritError, ExitCode, MeasurementError, UsageError, internal_message

#: Environment variable with the process-group timeout in seconds (tests set it low).
ENV_TIMEOUT = "BSCRIT_DIST_TIMEOUT"
#: Default timeout of a collective: a rank that does not answer within it is taken for dead.
DEFAULT_TIMEOUT_S = 600.0
#: The longest timeout accepted (seconds): a week.
MAX_TIMEOUT_S = 7 * 86400.0
#: Tensors are coalesced into flat buffers of about this size for the all_reduce.
BUCKET_BYTES = 64 << 20
#: Bytes of error message a rank can send to the others (UTF-8, truncated).
_MSG_BYTES = 2000
#: Rank r's model seed is seed + r * _RANK_SEED_STRIDE (rank 0 keeps the single-process seed).
_RANK_SEED_STRIDE = 1_000_003


class PeerFailed(MeasurementError):
    """One or more ranks failed; every rank learned it from the status exchange.

    Attributes:
        failures: ``{rank: (exit code, message)}`` of every rank that failed.
    """

    def __init__(
        self, message: str, failures: dict[int, tuple[int, str]], exit_code: ExitCode
    ) -> None:
        super().__init__(message, exit_code=exit_code)
        self.failures = failures


class CollectiveError(MeasurementError):
    """A collective failed or timed out: another rank died, was killed or hangs."""


def detect() -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` from a torchrun environment, or None outside one."""
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return None
    try:
        world = int(os.environ["WORLD_SIZE"])
        rank = int(os.environ["RANK"])
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise UsageError(
            "distributed: RANK, WORLD_SIZE and LOCAL_RANK must be integers (set by torchrun)"
        ) from None
    if not 0 <= rank < world:
        raise UsageError(f"distributed: RANK={rank} is not in [0, WORLD_SIZE={world})")
    return rank, world, local


def timeout_seconds(value: float | None = None) -> float:
    """The collective timeout: ``value``, else ``$BSCRIT_DIST_TIMEOUT``, else 600 s."""
    if value is None:
        raw = os.environ.get(ENV_TIMEOUT)
        if raw is None or raw.strip() == "":
            return DEFAULT_TIMEOUT_S
        try:
            value = float(raw)
        except ValueError:
            raise UsageError(f"{ENV_TIMEOUT}={raw!r}: expected a number of seconds") from None
    if not 0 < value <= MAX_TIMEOUT_S:  # NaN and ∞ too (a timedelta cannot hold them)
        raise UsageError(
            f"{{dist_timeout}}: expected a positive number of seconds, at most "
            f"{MAX_TIMEOUT_S:,.0f} (a week), got {value}",
            dist_timeout="dist_timeout",
        )
    return float(value)


def rank_device(requested: str, rank: int, local_rank: int) -> torch.device:
    """The device of one rank: ``cuda:LOCAL_RANK`` for auto (with CUDA) and any cuda request.

    An explicit ``cuda:N`` is taken as "CUDA": with several ranks per machine each needs its own
    GPU.
    """
    from bscrit.specfile.device import parse_device

    kind, _ = parse_device(requested)
    if kind == "cpu" or (kind == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UsageError(f"rank {rank}: device {requested!r}: no CUDA device is available")
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise UsageError(
            f"rank {rank}: LOCAL_RANK={local_rank} but this machine has {count} CUDA device(s); "
            f"start at most {count} processes per machine (--nproc-per-node)"
        )
    return torch.device("cuda", local_rank)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside ``DistributedDataParallel`` / ``DataParallel`` wrappers.

    bscrit computes each rank's batch gradient with ``torch.autograd.grad`` on the inner module, so
    DDP's per-step gradient all_reduce never runs: only the group sums are reduced.

    Raises:
        BscritError: an FSDP-sharded model (every rank needs the full parameters).
    """
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    while isinstance(model, (DataParallel, DistributedDataParallel)):
        model = model.module
    names = {c.__name__ for c in type(model).__mro__}
    if names & {"FullyShardedDataParallel", "FSDPModule"}:
        raise UsageError(
            "model: the factory returned a model already sharded by FSDP; return the plain "
            "module (DistributedDataParallel is unwrapped), and add --shard fsdp to measure it "
            "sharded (docs/distributed.md)"
        )
    return model


def all_reduce_sum(
    tensors: Sequence[Tensor], group: Any = None, bucket_bytes: int = BUCKET_BYTES
) -> None:
    """In-place sum of ``tensors`` across ranks, coalesced into flat buckets of one dtype/device."""
    import torch.distributed as dist

    def flush(bucket: list[Tensor]) -> None:
        if len(bucket) == 1 and bucket[0].is_contiguous():
            dist.all_reduce(bucket[0], group=group)
            return
        flat = torch.cat([t.reshape(-1) for t in bucket])
        dist.all_reduce(flat, group=group)
        offset = 0
        for t in bucket:
            t.copy_(flat[offset : offset + t.numel()].view(t.shape))
            offset += t.numel()

    bucket: list[Tensor] = []
    size = 0
    for t in tensors:
        nbytes = t.numel() * t.element_size()
        if bucket and (
            t.dtype != bucket[0].dtype
            or t.device != bucket[0].device
            or size + nbytes > bucket_bytes
        ):
            flush(bucket)
            bucket, size = [], 0
        bucket.append(t)
        size += nbytes
    if bucket:
        flush(bucket)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    line = text.splitlines()[0] if text else type(e).__name__
    return re.sub(r"^\[[^\]]*\]\s*", "", line) or line  # gloo's "[.../pair.cc:545] " prefix


def _describe_failure(e: BaseException) -> tuple[int, str]:
    """(exit code, message) a failed rank sends to the others: a library error's own; out of
    memory is a runtime failure (3); anything else is a bug in bscrit (4, never 1)."""
    if isinstance(e, BscritError):
        return int(e.exit_code), e.message
    if isinstance(e, torch.cuda.OutOfMemoryError):
        return int(ExitCode.RUNTIME), f"out of memory: {_first_line(e)}"
    return int(ExitCode.INTERNAL), internal_message(e)


def _failure_message(failures: dict[int, tuple[int, str]], world_size: int) -> str:
    """One line per distinct message: "rank 1 failed: ...", or the message alone if all agree."""
    by_message: dict[str, list[int]] = {}
    for r in sorted(failures):
        by_message.setdefault(failures[r][1], []).append(r)
    if len(by_message) == 1 and len(failures) == world_size:
        return next(iter(by_message))  # the same error everywhere (a bad spec, a missing file)
    parts = []
    for message, ranks in list(by_message.items())[:3]:
        who = f"rank {ranks[0]}" if len(ranks) == 1 else "ranks " + ", ".join(map(str, ranks))
        parts.append(f"{who} failed: {message}")
    more = sum(len(r) for r in list(by_message.values())[3:])
    if more:
        parts.append(f"(and {more} more rank(s) failed)")
    return "\n".join(parts)


class DistContext:
    """One rank of a distributed measurement: its device, the loop hooks and the status exchange.

    Attributes:
        rank, world_size, local_rank: from torchrun.
        device: this rank's device (``cuda:LOCAL_RANK`` or ``cpu``).
        backend: of the default process group (``gloo``, or ``cpu:gloo,cuda:nccl`` on GPUs).
        timeout_s: collective timeout.
        hooks: :class:`~bscrit.engine.loop.LoopHooks` dealing out the rows and reducing the sums.
    """

    def __init__(
        self,
        rank: int,
        world_size: int,
        local_rank: int,
        device: torch.device,
        backend: str,
        timeout_s: float,
        control_group: Any = None,
        owns_group: bool = False,
    ) -> None:
        self.rank = rank
        self.world_size = world_size
        self.local_rank = local_rank
        self.device = device
        self.backend = backend
        self.timeout_s = timeout_s
        self.control_group = control_group
        self.owns_group = owns_group
        self.hooks = LoopHooks(local_rows=self.local_rows, reduce=self.reduce)
        self._group_start = 0  # index of the first batch of the current block (all ranks)
        self._next_start = 0

    #: Whether the model is sharded over the ranks (:class:`bscrit.engine.sharded.ShardedContext`).
    sharded = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- the hot loop's hooks -------------------------------------------------------------------

    def local_rows(self, group: int, rows: Tensor) -> Tensor:
        """Rank r computes the batches r, r + W, ... of every block of a group (possibly none)."""
        self._group_start = self._next_start
        self._next_start += len(rows)
        return rows[self.rank :: self.world_size]

    def global_batches(self, message: str) -> str:
        """Rewrite "at batch i" (i counts this rank's batches) to the single-process numbering."""

        def number(m: re.Match[str]) -> str:
            i = int(m.group(1)) - self._group_start
            if i < 0:
                return m.group(0)
            return f"at batch {self._group_start + self.rank + i * self.world_size}"

        return re.sub(r"\bat batch (\d+)", number, message)

    def reduce(self, tensors: list[Tensor]) -> None:
        """Status exchange (raises :class:`PeerFailed` if a rank failed), then sum ``tensors``."""
        self.exchange()
        self.all_sum(tensors)

    def all_sum(self, tensors: list[Tensor], what: str = "summing the group sums") -> None:
        """In-place sum over the ranks, a lost rank reported as such (``what`` was going on)."""
        try:
            all_reduce_sum(tensors)
        except Exception as e:
            raise CollectiveError(self._lost(what, e), dist_timeout="dist_timeout") from None

    # -- arguments of measure_model -------------------------------------------------------------

    def rank_seed(self, seed: int) -> int:
        """Seed of this rank's model randomness (dropout, augmentation); rank 0 keeps ``seed``."""
        return (seed + self.rank * _RANK_SEED_STRIDE) % (1 << 63)

    def measure_kwargs(self, n: int, batch_size: int, k: int, seed: int) -> dict[str, Any]:
        """``seed``, ``batch_rows`` and ``hooks`` for :func:`~bscrit.engine.loop.measure_model`.

        The rows are those one process would draw with ``seed`` (a lazy
        :class:`~bscrit.engine.data.BatchPlan`: never all k rows at once); the model seed is per
        rank.
        """
        self._group_start = self._next_start = 0  # a new checkpoint: batches count from 0
        rows = BatchPlan(n, batch_size, k, seed) if 0 < batch_size <= n else None
        return {"seed": self.rank_seed(seed), "batch_rows": rows, "hooks": self.hooks}

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return unwrap_model(model)

    def load_model(self, spec: Any, path: Any, *, unsafe: bool = False) -> tuple[nn.Module, Any]:
        """The spec's model at checkpoint ``path`` (:func:`bscrit.load.checkpoints.load_model`),
        ready for this rank (:meth:`prepare_model`), and the checkpoint."""
        from bscrit.load.checkpoints import load_model

        model, ckpt = load_model(spec, path, unsafe=unsafe)
        return self.prepare_model(model), ckpt

    def describe(self, batch_size: int) -> dict[str, Any]:
        """The ``extra.distributed`` entry of the measurement JSON."""
        return {
            "world_size": self.world_size,
            "backend": self.backend,
            "unit_of_sampling": f"per-rank batch of B = {batch_size} examples",
            "assignment": "the k batches are drawn from the global seed as in one process; "
            "within each block of a group (the whole group unless it is longer than 1024 batches), "
            "batch i is computed by rank i mod world_size",
            "model_seed": f"seed + rank * {_RANK_SEED_STRIDE} (dropout/augmentation per rank)",
        }

    # -- coordination ---------------------------------------------------------------------------

    def exchange(self, failure: BaseException | None = None) -> None:
        """Tell every rank whether this one failed; raise :class:`PeerFailed` if any did.

        Every rank calls it at the same points (before each reduction, and once at the end); a
        rank that raised elsewhere calls it once with its error, in place of its next reduction.
        """
        import torch.distributed as dist

        status = torch.zeros(self.world_size, 2 + _MSG_BYTES, dtype=torch.uint8)
        if failure is not None:
            code, message = _describe_failure(failure)
            message = self.global_batches(message)
            data = message.encode("utf-8")[:_MSG_BYTES]
            status[self.rank, 0] = 1
            status[self.rank, 1] = min(max(code, 1), 255)
            if data:
                status[self.rank, 2 : 2 + len(data)] = torch.frombuffer(
                    bytearray(data), dtype=torch.uint8
                )
        try:
            dist.all_reduce(status, group=self.control_group)
        except Exception as e:
            raise CollectiveError(
                self._lost("exchanging the status", e), dist_timeout="dist_timeout"
            ) from None
        failed = status[:, 0].nonzero().flatten().tolist()
        if not failed:
            return
        failures = {
            r: (
                int(status[r, 1]),
                bytes(status[r, 2:].tolist()).rstrip(b"\0").decode("utf-8", errors="ignore"),
            )
            for r in failed
        }
        code = failures[min(failed)][0]
        exit_code = ExitCode(code) if code in set(ExitCode) else ExitCode.RUNTIME
        raise PeerFailed(_failure_message(failures, self.world_size), failures, exit_code)

    def ack(self) -> None:
        """A last barrier so that rank 0 has printed the error before any rank exits.

        (torchrun stops every rank as soon as one exits with an error.)
        """
        import torch.distributed as dist

        try:
            dist.all_reduce(torch.zeros(1), group=self.control_group)
        except Exception:
            pass

    def close(self) -> None:
        import torch.distributed as dist

        if self.owns_group and dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception:
                pass

    def _lost(self, what: str, e: BaseException) -> str:
        cause = _first_line(e).split(". ")[0]  # gloo appends advice and a beach emoji
        return (
            f"rank {self.rank}: lost contact with the other ranks while {what} "
            f"({cause}): another rank crashed, was killed or is stuck (collective "
            f"timeout {self.timeout_s:g} s; set it with {{dist_timeout}} or {ENV_TIMEOUT})"
        )
