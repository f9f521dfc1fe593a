"""``BscritCallback`` for the Hugging Face ``Trainer``: measure the gradient noise every n steps.

::

    from bscrit.integrations.transformers import BscritCallback

    trainer = Trainer(..., callbacks=[BscritCallback("bscrit-out", every_n_steps=500)])

After every n-th optimizer step (``on_step_end``: ``state.global_step`` has moved, the weights
are the new ones) it measures the model on the Trainer's training dataset, collated by the
Trainer's own collator, with :func:`bscrit.measure` (the loss: the model's own
``output.loss``, ``model(**batch)``), writes ``out_dir/step-XXXXXXX.json`` and a line of
``out_dir/series.jsonl`` (:mod:`bscrit.integrations.recorder`), and logs the metrics of
:data:`~bscrit.integrations.recorder.METRICS` (``bscrit/nsr_raw``, ``bscrit/b_star_raw``, …) at
the Trainer's ``state.global_step``: appended to ``state.log_history`` (kept in
``trainer_state.json``) and added to the ``logs`` of the Trainer's own log call at that step
(the callback sets ``control.should_log``), which the ``report_to`` integrations write
(TensorBoard and W&B as ``train/bscrit/...``). The Trainer calls callbacks in the order of its list,
``report_to`` ones before the user's, so when training starts the callback moves itself to the
front of that list (:func:`_to_front`; a warning when it cannot). Only the main process
measures and writes. The run itself is unchanged (same final weights).

Needs transformers (``pip install 'bscrit[hf]'``; the ``Trainer`` itself needs accelerate).
"""

from __future__ import annotations

import os
import warnings
from typing import Any

try:
    from transformers import TrainerCallback
except ImportError:
    raise ImportError(
        "bscrit.integrations.transformers needs transformers: pip install 'bscrit[hf]'"
    ) from None

from bscrit.errors import UsageError
from bscrit.integrations.free import FreeWindow, dataset_size
from bscrit.integrations.recorder import SeriesRecorder, check_mode

__all__ = ["BscritCallback"]


