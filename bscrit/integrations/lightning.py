"""``BscritCallback`` for Lightning: measure the gradient noise every n steps of ``Trainer.fit``.

::

    from bscrit.integrations.lightning import BscritCallback

    trainer = L.Trainer(callbacks=[BscritCallback("bscrit-out", every_n_steps=500)])

After every n-th optimizer step (``on_train_batch_end`` once ``trainer.global_step`` has moved,
so at the new weights) it measures the module on the training dataset with
:func:`bscrit.measure`, writes ``out_dir/step-XXXXXXX.json`` and a line of
``out_dir/series.jsonl`` (:mod:`bscrit.integrations.recorder`), and logs the metrics of
:data:`~bscrit.integrations.recorder.METRICS` (``bscrit/nsr_raw``, ``bscrit/b_star_raw``, …)
to every logger of the trainer (``trainer.loggers``: TensorBoardLogger, WandbLogger,
CSVLogger, …) with ``step=trainer.global_step``, whatever ``log_every_n_steps`` says. Only
global rank 0 measures and writes. The run itself is unchanged (same final weights, bitwise).

Needs Lightning (``pip install 'bscrit[lightning]'``): ``lightning`` or ``pytorch_lightning``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

try:
    from lightning.pytorch import Callback
except ImportError:  # pragma: no cover - the standalone package
    try:
        from pytorch_lightning import Callback
    except ImportError:
        raise ImportError(
            "bscrit.integrations.lightning needs Lightning: pip install 'bscrit[lightning]'"
        ) from None

from bscrit.errors import UsageError
from bscrit.integrations.free import FreeWindow, batch_length, dataset_size
from bscrit.integrations.recorder import SeriesRecorder, check_mode

__all__ = ["BscritCallback"]


class BscritCallback(Callback):
    """Measure G, N, NSR and B* every ``every_n_steps`` optimizer steps (module docstring).

    Args:
        out_dir: where the step JSONs and ``series.jsonl`` go.
        every_n_steps: measure after every n-th optimizer step (``trainer.global_step``).
        batch_size: B of the run (default: the train DataLoader's batch size ×
            ``accumulate_grad_batches`` × the world size, the examples of one optimizer step).
        num_batches: k per measurement (default max(200, ⌈n/B⌉), the CLI's).
        groups: jackknife groups m.
        loss_fn: the mean loss of a batch, in a form :func:`bscrit.measure` takes; default:
            ``pl_module.training_step(batch, 0)`` (its loss, or its ``"loss"`` key), with
            ``self.log`` silenced while bscrit calls it. Give one when ``training_step`` does
            more than compute the loss (manual optimisation is refused).
        mode: ``"every_n"`` (independent batches at every n-th step) or ``"free"`` (the step's
            own micro-batch gradients, pooled over windows of ``every_n_steps`` steps; needs
            ``accumulate_grad_batches`` ≥ 2 or DDP; docs/free.md).
        stride: ``mode="free"``: read every ``stride``-th step only (cost ÷ stride).
        c2: C² of [LMA21] for B*.
        seed: the batches of step t are drawn with ``seed + t``.
        micro_batch_size: examples per forward/backward (default: the DataLoader's batch size
            when it divides B, so the measurement needs no more memory than a training step).
        data: a Dataset or DataLoader to measure on instead of ``trainer.train_dataloader``.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        every_n_steps: int = 100,
        *,
        batch_size: int | None = None,
        num_batches: int | None = None,
        groups: int = 10,
        loss_fn: Any = None,
        mode: str = "every_n",
        c2: float = 2.0,
        seed: int = 0,
        micro_batch_size: int | None = None,
        data: Any = None,
        stride: int = 1,
    ) -> None:
        super().__init__()
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
        self._data: Any = None
        self._loss: Any = None
        self._batch_size: int | None = None
        self._micro: int | None = None
        self._examples: int | None = None

    # -- set-up: every input checked before the first step ---------------------------------

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        """Resolve the data, B, the micro-batch size and the loss; refuse what cannot work."""
        from bscrit.workflows.live import check_arguments, resolve_data

        if self.free is not None:
            self._start_free(trainer, pl_module)
            return
        self._data = self.data if self.data is not None else _train_loader(trainer)
        resolve_data(self._data)  # refuses an iterable dataset now, not at step n
        per_device = getattr(self._data, "batch_size", None)
        b = self.batch_size
        if b is None:
            if not isinstance(per_device, int):
                raise UsageError(
                    "BscritCallback: the train DataLoader has no batch_size (a batch sampler?): "
                    "give batch_size=B, the examples of one optimizer step"
                )
            b = per_device * int(trainer.accumulate_grad_batches) * int(trainer.world_size)
        micro = self.micro_batch_size
        if micro is None and isinstance(per_device, int) and per_device < b and b % per_device == 0:
            micro = per_device
        check_arguments(b, self.recorder.num_batches, self.recorder.groups, micro, "train")
        self._batch_size, self._micro = b, micro
        if self.loss_fn is not None:
            self._loss = self.loss_fn
        elif not getattr(pl_module, "automatic_optimization", True):
            raise UsageError(
                "BscritCallback: the module uses manual optimisation, so its training_step "
                "steps the optimizer: give loss_fn=(model, batch) -> mean loss"
            )
        else:
            self._loss = training_step_loss

    # -- mode="free": the step's own micro-batch gradients --------------------------------

    def _start_free(self, trainer: Any, pl_module: Any) -> None:
        """The capture on the module (accumulation) or on the DDP model (ranks are slices)."""
        assert self.free is not None
        loader = self.data if self.data is not None else _train_loader(trainer)
        micro = self.micro_batch_size or getattr(loader, "batch_size", None)
        if not isinstance(micro, int):
            raise UsageError(
                "BscritCallback: the train DataLoader has no batch_size (a batch sampler?): "
                "give micro_batch_size=b, the examples of one forward/backward on one device"
            )
        acc, world = int(trainer.accumulate_grad_batches), int(trainer.world_size)
        model = pl_module
        if world > 1:
            model = trainer.strategy.model
            if not hasattr(model, "register_comm_hook"):
                raise UsageError(
                    f"BscritCallback: mode='free' on {world} devices needs the DDP strategy "
                    f"(got {type(trainer.strategy).__name__})"
                )
        self._batch_size = self.batch_size or micro * acc * world
        optimizers = list(trainer.optimizers)
        self.free.start(
            model,
            optimizer=optimizers[0] if optimizers else None,
            dataset_size=dataset_size(loader),
            batch_size=self._batch_size,
            micro_batch_size=micro,
            slices=acc * world,
            boundaries="manual",  # on_after_backward: one call per micro-batch, before clipping
        )

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        """mode="free": a new shuffle; only epochs' first steps are pooled (docs/free.md)."""
        if self.free is not None:
            self.free.epoch_begin()

    def on_train_batch_start(
        self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int
    ) -> None:
        """mode="free": the micro-batch's size (a step with unequal micro-batches is skipped)."""
        if self.free is not None:
            self._examples = batch_length(batch)

    def on_after_backward(self, trainer: Any, pl_module: Any) -> None:
        """mode="free": read this micro-batch's gradient (the change of the accumulated .grad)."""
        if self.free is not None:
            self.free.backward_end(self._examples)

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        """mode="free": the step's micro-batch gradients were read in on_after_backward; close
        the step (before clipping and the optimizer step) and, every n steps, pool the window."""
        if self.free is None:
            return
        step = int(trainer.global_step) + 1  # this step's number once taken, as in every_n mode
        assert self._batch_size is not None
        metrics = self.free.step_end(step, step * self._batch_size, trainer.is_global_zero)
        if metrics is not None and trainer.is_global_zero:
            _log(trainer, metrics, step)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self.free is not None:
            self.free.close()

    # -- mode="every_n": after the optimizer step, at the new weights ----------------------

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = int(trainer.global_step)
        if self.mode != "every_n" or not self.recorder.due(step):
            return
        if not trainer.is_global_zero:
            self.recorder.last_step = step
            return
        optimizers = list(trainer.optimizers)
        assert self._batch_size is not None
        with _silenced(pl_module):
            metrics = self.recorder.record(
                model=pl_module,
                data=self._data,
                loss_fn=self._loss,
                batch_size=self._batch_size,
                step=step,
                examples_seen=step * self._batch_size,
                optimizer=optimizers[0] if optimizers else None,
                micro_batch_size=self._micro,
            )
        _log(trainer, metrics, step)


