"""Joining and leaving a torchrun measurement: :func:`init` joins the process group (gloo for the
CPU and the status messages, NCCL for CUDA sums), :class:`Session` wraps one measurement so that a
failing rank stops every rank with one message (:mod:`bscrit.engine.distributed` has the protocol).
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from datetime import timedelta
from types import TracebackType

import torch

from bscrit.engine.distributed import (
    CollectiveError,
    DistContext,
    PeerFailed,
    _describe_failure,
    _first_line,
    detect,
    rank_device,
    timeout_seconds,
)
from bscrit.errors import BscritError, MeasurementError, UsageError, debug_enabled


def init(
    device: str,
    timeout: float | None = None,
    env: tuple[int, int, int] | None = None,
    *,
    shard: str | None = None,
    blocks: tuple[str, ...] | None = None,
) -> DistContext | None:
    """Join the torchrun process group; None outside a distributed launch.

    gloo carries CPU tensors (and the status messages, with a real timeout); NCCL the CUDA sums.
    An existing default process group (initialised by the caller) is reused and left open.
    ``shard="fsdp"``: a :class:`~bscrit.engine.sharded.ShardedContext` (``blocks``: the spec's
    ``measure.shard_blocks``); outside torchrun it is a world of one process.
    """
    env = env if env is not None else detect()
    store: dict = {}
    if shard is not None:
        from bscrit.engine.sharded import require_fully_shard

        require_fully_shard()
        if env is None:  # one process: a process group of its own, over an in-memory store
            import torch.distributed as dist

            env, store = (0, 1, 0), {"store": dist.HashStore(), "rank": 0, "world_size": 1}
    if env is None:
        return None
    import torch.distributed as dist

    if not dist.is_available():
        raise UsageError("distributed: this torch build has no torch.distributed")
    rank, world, local = env
    timeout_s = timeout_seconds(timeout)
    dev = rank_device(device, rank, local)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    owns = not dist.is_initialized()
    if owns:
        backend = "cpu:gloo,cuda:nccl" if dev.type == "cuda" else "gloo"
        try:
            dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s), **store)
        except Exception as e:
            raise MeasurementError(
                f"rank {rank}: cannot join the process group of {world} ranks "
                f"({_first_line(e)}); start bscrit with torchrun (or bscrit measure --nproc N)"
            ) from None
    backend = str(dist.get_backend())
    control = None
    if "gloo" not in backend:  # a caller's NCCL-only group: status messages need a CPU backend
        control = dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout_s))
    if shard is not None:
        from bscrit.engine.sharded import ShardedContext

        return ShardedContext(
            rank, world, local, dev, backend, timeout_s, control, owns, blocks=blocks
        )
    return DistContext(rank, world, local, dev, backend, timeout_s, control, owns)


class Session:
    """Context manager around one distributed measurement (a no-op outside torchrun).

    ``with Session(device) as dist:`` yields a :class:`DistContext`, or None in one process. On
    leaving, the ranks check once more that none failed. When one did, every rank raises the same
    :class:`PeerFailed` (or its own error); rank 0 first hands the message to ``on_error`` (and
    marks the error ``reported``), then all ranks pass a last barrier, so that the message is
    printed before torchrun stops the processes.
    """

    def __init__(
        self,
        device: str,
        timeout: float | None = None,
        *,
        on_error: Callable[[str], None] | None = None,
        shard: str | None = None,
        blocks: tuple[str, ...] | None = None,
    ) -> None:
        self.device = device
        self.timeout = timeout
        self.on_error = on_error
        self.shard, self.blocks = shard, blocks  # --shard fsdp, measure.shard_blocks
        self.ctx: DistContext | None = None

    def __enter__(self) -> DistContext | None:
        self.ctx = init(self.device, self.timeout, shard=self.shard, blocks=self.blocks)
        return self.ctx

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        ctx = self.ctx
        if ctx is None:
            return False
        try:
            self._settle(ctx, exc)
        finally:
            ctx.close()
        return False

    def _settle(self, ctx: DistContext, exc: BaseException | None) -> None:
        """Raise the error every rank agrees on (or nothing if all went well)."""
        own: BaseException | None = None
        if exc is None:
            try:
                ctx.exchange()  # a rank may have failed after the last reduction
                return
            except PeerFailed as e:
                peer = e
            except CollectiveError as e:
                self._say(ctx, e.message)
                raise
        elif not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit: every rank gets it
            return
        elif isinstance(exc, CollectiveError):
            self._say(ctx, exc.message)
            return
        elif isinstance(exc, PeerFailed):
            peer = exc
        else:
            own = exc
            if not isinstance(exc, BscritError) and debug_enabled():  # a bug: --debug's trace
                traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
            try:
                ctx.exchange(exc)
                raise AssertionError("unreachable: this rank failed")  # pragma: no cover
            except PeerFailed as e:
                peer = e
            except CollectiveError as e:
                msg = f"rank {ctx.rank} failed: {_describe_failure(exc)[1]}; and {e.message}"
                self._say(ctx, msg)
                raise CollectiveError(msg) from None
        final: BscritError = peer
        if (
            isinstance(own, BscritError)
            and ctx.is_main
            and set(peer.failures) == set(range(ctx.world_size))
            and peer.message == own.message
        ):
            final = own  # the same error on every rank: keep rank 0's own (type, exit code)
        if ctx.is_main and self.on_error is not None:
            self.on_error(final.message)
            final.reported = True  # type: ignore[attr-defined]
        ctx.ack()
        if final is exc:
            return  # the with-statement re-raises it
        raise final from None

    @staticmethod
    def _say(ctx: DistContext, message: str) -> None:
        """Other ranks are silent; a lost-contact error is worth a line from each of them."""
        if not ctx.is_main:
            print(f"error: {message}", file=sys.__stderr__, flush=True)
