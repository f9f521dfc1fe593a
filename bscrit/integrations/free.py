"""``mode="free"`` of the callbacks, whatever the framework (docs/free.md).

The callback creates a :class:`FreeWindow` when training starts. A
:class:`~bscrit.engine.free_capture.FreeCapture` reads every optimizer step's micro-batch gradients
inside ``backward()`` (or the DDP ranks' in a communication hook); the callback calls
:meth:`FreeWindow.step_end` once per optimizer step, after the last backward and before the
optimizer step, and :meth:`FreeWindow.epoch_begin` when an epoch starts (on a data set with a
length only the epochs' first steps are then read and pooled: docs/free.md "Regimes"). Every
``every_n_steps`` steps the window is pooled, once it holds 2 epochs' first steps if epochs
are marked (:func:`~bscrit.stats.free.pool_steps`, intervals over blocks of steps, the
relaxation time 1/(2ηλ) read from the live optimizer when bscrit knows it), one line is
appended to
``out_dir/series.jsonl`` (:func:`free_series_row`: the keys of
:data:`~bscrit.integrations.recorder.SERIES_KEYS`, then ``"mode": "free"``, the weight drift and
the whole estimate) and the metrics to log are returned. With DDP every rank pools (one
all-reduce per window); only rank 0 writes.

Imports neither torch nor a framework at module level.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bscrit.artifacts.files import append_line
from bscrit.artifacts.jsonvalues import finite_or_none, finite_pair
from bscrit.errors import UsageError
from bscrit.integrations.recorder import SERIES_FILE, check_every

if TYPE_CHECKING:
    from bscrit.engine.free_capture import FreeCapture
    from bscrit.stats.free import FreeEstimate


def free_series_row(
    est: FreeEstimate, seconds: float, optimizer: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One ``series.jsonl`` line of a pooled window: the every-n-steps keys first (``step`` is
    the window's last step, ``file`` is null), then ``mode``, ``optimizer`` (the live optimizer
    as a measurement JSON records it, read at the window's end; null when unknown: ``bscrit
    schedule`` scales it), ``drift`` and ``free`` (the whole
    :meth:`~bscrit.stats.free.FreeEstimate.to_dict`)."""
    return {
        "step": est.last_step,
        "examples_seen": est.examples_seen,
        "G": finite_or_none(est.G.value),
        "N": finite_or_none(est.N.value),
        "nsr": finite_or_none(est.nsr),
        "b_star": finite_or_none(est.b_star),
        "b_star_ci95": finite_pair(est.b_star_ci95),
        "G_ci95": finite_pair(est.G.ci95),
        "N_ci95": finite_pair(est.N.ci95),
        "nsr_ci95": finite_pair(est.nsr_ci95),
        "batch_size": est.batch_size,
        "seconds": seconds,
        "param_set": "all",
        "file": None,
        "mode": "free",
        "optimizer": optimizer,
        "regime": est.regime,  # docs/free.md "Regimes"; est.covered: backed along training
        "drift": None if est.drift is None else est.drift.to_dict(),
        "free": est.to_dict(),
    }


def dataset_size(loader: Any) -> int | None:
    """n of a DataLoader's (or a Dataset's) map-style dataset; None when it has no length."""
    ds = getattr(loader, "dataset", loader)
    try:
        return int(len(ds))
    except TypeError:
        return None


def batch_length(batch: Any) -> int | None:
    """Examples in a batch: the length of its first tensor (a tensor, a tuple/list, a dict)."""
    first = batch
    for _ in range(4):
        if isinstance(first, (list, tuple)) and first:
            first = first[0]
        elif isinstance(first, dict) and first:
            first = next(iter(first.values()))
        else:
            break
    shape = getattr(first, "shape", None)
    return int(shape[0]) if shape else None