class BscritCallback(TrainerCallback):
    """Measure G, N, NSR and B* every ``every_n_steps`` optimizer steps (module docstring).

    Args:
        out_dir: where the step JSONs and ``series.jsonl`` go.
        every_n_steps: measure after every n-th optimizer step (``state.global_step``).
        batch_size: B of the run (default: ``per_device_train_batch_size`` ×
            ``gradient_accumulation_steps`` × the world size, the examples of one optimizer
            step).
        num_batches: k per measurement (default max(200, ⌈n/B⌉), the CLI's).
        groups: jackknife groups m.
        loss_fn: the mean loss of a batch, in a form :func:`bscrit.measure` takes; default
            ``"model"``: the model's own ``output.loss`` (micro-batches weighted by their
            label counts, as the Trainer's ``num_items_in_batch``).
        mode: ``"every_n"`` (independent batches at every n-th step) or ``"free"`` (the step's
            own micro-batch gradients, pooled over windows of ``every_n_steps`` steps; needs
            ``gradient_accumulation_steps`` ≥ 2, one process; docs/free.md).
        stride: ``mode="free"``: read every ``stride``-th step only (cost ÷ stride).
        c2: C² of [LMA21] for B*.
        seed: the batches of step t are drawn with ``seed + t``.
        micro_batch_size: examples per forward/backward (default
            ``per_device_train_batch_size`` when it divides B: no more memory than a step).
        data: a Dataset or DataLoader to measure on instead of the Trainer's train DataLoader.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        every_n_steps: int = 100,
        *,
        batch_size: int | None = None,
        num_batches: int | None = None,
        groups: int = 10,
        loss_fn: Any = "model",
        mode: str = "every_n",
        c2: float = 2.0,
        seed: int = 0,
        micro_batch_size: int | None = None,
        data: Any = None,
        stride: int = 1,
    ) -> None:
        check_mode(mode)
        self.mode = mode
        self.free = (
            FreeWindow(out_dir, every_n_steps, c2=c2, stride=stride) if mode == "free" else None
        )
        self.recorder = SeriesRecorder(
            out_dir, every_n_steps, num_batches=num_batches, groups=groups, seed=seed, c2=c2
        )
        self.batch_size, self.micro_batch_size = batch_size, micro_batch_size
        self.loss_fn, self.data = loss_fn, data
        self._batch_size: int | None = None
        self._micro: int | None = None
        self._pending: dict[str, float] = {}

    # -- set-up: every input checked before the first step ---------------------------------

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Resolve B, the micro-batch size and the data; refuse what cannot work."""
        from bscrit.workflows.live import check_arguments, resolve_data, resolve_loss

        _to_front(self, args)
        if self.free is not None:
            self._start_free(args, kwargs)
            return
        per_device = int(args.per_device_train_batch_size)
        b = self.batch_size or per_device * int(args.gradient_accumulation_steps) * _world()
        micro = self.micro_batch_size
        if micro is None and per_device < b and b % per_device == 0:
            micro = per_device
        check_arguments(b, self.recorder.num_batches, self.recorder.groups, micro, "train")
        resolve_loss(self.loss_fn)
        data = self._data(kwargs)
        if data is not None:
            resolve_data(data)
        self._batch_size, self._micro = b, micro

    # -- mode="free": the step's own micro-batch gradients --------------------------------

    def _start_free(self, args: Any, kwargs: dict[str, Any]) -> None:
        """The capture on the model: the micro-batches of gradient accumulation are the slices
        (read inside backward(), so before the Trainer clips the last one)."""
        assert self.free is not None
        if _world() > 1:
            raise UsageError(
                "BscritCallback: mode='free' under several processes is not supported with the "
                "Trainer (a callback cannot reach the DDP model); use mode='every_n', or "
                "bscrit.FreeCapture on the DDP model by hand"
            )
        micro = self.micro_batch_size or int(args.per_device_train_batch_size)
        acc = int(args.gradient_accumulation_steps)
        self._batch_size = self.batch_size or micro * acc
        self.free.start(
            kwargs["model"],
            optimizer=kwargs.get("optimizer"),
            dataset_size=dataset_size(self._data(kwargs)),
            batch_size=self._batch_size,
            micro_batch_size=micro,
            slices=acc,
        )

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """mode="free": a new shuffle; only epochs' first steps are pooled (docs/free.md)."""
        if self.free is not None:
            self.free.epoch_begin()

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """mode="free": close the step (its micro-batch gradients were read inside backward(),
        before clipping) and, every n steps, pool the window."""
        if self.free is None:
            return
        step = int(state.global_step) + 1  # the number the Trainer gives this step (on_log)
        assert self._batch_size is not None
        metrics = self.free.step_end(step, step * self._batch_size, state.is_world_process_zero)
        if metrics is not None and state.is_world_process_zero:
            state.log_history.append({**metrics, "step": step})
            self._pending = metrics

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.free is not None:
            self.free.close()

    # -- mode="every_n": after the optimizer step, at the new weights ----------------------

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        step = int(state.global_step)
        if self._pending:  # mode="free": a window closed in this step
            control.should_log = True
        if self.mode != "every_n" or not self.recorder.due(step):
            return
        # the Trainer logs this step, on every process alike (its log gathers the loss: a
        # collective), and the metrics go with rank 0's logs
        control.should_log = True
        if not state.is_world_process_zero:
            self.recorder.last_step = step
            return
        data = self._data(kwargs)
        if data is None:
            raise UsageError("BscritCallback: the Trainer has no train DataLoader: give data=...")
        if self._batch_size is None:  # on_train_begin not called (hooks driven by hand)
            self.on_train_begin(args, state, control, **kwargs)
        assert self._batch_size is not None
        metrics = self.recorder.record(
            model=kwargs["model"],
            data=data,
            loss_fn=self.loss_fn,
            batch_size=self._batch_size,
            step=step,
            examples_seen=step * self._batch_size,
            optimizer=kwargs.get("optimizer"),
            micro_batch_size=self._micro,
        )
        state.log_history.append({**metrics, "step": step})
        self._pending = metrics

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        """Adds the latest measurement's metrics to the logs being reported (once); the callback
        is first in the Trainer's list, so every other callback's ``on_log`` sees them."""
        if self._pending and isinstance(logs, dict):
            logs.update(self._pending)
            self._pending = {}

    def _data(self, kwargs: dict[str, Any]) -> Any:
        return self.data if self.data is not None else kwargs.get("train_dataloader")


def _to_front(callback: BscritCallback, args: Any) -> None:
    """Move ``callback`` to the front of the Trainer's callback list, before the ``report_to``
    integrations, so that its ``on_log`` adds the metrics before they write the logs.

    The list is that of the ``CallbackHandler`` whose ``call_event`` calls this hook
    (``on_train_begin``), found on the call stack: the Trainer passes neither itself nor its
    handler to callbacks. Moving the current item to the front while the handler iterates the
    list skips and repeats nothing. When no handler holds the callback (hooks driven by hand,
    another transformers) and ``args.report_to`` names integrations, a warning says the metrics
    reach only ``state.log_history`` and the callbacks listed after this one.
    """
    import sys

    from transformers.trainer_callback import CallbackHandler

    frame = sys._getframe(1)
    for _ in range(12):
        if frame is None:
            break
        handler = frame.f_locals.get("self")  # CallbackHandler.call_event's
        cbs = getattr(handler, "callbacks", None) if isinstance(handler, CallbackHandler) else None
        i = next((i for i, c in enumerate(cbs) if c is callback), None) if cbs else None
        if isinstance(cbs, list) and i is not None:
            if i > 0:
                cbs.insert(0, cbs.pop(i))
            return
        frame = frame.f_back
    if getattr(args, "report_to", None):
        warnings.warn(
            "BscritCallback: could not find the Trainer's callback list to go before the "
            f"report_to integrations ({args.report_to}): the bscrit/* metrics reach "
            "trainer_state.json's log_history and the callbacks listed after this one only",
            stacklevel=3,
        )


def _world() -> int:
    """The number of processes training (1 outside torch.distributed)."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
