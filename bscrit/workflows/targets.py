"""The confirmation target B' read from a measurement: the one function behind ``bscrit svag
--from-measurement``, ``bscrit confirm --from-measurement`` and the demo, so they name the same B'
with the same words (where it comes from, and the scope of the interval it comes from)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from bscrit.errors import UsageError

if TYPE_CHECKING:
    from bscrit.runs.confirm.plan import ConfirmPlan
    from bscrit.runs.svag.plan import SvagPlan

PathLike = str | os.PathLike[str]


def target_from_measurement(path: PathLike, c2: float = 2.0) -> tuple[int, str]:
    """B' = :func:`~bscrit.theory.prediction.confirmation_target` of the prediction from the
    measurement at ``path``, and one line saying why (which end of which interval, of which file,
    over which scope: the equilibrium, or one point)."""
    from bscrit.theory.prediction import predict_files
    from bscrit.theory.targets import confirmation_target

    pred = predict_files([path], c2)
    target, why = confirmation_target(pred)
    scope = pred.base.interval_note.split(";")[0]  # over the equilibrium, or one point
    return target, f"B' = {target}: {why} of {path} ({scope})"


#: The integer arguments of a run (svag, confirm) and their least values (each within int64; how
#: much work they may plan is :mod:`bscrit.cli.limits`'s).
_RUN_INTEGERS = {"effective_steps": 1, "eval_every": 1, "eval_batches": 2, "eval_examples": 1,
                 "seed": 0, "seeds": 1, "points": 2, "tail_points": 1, "examples": 1}  # fmt: skip


def check_run_arguments(kwargs: dict[str, Any], target_batch_size: Any, c2: Any) -> None:
    """Every number ``svag`` / ``confirm`` is given, before any file is read
    (:mod:`bscrit.boundary`): int64 counts, finite relaxation times and start step,
    hyperparameters in their ranges, C² > 1; every problem at once.

    Raises:
        UsageError: listing each bad argument, naming its option.
    """
    from bscrit import boundary
    from bscrit.optim import registry as optim

    p = boundary.Problems()
    p.integer("target_batch_size", target_batch_size, minimum=1)
    p.number("c2", c2, low=1.0, low_open=True, what="a number > 1 (C > 1 in [LMA21] Def. 5.1)")
    for key, low in _RUN_INTEGERS.items():
        p.integer(key, kwargs.get(key), minimum=low)
    p.number("relaxation_times", kwargs.get("relaxation_times"), low=0.0, low_open=True,
             what="a positive number")  # fmt: skip
    p.number("start_step", kwargs.get("start_step"), low=0.0, what="a number of steps ≥ 0")
    for key, v in (kwargs.get("overrides") or {}).items():
        why = optim.check_value(key, v) if v is not None and key in optim.HYPERPARAMETERS else None
        if why:
            p.add(key, why)
    p.raise_any()


def _target(
    target_batch_size: int | None,
    from_measurement: PathLike | None,
    c2: float,
    on_target: Callable[[str], None] | None,
) -> int:
    """B' given, or read from a measurement (exactly one), ``on_target`` told where it came from."""
    if (target_batch_size is None) == (from_measurement is None):
        raise UsageError(
            "give exactly one of {t} and {m}", t="target_batch_size", m="from_measurement"
        )
    if from_measurement is not None:
        target_batch_size, line = target_from_measurement(from_measurement, c2)
        if on_target is not None:
            on_target(line)
    assert target_batch_size is not None
    return target_batch_size


def plan_svag(
    spec_path: PathLike,
    *,
    target_batch_size: int | None = None,
    from_measurement: PathLike | None = None,
    c2: float = 2.0,
    ls: str | Sequence[int] = (1, 2, 4),
    on_target: Callable[[str], None] | None = None,
    **kwargs: Any,
) -> SvagPlan:
    """``bscrit svag``: the SVAG plan at B', given or read from a measurement
    (:func:`target_from_measurement`). ``kwargs`` go to
    :func:`~bscrit.runs.svag.plan.prepare_svag`. Everything is checked before any run;
    ``on_target`` is told where B' came from before the checkpoint and data are loaded.
    """
    from bscrit.runs.svag.plan import parse_ls, prepare_svag
    from bscrit.specfile.document import load_spec

    check_run_arguments(kwargs, target_batch_size, c2)
    parsed = parse_ls(ls)
    target = _target(target_batch_size, from_measurement, c2, on_target)
    return prepare_svag(load_spec(spec_path), target_batch_size=target, ls=parsed, **kwargs)


def plan_confirm(
    spec_path: PathLike,
    *,
    target_batch_size: int | None = None,
    from_measurement: PathLike | None = None,
    c2: float = 2.0,
    on_target: Callable[[str], None] | None = None,
    **kwargs: Any,
) -> ConfirmPlan:
    """``bscrit confirm``: the plan at B', given or read from a measurement
    (:func:`target_from_measurement`, the same B' as ``svag --from-measurement``). ``kwargs`` go
    to :func:`~bscrit.runs.confirm.plan.prepare_confirm`; everything is checked before any run.
    """
    from bscrit.runs.confirm.plan import prepare_confirm
    from bscrit.specfile.document import load_spec

    check_run_arguments(kwargs, target_batch_size, c2)
    target = _target(target_batch_size, from_measurement, c2, on_target)
    return prepare_confirm(load_spec(spec_path), target_batch_size=target, **kwargs)