class FreeWindow:
    """The free mode of one run: the capture, the window, the series (module docstring).

    Args:
        out_dir: where ``series.jsonl`` goes (created on the first line).
        every_n_steps: optimizer steps per pooled window (at least 2).
        c2: C² of [LMA21] for B*.
        stride: read every ``stride``-th step only
            (:class:`~bscrit.engine.free_capture.FreeCapture`).
    """

    def __init__(
        self, out_dir: str | os.PathLike[str], every_n_steps: int, *, c2: float, stride: int = 1
    ) -> None:
        self.out_dir = Path(out_dir)
        self.every_n_steps = check_every(every_n_steps)
        if self.every_n_steps < 2 * stride:
            raise UsageError(
                f"every_n_steps: mode='free' pools a window of steps, at least 2 read ones; got "
                f"every_n_steps={every_n_steps} with stride={stride}"
            )
        self.c2, self.stride = c2, stride
        self.capture: FreeCapture | None = None
        self.batch_size = self.micro_batch_size = 0
        self.tau: float | None = None
        self.live_optimizer: tuple[Any, Any] | None = None  # (module, optimizer)
        self.rows: list[dict[str, Any]] = []
        self._calls = 0  # optimizer steps in the current window
        self._epochs = False  # epoch_begin() called: windows pool epochs' first steps

    def start(
        self,
        model: Any,
        *,
        optimizer: Any,
        dataset_size: int | None,
        batch_size: int,
        micro_batch_size: int,
        slices: int,
        boundaries: str = "hooks",
    ) -> None:
        """Create the capture (before the first backward); refuse what cannot work.

        Args:
            model: the module, or the DDP-wrapped module (ranks are then the slices).
            optimizer: the live optimizer (its parameters are read; its η, λ give τ), or None.
            dataset_size: n, None for a stream.
            batch_size: B, the examples of one optimizer step (all ranks).
            micro_batch_size: b, the examples of one forward/backward on one rank.
            slices: micro-batches × ranks per optimizer step (must be ≥ 2).
            boundaries: ``"hooks"`` (read inside backward) or ``"manual"`` (the callback calls
                :meth:`backward_end` after each micro-batch's backward).
        """
        from bscrit.engine.free_capture import FreeCapture
        from bscrit.stats.equilibrium import relaxation_steps

        if slices < 2:
            raise UsageError(
                "mode='free' reads the several gradients of one optimizer step: it needs gradient "
                "accumulation (≥ 2 micro-batches) or ≥ 2 DDP ranks; use mode='every_n'"
            )
        if dataset_size is not None and batch_size > dataset_size:
            raise UsageError(
                f"mode='free': the batch of {batch_size} examples exceeds the dataset's "
                f"{dataset_size}"
            )
        params: Any = model
        ddp = hasattr(model, "register_comm_hook")
        if optimizer is not None:
            from bscrit.workflows.live import optimizer_selection, unwrap_optimizer

            inner = model.module if ddp else model
            view = optimizer_selection(inner, optimizer)
            self.live_optimizer = (inner, optimizer)  # read again at each window's end
            self.tau = relaxation_steps(view.info)[0] if view.info is not None else None
            if not ddp:  # the parameters the optimizer updates
                ids = {id(p) for g in unwrap_optimizer(optimizer).param_groups for p in g["params"]}
                params = [p for p in model.parameters() if id(p) in ids and p.requires_grad]
        self.capture = FreeCapture(
            params,
            dataset_size=dataset_size,
            stride=self.stride,
            boundaries=boundaries,  # type: ignore[arg-type]
        )
        self.batch_size, self.micro_batch_size = batch_size, micro_batch_size

    def epoch_begin(self) -> None:
        """An epoch of a reshuffled finite data set starts: pool its first step only (the one
        whose slices are independent of the weights, docs/free.md "Regimes")."""
        self._epochs = True
        if self.capture is not None:
            self.capture.epoch_begin()

    def backward_end(self, examples: int | None) -> None:
        """After a micro-batch's backward, with its size (steps with unequal ones are skipped):
        reads it with ``boundaries="manual"``, records the size only with hooks."""
        if self.capture is not None:
            self.capture.on_backward_end(examples=examples)

    def step_end(
        self, step: int, examples_seen: int | None, write: bool
    ) -> dict[str, float] | None:
        """After the step's last backward, before the optimizer step: record it; at the end of a
        window pool it, append the series line (``write``: rank 0) and return the metrics to
        log (``bscrit/nsr_raw``, ``bscrit/b_star_raw``, ``bscrit/drift``, …), else None.
        ``step`` is the trainer's number of this optimizer step (1 for the first: the
        callbacks pass the global step + 1, as it will read after the update)."""
        cap = self.capture
        if cap is None:
            return None
        cap.on_step_end(self.micro_batch_size, step=step, examples_seen=examples_seen)
        self._calls += 1
        if self._calls < self.every_n_steps:
            return None
        self._calls = 0
        if self._epochs and cap.dataset_size is not None and cap.epoch_starts_recorded < 2:
            return None  # fewer than 2 epochs' first steps: the window goes on
        t0 = time.perf_counter()
        try:
            est = cap.estimate(
                batch_size=self.batch_size, c2=self.c2, relaxation_steps=self.tau, reset=True
            )
        except UsageError as e:  # a window of skipped steps: say so, keep training
            cap.reset()
            warnings.warn(f"bscrit free mode, window ending at step {step}: {e}", stacklevel=2)
            return None
        row = free_series_row(est, time.perf_counter() - t0, self.optimizer_record())
        self.rows.append(row)
        if write:
            append_line(self.out_dir / SERIES_FILE, json.dumps(row, allow_nan=False))
        drift = est.drift.relative if est.drift is not None else math.nan
        return {
            "bscrit/nsr_raw": est.nsr,  # the names of recorder.METRICS, as in every-n mode
            "bscrit/b_star_raw": est.b_star,
            "bscrit/drift": drift,
            "bscrit/free_covered": float(est.covered),  # 0: regime "within_epoch", biased
        }

    def optimizer_record(self) -> dict[str, Any] | None:
        """The live optimizer's record (:func:`bscrit.workflows.live.optimizer_selection`, as
        ``bscrit measure`` writes it; its values now), None without a known optimizer."""
        if self.live_optimizer is None:
            return None
        from bscrit.workflows.live import optimizer_selection

        info = optimizer_selection(*self.live_optimizer).info
        return info.to_dict() if info is not None else None

    def close(self) -> None:
        """Remove the hooks; warn when epochs were marked and no window could be pooled."""
        cap = self.capture
        if cap is None:
            return
        cap.close()
        if self._epochs and cap.dataset_size is not None and not self.rows:
            warnings.warn(
                f"bscrit free mode wrote no window: on a data set with a length only each "
                f"epoch's first step is independent of the weights, and a window needs 2 of them "
                f"({cap.epoch_starts_recorded} in the last one); train over more epochs, or for "
                "a single pass use a data set without a length (a stream), docs/free.md "
                '"Regimes"',
                stacklevel=2,
            )
