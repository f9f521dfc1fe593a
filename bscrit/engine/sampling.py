"""Equilibrium draws from one checkpoint: continue its training and stop at K points (torch).

``bscrit measure --sample-steps T --samples K`` (docs/theory.md §8, "Sampling from one
checkpoint"). From the checkpoint the run's own optimizer
(:func:`bscrit.optim.registry.torch_kwargs`, and the checkpoint's optimizer state when it holds one)
trains the spec's model at the run's batch size B, with the data in the usual order for SGD
training: every epoch a fresh permutation cut into batches of B, the incomplete last batch dropped
(a ``DataLoader`` with ``shuffle=True, drop_last=True``). :func:`continue_training` yields at each
point so the caller measures there.

Nothing of the user's changes: the model is a fresh copy built from the spec and the file, the
optimizer state is copied before it is loaded, and the global RNG is forked (its own seed) and
restored afterwards.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from bscrit.engine.data import BatchSource, user_code
from bscrit.engine.objective import batch_loss
from bscrit.engine.params import ParameterSelection, requires_grad_only
from bscrit.errors import RunError, UsageError, UserCodeError
from bscrit.optim import registry as optim
from bscrit.optim.registry import OptimizerInfo
from bscrit.stats.equilibrium import relaxation_steps
from bscrit.stats.sample_plan import SamplePlan, plan_samples

#: Offset of the data-order seed from the measurement seed (distinct streams).
ORDER_SEED_OFFSET = 1_000_003


def _saved_groups(
    params: Sequence[Tensor], saved: Mapping | None
) -> tuple[list[list[int]] | None, str]:
    """The saved optimizer's parameter groups as index lists, when they match ``params``."""
    if saved is None:
        return None, "no optimizer state in the checkpoint: the optimizer state starts fresh"
    groups, state = saved.get("param_groups"), saved.get("state")
    if not isinstance(groups, Sequence) or not isinstance(state, Mapping):
        return None, "the saved optimizer state has no param_groups/state: it starts fresh"
    index = [[int(i) for i in g.get("params", [])] for g in groups if isinstance(g, Mapping)]
    flat = [i for g in index for i in g]
    if sorted(flat) != list(range(len(params))):
        return None, (
            f"the saved optimizer state covers {len(flat)} tensors, the model has {len(params)} "
            "trainable ones: the optimizer state starts fresh"
        )
    for i in flat:
        st = state.get(i, state.get(str(i)))
        for v in (st or {}).values():
            if isinstance(v, Tensor) and v.dim() > 0 and tuple(v.shape) != tuple(params[i].shape):
                return None, (
                    f"the saved optimizer state of tensor #{i} has shape {tuple(v.shape)}, the "
                    f"model's {tuple(params[i].shape)}: the optimizer state starts fresh"
                )
    return index, f"optimizer state loaded from the checkpoint ({len(index)} group(s))"


def run_optimizer(
    params: Sequence[Tensor], opt: OptimizerInfo, saved: Mapping | None
) -> tuple[torch.optim.Optimizer, list[str]]:
    """The run's optimizer over ``params``, its state loaded from ``saved`` when it matches.

    The saved groups keep their own hyperparameters (a no-decay group stays without decay) and
    the LR at the checkpoint (a decayed LR stays decayed: ``opt.lr_current``, constant from
    there); a value of ``opt`` that differs from the first saved group replaces it in every group
    that had it, and a note says so.
    """
    index, note = _saved_groups(params, saved)
    # the run continues at the LR at the checkpoint (a sample of *its* equilibrium), not at the
    # schedule's base LR
    cls, kwargs = optim.torch_kwargs(replace(opt, lr=optim.current_lr(opt)))
    notes = [note]
    if index is None:
        return getattr(torch.optim, cls)(list(params), **kwargs), notes
    optimizer = getattr(torch.optim, cls)(
        [{"params": [params[i] for i in g]} for g in index], **kwargs
    )
    try:
        optimizer.load_state_dict(copy.deepcopy(dict(saved)))  # type: ignore[arg-type]
    except (ValueError, KeyError, RuntimeError) as e:
        fresh = getattr(torch.optim, cls)(list(params), **kwargs)
        return fresh, [f"the saved optimizer state does not load ({e}): it starts fresh"]
    first = dict(optimizer.param_groups[0])
    for key, value in kwargs.items():
        old = first.get(key)
        if key in first and old != value:
            for g in optimizer.param_groups:
                if g[key] == old:
                    g[key] = value
            notes.append(f"{key} {old} of the saved state replaced by {value} ({opt.source})")
    return optimizer, notes