def _log(trainer: Any, metrics: dict[str, float], step: int) -> None:
    """The metrics to each of the trainer's loggers, at the trainer's step number."""
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=step)


def training_step_loss(model: Any, batch: Any) -> Any:
    """The loss of ``model.training_step(batch, 0)``: its return value, or its ``"loss"``."""
    out = model.training_step(batch, 0)
    if isinstance(out, Mapping):
        out = out.get("loss")
    if out is None:
        raise UsageError(
            "BscritCallback: training_step returned no loss (None, or a dict without 'loss'): "
            "give loss_fn=(model, batch) -> mean loss"
        )
    return out


def _train_loader(trainer: Any) -> Any:
    """The trainer's train DataLoader (the first, when there are several)."""
    loader = trainer.train_dataloader
    if isinstance(loader, Mapping):
        loader = next(iter(loader.values()), None)
    elif isinstance(loader, (list, tuple)):
        loader = loader[0] if loader else None
    if loader is None:
        raise UsageError("BscritCallback: the trainer has no train DataLoader: give data=...")
    return loader


def _noop(*args: Any, **kwargs: Any) -> None:
    return None


@contextlib.contextmanager
def _silenced(module: Any) -> Iterator[None]:
    """``module.log`` and ``module.log_dict`` do nothing inside (training_step logs its loss;
    bscrit's calls must not reach the run's metrics)."""
    names = ("log", "log_dict")
    own: dict[str, Callable[..., Any]] = {
        n: module.__dict__[n] for n in names if n in module.__dict__
    }
    for n in names:
        object.__setattr__(module, n, _noop)
    try:
        yield
    finally:
        for n in names:
            if n in own:
                object.__setattr__(module, n, own[n])
            else:
                object.__delattr__(module, n)
