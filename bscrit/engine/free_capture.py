"""Read the slice gradients a training step computes anyway, without changing the step.

docs/api.md "Free mode", docs/theory.md §8 ("Several batch gradients inside one step"). The math
is in :mod:`bscrit.stats.free`; this module only collects, per optimizer step, the two sums
it needs: Σ_j ‖h_j‖² over the step's M slice gradients and ‖h̄‖² of their mean.

Two sources of slices:

- **Gradient accumulation** (one process): micro-batch j's gradient is the change of the
  accumulated ``.grad`` during its backward pass, ``Δ_j = .grad_after − .grad_before``, read
  against one flat buffer the size of the trainable parameters (the previous ``.grad``), with
  ``torch._foreach`` ops: no M gradients kept. By default (``boundaries="hooks"``) a
  post-accumulate-grad hook on every parameter queues one callback at the end of each backward
  pass, so the reading happens inside ``backward()``, before any gradient clipping (the HF
  Trainer clips before any callback sees the last micro-batch). ``boundaries="manual"``: call
  :meth:`FreeCapture.on_backward_end` after each backward instead.
- **DDP ranks** (a ``DistributedDataParallel`` model with ≥ 2 ranks): each rank's local gradient
  (its micro-batches merged) is read in a DDP communication hook, the squared norm of each local
  bucket before the default all-reduce and of the averaged bucket after it. Ranks are the slices
  (M = world size, b = micro-batch × local micro-batches); :meth:`FreeCapture.estimate` sums the
  ranks' values in one all-reduce per window, so every rank must call it.

Scale convention (``accumulation``): ``"mean"`` (the HF Trainer, Lightning's
``accumulate_grad_batches``, a loop that divides each micro-batch loss by M): the step gradient is
the mean of the micro-batch gradients, so g_j = M·Δ_j; ``"sum"`` (the loss not divided):
g_j = Δ_j and the step gradient is (1/M)·Σ_j g_j. Either way g_j is the gradient of the
micro-batch's *mean* loss, as :mod:`bscrit.stats.free` needs. A loss normalised by a token
count over the whole step (HF ``num_items_in_batch``) weighs micro-batches by their token counts:
"mean" is then exact only when they hold equal counts.

Guarantees: ``.grad``, the weights, buffers, RNG and optimizer state are never written (a test
compares a run with and without the capture bitwise). The capture assumes ``.grad`` is zero or
None when each step's first micro-batch starts (``zero_grad`` after every optimizer step).
With fp16 loss scaling, G and N carry the scale² (NSR and B* do not, if the scale is constant);
steps whose sums are not finite (skipped by the scaler) are dropped.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from bscrit.errors import UsageError
from bscrit.stats.free import Drift, FreeEstimate, FreeStep, check_step, pool_steps
from bscrit.theory.formulas import DEFAULT_C2

Accumulation = Literal["mean", "sum"]


@dataclass
class _Group:
    """Parameters sharing a device and dtype, with their flat previous-``.grad`` buffer."""

    params: list[nn.Parameter]
    views: list[torch.Tensor]
    buffer: torch.Tensor


@dataclass
class _Pending:
    """One recorded step; the sums stay on the device until :meth:`FreeCapture.estimate`."""

    sum_sq: torch.Tensor  # norms of the Δ_j's pieces (accumulation) or local ‖g_r‖² (ranks)
    mean_sq: torch.Tensor  # norms of Σ_j Δ_j's pieces (accumulation) or ‖h̄‖² (ranks)
    slices: int
    slice_size: int
    scale: float  # accumulation: g_j = scale·Δ_j
    step: int | None
    examples_seen: int | None
    epoch_start: bool = False


def _is_ddp(model: Any) -> bool:
    return isinstance(model, nn.parallel.DistributedDataParallel)


def _world_size() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _norm_dtype(tensors: list[torch.Tensor]) -> torch.dtype:
    """float64 for float64 tensors, else float32 (a bf16 norm has 3 digits: s² would cancel)."""
    return torch.float64 if tensors and tensors[0].dtype == torch.float64 else torch.float32


def _sq_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Σ ‖t‖² over tensors, as a float64 scalar on their device (norms: :func:`_norm_dtype`)."""
    norms = torch._foreach_norm(tensors, 2, dtype=_norm_dtype(tensors))
    return torch.stack(norms).double().square().sum()