def epoch_batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
    """Rows of B example indices: each epoch a fresh permutation, the incomplete batch dropped."""
    per_epoch = n // batch_size
    while True:
        perm = torch.randperm(n, generator=generator)
        yield from perm[: per_epoch * batch_size].view(per_epoch, batch_size)


def continue_training(
    model: nn.Module,
    params: Sequence[Tensor],
    optimizer: torch.optim.Optimizer,
    dataset: Any,
    loss_fn: Callable[[Any, Any], Tensor],
    *,
    batch_size: int,
    points: Sequence[int],
    seed: int,
    device: torch.device,
    on_step: Callable[[int], None] | None = None,
) -> Iterator[int]:
    """Train ``model`` in train mode and yield the step at each of ``points`` (0 first).

    The global RNG (dropout, augmentation) runs on its own seed and is restored when the
    iterator is closed or exhausted.

    Raises:
        RunError: the training loss is not finite (the run diverged at that step).
    """
    source = BatchSource(dataset, device)
    n = len(dataset)
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed + ORDER_SEED_OFFSET)
        rows = epoch_batches(n, batch_size, torch.Generator().manual_seed(seed + ORDER_SEED_OFFSET))
        step = 0
        for point in points:
            while step < point:
                model.train()
                with _user_errors(step + 1):
                    x, y = next(source.batches([next(rows)], seed))
                    loss = batch_loss(model, loss_fn, x, y)[0]
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise RunError(
                        f"continued training diverged: the loss is {value} at step {step + 1} "
                        "after the checkpoint; the run's own learning rate cannot continue here"
                    )
                optimizer.zero_grad(set_to_none=True)
                with _user_errors(step + 1), user_code("the backward pass"):
                    loss.backward()
                optimizer.step()
                step += 1
                if on_step is not None:
                    on_step(1)
            optimizer.zero_grad(set_to_none=True)
            for p in params:  # the measurement reads no .grad, but leaves none behind either
                p.grad = None
            yield step


@contextlib.contextmanager
def _user_errors(step: int) -> Iterator[None]:
    """The user's model, loss, dataset item or collate function raising at a step of continued
    training: a :class:`RunError` naming which and the step."""
    try:
        yield
    except UserCodeError as e:
        raise RunError(e.at(f"in continued training at step {step} after the checkpoint")) from (
            e.error
        )


def check_sampling(paths: Sequence[Any], o: Any, dist: Any) -> None:
    """``--sample-steps``/``--samples`` continue one checkpoint, in one process (checked before
    any work; ``o`` is the measurement's ``MeasureOptions``, ``dist`` its torchrun context)."""
    if dist is not None:
        raise UsageError("{sample_steps} runs in one process, not under torchrun ({nproc})",
                         sample_steps="sample_steps", nproc="nproc")  # fmt: skip
    if len(paths) != 1:
        raise UsageError(
            f"{{sample_steps}} continues one checkpoint; {len(paths)} were given (use "
            "{last} 1, or measure them without sampling)",
            sample_steps="sample_steps",
            last="last",
        )
    for key in ("sample_steps", "samples"):
        v = getattr(o, key)
        if isinstance(v, int) and v < 1:
            raise UsageError(f"{{{key}}} must be at least 1, got {v}", **{key: key})
    for key in ("step", "examples_seen"):  # the sampled points record their offsets instead
        if getattr(o, key, None) is not None:
            raise UsageError(
                f"{{{key}}} places a checkpoint on the run's timeline; {{sample_steps}} records "
                "the steps after the checkpoint it continues instead: drop one of them",
                **{key: key}, sample_steps="sample_steps",
            )  # fmt: skip


