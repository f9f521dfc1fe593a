"""The base run's optimizer: the spec's ``optimizer:`` section or the checkpoint's saved state
(every param group read), and the warnings about how the two agree."""

from __future__ import annotations

import math
from dataclasses import replace

from bscrit.errors import CheckpointError
from bscrit.load.checkpoints import LoadedCheckpoint
from bscrit.optim import registry as optim
from bscrit.optim import saved
from bscrit.optim.registry import OptimizerInfo
from bscrit.specfile.document import Spec


def resolve_optimizer(
    spec: Spec, ckpt: LoadedCheckpoint | None
) -> tuple[OptimizerInfo | None, list[str]]:
    """The optimizer of the base run, and warnings about it.

    The spec's ``optimizer:`` when it gives the hyperparameters; the checkpoint's optimizer state
    when the spec gives only ``optimizer.name`` (which settles a state that cannot tell Adam,
    AdamW and RAdam apart; every param group is read) or nothing; else None. Warnings: why the
    checkpoint's optimizer could not be named, or a spec that names another optimizer than the
    state is.

    Raises:
        CheckpointError: the spec gives only ``optimizer.name`` and the checkpoint holds no
            optimizer state to read the rest from.
    """
    s = spec.optimizer
    state = ckpt.optimizer_state if ckpt is not None else None
    if s is not None and s.source == optim.NAME_ONLY:
        if state is None:
            where = f"checkpoint {ckpt.path}" if ckpt is not None else "no checkpoint"
            raise CheckpointError(
                f"{spec.path}: optimizer gives only name: {s.name}, and {where} holds no "
                "optimizer state to read its hyperparameters from: give optimizer.lr (and the "
                "others) in the spec"
            )
        reading = saved.read_state(state, name=s.name)
        return reading.info, [reading.note] if reading.note else []
    if s is not None:
        notes = []
        groups = None
        if state is not None:
            groups = saved.read_state(state, name=s.name).info
            reading = saved.read_state(state)
            cands = reading.identification.candidates if reading.identification else ()
            if cands and s.name not in cands:
                notes.append(f"the spec names {s.name}, but the checkpoint's optimizer state "
                             f"looks like {' or '.join(cands)}'s; using the spec's")  # fmt: skip
            if groups is not None and optim.group_optimizers(groups):
                notes.append(
                    f"the spec's optimizer replaces the checkpoint's {len(groups.groups)} param "
                    "groups, whose values differ; give only optimizer.name in the spec to use "
                    "them (scaled per group)"
                )
        return _with_current_lr(s, groups), notes
    if ckpt is None:
        return None, []
    return ckpt.optimizer, [ckpt.optimizer_note] if ckpt.optimizer_note else []


def _with_current_lr(spec_opt: OptimizerInfo, saved: OptimizerInfo | None) -> OptimizerInfo:
    """The spec's optimizer with the LR at the checkpoint read from the saved state, when the
    saved base LR is the spec's (a scheduler moved it); else as given."""
    if saved is None or saved.lr_current is None:
        return spec_opt
    if not math.isclose(saved.lr, spec_opt.lr, rel_tol=1e-6):
        return spec_opt
    return replace(spec_opt, lr_current=saved.lr_current)


def optimizer_for(spec: Spec, ckpt: LoadedCheckpoint | None) -> OptimizerInfo | None:
    """The optimizer of the base run (:func:`resolve_optimizer` without its warnings)."""
    return resolve_optimizer(spec, ckpt)[0]