def _norms(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The tensors' norms as one vector on their device (two dispatches: a training step's
    reading stays cheap on small models); squared and summed in float64 on the host later."""
    return torch.stack(torch._foreach_norm(tensors, 2, dtype=_norm_dtype(tensors)))


class FreeCapture:
    """Collect the free mode's per-step sums from a training loop (module docstring).

    Args:
        model_or_params: an ``nn.Module`` (its ``requires_grad`` parameters), a
            ``DistributedDataParallel`` model (ranks are the slices when there are ≥ 2), or an
            iterable of parameters.
        dataset_size: n, the training examples the slices are drawn from (one shuffle); None for
            an infinite stream.
        accumulation: ``"mean"`` (default) or ``"sum"``: how the step gradient is formed from the
            micro-batch gradients (module docstring).
        boundaries: ``"hooks"`` (default): micro-batch ends are found inside ``backward()``;
            ``"manual"``: call :meth:`on_backward_end` after each micro-batch's backward.
        track_drift: keep a host copy of the weights at the window's first step to report how
            far they move (:class:`~bscrit.stats.free.Drift`).
        stride: read every ``stride``-th step only (the others cost nothing but a counter):
            divides the overhead by ``stride`` and the steps pooled per window alike.
        within_epoch: with a finite ``dataset_size`` and epochs marked by :meth:`epoch_begin`,
            read the steps inside the epochs too and pool them all, labelled ``within_epoch``
            (biased along training, :data:`bscrit.stats.free.REGIMES`); default: first steps only.

    Example::

        cap = FreeCapture(model, dataset_size=len(train_set))
        for step, batches in enumerate(steps):            # M micro-batches of b examples
            for x, y in batches:
                (loss_fn(model(x), y) / M).backward()
            cap.on_step_end(micro_batch_size=b, step=step)   # before clipping and step()
            opt.step(); opt.zero_grad()
        print(cap.estimate().to_dict())
    """

    def __init__(
        self,
        model_or_params: nn.Module | Iterable[torch.Tensor],
        *,
        dataset_size: int | None = None,
        accumulation: Accumulation = "mean",
        boundaries: Literal["hooks", "manual"] = "hooks",
        track_drift: bool = True,
        stride: int = 1,
        within_epoch: bool = False,
    ) -> None:
        if accumulation not in ("mean", "sum"):
            raise UsageError(f"accumulation must be 'mean' or 'sum', got {accumulation!r}")
        if boundaries not in ("hooks", "manual"):
            raise UsageError(f"boundaries must be 'hooks' or 'manual', got {boundaries!r}")
        if stride < 1:
            raise UsageError(f"stride must be >= 1, got {stride}")
        if dataset_size is not None and dataset_size < 2:
            raise UsageError(f"dataset_size must be >= 2 or None, got {dataset_size}")
        src = model_or_params
        params = src.parameters() if isinstance(src, nn.Module) else src
        self.params: list[nn.Parameter] = [p for p in params if p.requires_grad]
        if not self.params:
            raise UsageError("FreeCapture: no trainable parameters (requires_grad) to read")
        self.dataset_size = dataset_size
        self.accumulation: Accumulation = accumulation
        self.boundaries = boundaries
        self.track_drift = track_drift
        self.stride, self.within_epoch = stride, within_epoch
        self._epoch_next = self._epochs_marked = False  # epoch_begin() before this step / ever
        self._step_calls = 0  # on_step_end calls: step number modulo stride decides reading
        self.ranks = _world_size() if _is_ddp(src) else 1
        self._groups: list[_Group] = []
        if self.ranks < 2:
            self._make_buffers()
        else:
            try:
                src.register_comm_hook(None, self._comm_hook)  # type: ignore[union-attr]
            except RuntimeError as e:  # DDP takes one hook, registered before the first backward
                raise UsageError(
                    f"FreeCapture: cannot add its DDP communication hook ({e}); create the "
                    "capture before training starts, on a model without a communication hook"
                ) from e
        self._handles: list[Any] = []
        self._queued = False
        self._paused = False
        self._fresh = True  # the next micro-batch starts a step (its buffer content is stale)
        self._count = 0
        self._acc: list[torch.Tensor] = []
        self._local: list[torch.Tensor] = []  # ranks: per-bucket local ‖·‖² of this step
        self._global: list[torch.Tensor] = []  # ranks: per-bucket ‖averaged‖² of this step
        self._sizes: set[int] = set()
        self._pending: list[_Pending] = []
        self._skipped = 0
        self._snapshot: list[torch.Tensor] | None = None
        self._norm_sq_start: float | None = None
        if boundaries == "hooks":
            for p in self.params:
                self._handles.append(p.register_post_accumulate_grad_hook(self._grad_hook))

    # ------------------------------------------------------------------------------------------
    # set-up and tear-down
    # ------------------------------------------------------------------------------------------

    def _make_buffers(self) -> None:
        by_key: dict[tuple[torch.device, torch.dtype], list[nn.Parameter]] = {}
        for p in self.params:
            by_key.setdefault((p.device, p.dtype), []).append(p)
        for (device, dtype), ps in by_key.items():
            buf = torch.zeros(sum(p.numel() for p in ps), dtype=dtype, device=device)
            views, off = [], 0
            for p in ps:
                views.append(buf[off : off + p.numel()].view_as(p))
                off += p.numel()
            self._groups.append(_Group(ps, views, buf))

    @property
    def buffer_bytes(self) -> int:
        """Device memory of the previous-``.grad`` buffers (0 with DDP ranks)."""
        return sum(g.buffer.numel() * g.buffer.element_size() for g in self._groups)

    def close(self) -> None:
        """Remove the hooks (a DDP communication hook cannot be removed; it keeps reading)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self) -> FreeCapture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Backward passes inside this block are not micro-batches of the step (e.g. a
        measurement of the every-n-steps mode on the same model)."""
        self._paused, before = True, self._paused
        try:
            yield
        finally:
            self._paused = before

    # ------------------------------------------------------------------------------------------
    # micro-batches
    # ------------------------------------------------------------------------------------------

    def _grad_hook(self, _param: torch.Tensor) -> None:
        if self._paused or self._queued:
            return
        self._queued = True
        torch.autograd.Variable._execution_engine.queue_callback(self._backward_done)

    def _backward_done(self) -> None:
        self._queued = False
        self._read_micro_batch()

    def on_backward_end(self, examples: int | None = None) -> None:
        """After each micro-batch's backward (``boundaries="manual"``); with hooks, only records
        ``examples`` (the micro-batch's size, to skip steps with unequal slices)."""
        if examples is not None:
            self._sizes.add(int(examples))
        if self.boundaries == "manual" and not self._paused:
            self._read_micro_batch()

    def epoch_begin(self) -> None:
        """A new shuffle of the finite data set starts (before the epoch's first backward): its
        first step is read whatever the stride, and pooling keeps only epochs' first steps, the
        ones independent of the weights (:func:`bscrit.stats.free.select_steps`)."""
        self._epoch_next = self._epochs_marked = True

    @property
    def _reading(self) -> bool:
        if self._epoch_next:
            return True
        if self._epochs_marked and self.dataset_size is not None and not self.within_epoch:
            return False  # inside an epoch: not pooled, not read
        return self._step_calls % self.stride == 0

    def _read_micro_batch(self) -> None:
        self._count += 1
        if not self._reading:
            return
        fresh, self._fresh = self._fresh, False
        for g in self._groups:
            have = [(v, p.grad) for v, p in zip(g.views, g.params) if p.grad is not None]
            if fresh:  # the step's first micro-batch: .grad was zero before it, Δ_1 = .grad
                for v, p in zip(g.views, g.params):
                    if p.grad is None:
                        v.zero_()
            if not have:
                continue
            prev = [v for v, _ in have]
            grads = [gr.detach() for _, gr in have]
            if fresh:
                self._acc.append(_norms(grads))
            else:
                torch._foreach_sub_(prev, grads)  # prev ← prev − .grad = −Δ_j
                self._acc.append(_norms(prev))
            torch._foreach_copy_(prev, grads)

    # ------------------------------------------------------------------------------------------
    # DDP: ranks are the slices
    # ------------------------------------------------------------------------------------------

    def _comm_hook(self, state, bucket):  # type: ignore[no-untyped-def]
        # no annotations: DDP checks them against dist.GradBucket / Future, and this module's
        # annotations are strings (from __future__ import annotations)
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        if not self._reading:
            return allreduce_hook(state, bucket)
        self._local.append(_sq_norm([bucket.buffer().detach()]))

        def after(fut: torch.futures.Future[torch.Tensor]) -> torch.Tensor:
            t = fut.value()
            self._global.append(_sq_norm([t.detach()]))  # list.append: thread-safe
            return t

        return allreduce_hook(state, bucket).then(after)

    # ------------------------------------------------------------------------------------------
    # steps
    # ------------------------------------------------------------------------------------------

    def on_step_end(
        self,
        micro_batch_size: int,
        *,
        step: int | None = None,
        examples_seen: int | None = None,
    ) -> None:
        """After the step's last backward, before clipping, ``optimizer.step()`` and
        ``zero_grad()``: record the step's sums and start the next step.

        Args:
            micro_batch_size: b, examples per micro-batch (per rank and micro-batch with DDP).
            step: the optimizer steps taken before this one, for the pooled window's report.
            examples_seen: training examples before this step.
        """
        count, sizes = self._count, self._sizes
        self._count, self._sizes, self._fresh = 0, set(), True
        reading, first = self._reading, self._epoch_next
        self._step_calls, self._epoch_next = self._step_calls + 1, False
        if not reading:
            self._local, self._global = [], []
            return
        if self.ranks >= 2:
            local, glob = self._local, self._global
            self._local, self._global = [], []
            if not local or len(sizes) > 1 or count < 1:
                self._skipped += 1
                return
            slices, size = self.ranks, micro_batch_size * count
            # "mean": the rank's bucket is its slice gradient; "sum": count × it
            scale = 1.0 if self.accumulation == "mean" else 1.0 / count
            sum_sq = torch.stack(local).sum() * scale**2
            mean_sq = torch.stack(glob).sum() * scale**2 if glob else sum_sq * math.nan
            self._note_drift()
            pend = _Pending(sum_sq, mean_sq, slices, size, 1.0, step, examples_seen, first)
            self._pending.append(pend)
            return
        acc = self._acc
        self._acc = []
        if count < 2 or len(sizes) > 1:
            self._skipped += 1
        else:
            check_step(count, micro_batch_size, self.dataset_size, "FreeCapture")
            total = _norms([g.buffer for g in self._groups])  # ‖Σ_j Δ_j‖², in pieces
            scale = float(count) if self.accumulation == "mean" else 1.0
            self._note_drift()
            self._pending.append(
                _Pending(
                    torch.cat([a.to(total.device) for a in acc]),
                    total,
                    count,
                    micro_batch_size,
                    scale,
                    step,
                    examples_seen,
                    first,
                )
            )

    def _note_drift(self) -> None:
        if self.track_drift and self._snapshot is None:
            with torch.no_grad():
                xs = [p.detach() for p in self.params]
                self._snapshot = [x.to("cpu", copy=True) for x in xs]
                self._norm_sq_start = float(_sq_norm(xs))

    @property
    def steps_recorded(self) -> int:
        """Steps recorded since the last :meth:`reset` (skipped ones not counted)."""
        return len(self._pending)

    @property
    def epoch_starts_recorded(self) -> int:
        """Recorded steps that opened an epoch (:meth:`epoch_begin`)."""
        return sum(p.epoch_start for p in self._pending)

    def reset(self) -> None:
        """Forget the recorded steps and the drift snapshot: the next window starts."""
        self._pending.clear()
        self._skipped = 0
        self._snapshot = None
        self._norm_sq_start = None

    # ------------------------------------------------------------------------------------------
    # the estimate
    # ------------------------------------------------------------------------------------------

    def steps(self) -> tuple[list[FreeStep], int]:
        """The recorded steps with sums in the estimators' convention (g_j of the mean slice loss),
        and how many were skipped (non-finite sums included). With DDP ranks this all-reduces."""
        if not self._pending:
            return [], self._skipped
        # one transfer: every step's pieces, then Σ piece² per step in float64 on the host
        pieces = [t for p in self._pending for t in (p.sum_sq.reshape(-1), p.mean_sq.reshape(-1))]
        dev = pieces[0].device
        flat = torch.cat([t.detach().to(dev, torch.float64) for t in pieces]).cpu()
        sums = [float(x.sum()) for x in flat.split([t.numel() for t in pieces])]
        if self.ranks >= 2:  # already squared norms (float64 scalars)
            raw = torch.tensor(sums, dtype=torch.float64).reshape(-1, 2)
        else:
            sq = [float(x.square().sum()) for x in flat.split([t.numel() for t in pieces])]
            raw = torch.tensor(sq, dtype=torch.float64).reshape(-1, 2)
        if self.ranks >= 2:
            dist = torch.distributed
            local = raw[:, 0].clone()
            device = self._pending[0].sum_sq.device
            if dist.get_backend() == "nccl":
                local = local.to(device)
            dist.all_reduce(local)  # Σ_r ‖g_r‖² per step
            raw[:, 0] = local.cpu()
        out, skipped = [], self._skipped
        for p, (q, t) in zip(self._pending, raw.tolist()):
            if self.ranks >= 2:
                sum_sq, mean_sq = q, t
            elif self.accumulation == "mean":  # g_j = M Δ_j, h̄ = Σ Δ_j
                sum_sq, mean_sq = q * p.scale**2, t
            else:  # g_j = Δ_j, h̄ = (1/M) Σ Δ_j
                sum_sq, mean_sq = q, t / p.slices**2
            if not (math.isfinite(sum_sq) and math.isfinite(mean_sq)):
                skipped += 1
                continue
            out.append(
                FreeStep(
                    sum_sq, mean_sq, p.slices, p.slice_size, p.step, p.examples_seen, p.epoch_start
                )
            )
        return out, skipped

    def drift(self) -> Drift | None:
        """‖x_now − x_start‖/‖x_start‖ and ‖x‖² at both ends (None without a snapshot)."""
        if self._snapshot is None or not self._norm_sq_start:
            return None
        with torch.no_grad():
            xs = [p.detach() for p in self.params]
            diff = _sq_norm(
                torch._foreach_sub(xs, [s.to(x.device) for s, x in zip(self._snapshot, xs)])
            )
            end = float(_sq_norm(xs))
        return Drift(math.sqrt(float(diff) / self._norm_sq_start), self._norm_sq_start, end)

    def estimate(
        self,
        *,
        batch_size: int | None = None,
        c2: float = DEFAULT_C2,
        relaxation_steps: float | None = None,
        reset: bool = False,
        pool: str | None = None,
    ) -> FreeEstimate:
        """Pool the recorded steps (:func:`~bscrit.stats.free.pool_steps`).

        Call it right after a step's :meth:`on_step_end` (before ``optimizer.step()``) for the
        drift to end at the last pooled gradient. With DDP ranks every rank must call it.

        Args:
            batch_size: B at which N, NSR and B* are reported (default: the step's batch M·b).
            c2: C² of [LMA21].
            relaxation_steps: τ = 1/(2ηλ) (:func:`bscrit.stats.equilibrium.relaxation_steps`).
            reset: start a new window afterwards.
            pool: ``"auto"`` or ``"all"`` (:func:`~bscrit.stats.free.select_steps`); default
                ``"all"`` with ``within_epoch=True``, else ``"auto"``.

        Raises:
            UsageError: fewer than 2 recorded steps (epoch starts, when epochs are marked).
        """
        steps, skipped = self.steps()
        est = pool_steps(
            steps,
            self.dataset_size,
            batch_size=batch_size,
            c2=c2,
            relaxation_steps=relaxation_steps,
            drift=self.drift(),
            skipped=skipped,
            pool=pool or ("all" if self.within_epoch else "auto"),
        )
        if reset:
            self.reset()
        return est