def sampled_points(
    plan: Any,
    model: nn.Module,
    sel: ParameterSelection,
    saved_state: Mapping | None,
    opt: OptimizerInfo | None,
    on_sampling: Callable[[SamplePlan, OptimizerInfo], None] | None = None,
) -> Iterator[tuple[nn.Module, OptimizerInfo, Mapping[str, Any]]]:
    """The points of ``--sample-steps T --samples K`` from one loaded checkpoint.

    ``plan`` is the measurement plan (:class:`bscrit.workflows.plan.MeasurePlan`): its options,
    batch size, dataset, loss, seed and device; its ``labels`` and ``steps`` are set here to the
    sampled points, and ``sampling`` to the :class:`SamplePlan` with the optimizer's notes, before
    the first point. ``on_sampling`` is told the plan before any training (it may raise to stop).

    Yields:
        ``(model, opt, the live optimizer state)`` at each point (the preconditioner of an
        adaptive optimizer is read from it).

    Raises:
        UsageError: no optimizer is known, or the points cannot be planned
            (:func:`bscrit.stats.equilibrium.plan_samples`).
    """
    from bscrit.engine.data import default_num_batches

    o = plan.options
    if opt is None:
        raise UsageError(
            "{sample_steps} continues training with the run's optimizer, and none is known: add "
            "an optimizer section to the spec (or save the optimizer state with the checkpoint)",
            sample_steps="sample_steps",
        )
    params = _trained_parameters(model, sel)
    optimizer, notes = run_optimizer(params, opt, saved_state)
    tau, tau_note = relaxation_steps(opt)
    one = default_num_batches(len(plan.dataset), plan.batch_size)
    steps = None if o.sample_steps == "auto" else o.sample_steps
    sp = plan_samples(steps, o.samples, tau, tau_note, plan.k, one)
    source = plan.paths[0]
    plan.labels = [f"{source} +{s}" for s in sp.points]
    plan.steps = list(sp.points)  # after the checkpoint: examples/tokens seen unknown
    plan.seen = ([None] * len(sp.points), [None] * len(sp.points))
    if on_sampling is not None:
        on_sampling(sp, opt)
    plan.sampling = (sp, notes)
    with requires_grad_only(model, [n for n, q in model.named_parameters()
                                    if any(q is t for t in params)]):  # fmt: skip
        points = continue_training(
            model, params, optimizer, plan.dataset, plan.loss_fn, batch_size=plan.batch_size,
            points=sp.points, seed=plan.seed, device=plan.device,
        )  # fmt: skip
        for _ in points:
            yield model, opt, optimizer.state_dict()


def _trained_parameters(model: nn.Module, sel: ParameterSelection) -> list[Tensor]:
    """The parameters the run's optimizer updates, as the measurement chose them (``sel``,
    :func:`bscrit.engine.params.select_parameters`: the saved optimizer state's tensors matched
    to the model, else ``requires_grad``), in the saved state's order when it was matched one to
    one, so that the saved groups and state load onto the right tensors. Parameters the run did
    not train (a frozen backbone that still has ``requires_grad``) stay as they are."""
    named = dict(model.named_parameters())
    chosen = [named[n] for n in sel.names]
    idx = sel.state_indices
    if idx is None or sorted(i for i in idx if i is not None) != list(range(len(chosen))):
        return chosen
    ordered: list[Tensor] = [chosen[0]] * len(chosen)
    for t, i in zip(chosen, idx, strict=True):
        ordered[i] = t
    return ordered
