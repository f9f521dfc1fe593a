"""Recognising the optimizer in a saved optimizer state, and reading it as an
:class:`~bscrit.optim.registry.OptimizerInfo` (pure: no torch import).

:mod:`bscrit.optim.state` reads what a saved ``state_dict`` says without the registry (its
keys, learning rates, shapes, the names saved arguments mention); this module matches that
against the registry (:func:`identify`: a name, or why there is none, never a silent guess) and
turns every param group into one :class:`~bscrit.optim.registry.OptimizerInfo`
(:func:`read_state`, :func:`read_checkpoint`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from bscrit.optim.lr_schedule import peak_of_group
from bscrit.optim.registry import (
    FLOAT_FIELDS,
    NAMES,
    REGISTRY,
    OptimizerDef,
    OptimizerInfo,
    from_flat,
    get,
)
from bscrit.optim.state import (
    ParamGroupInfo,
    candidates,
    group_params,
    groups_of,
    indexed,
    indices,
    main_group,
    names_in,
    state_keys,
    to_float,
)

#: Keys under which training scripts save the optimizer's state_dict.
STATE_KEYS = ("optimizer", "optimizer_state_dict", "optim", "opt", "optimizer_state")
_SETTLE = "optimizer.name in the spec settles it (the rest is read from the checkpoint)"


@dataclass(frozen=True)
class Identification:
    """Which optimizer a saved state is: a name, or why there is none (never a silent guess).

    Attributes:
        name: the registry name, or None (unknown, or ambiguous).
        candidates: the names the saved keys fit.
        by: how the name was decided, e.g. ``"its saved state"``, ``"hyper_parameters.optimizer =
            'AdamW'"``.
        problem: why there is no name, with the key that settles it.
        note: a disagreement worth a warning (saved arguments naming another optimizer).
    """

    name: str | None
    candidates: tuple[str, ...]
    by: str = ""
    problem: str | None = None
    note: str | None = None


def identify(
    group: Mapping, state: set[str] | frozenset[str] = frozenset(), contexts: Sequence[Any] = ()
) -> Identification:
    """The optimizer of a param group: from its keys and state keys (:func:`candidates`), and
    where those cannot decide, from a name in the saved arguments (``contexts``: a Lightning
    checkpoint's ``hyper_parameters``, an HF Trainer's arguments, the checkpoint itself)."""
    cands = candidates(group, state)
    named = names_in(contexts, NAMES)
    fitting = {n: p for n, p in named.items() if n in cands}
    if not cands:
        keys = ", ".join(sorted(k for k in group if k != "params"))
        hint = f" (the saved arguments name {', '.join(named)})" if named else ""
        return Identification(None, (), problem=(
            f"the optimizer state (param-group keys: {keys}) is not one bscrit knows{hint}; "
            f"give the optimizer in the spec (optimizer.name and optimizer.lr)"))  # fmt: skip
    if len(cands) == 1:
        note = None
        if named and not fitting:
            note = (f"the saved arguments name {', '.join(f'{n} ({p})' for n, p in named.items())}"
                    f", but the optimizer state is {cands[0]}'s: read as {cands[0]}")  # fmt: skip
        return Identification(cands[0], cands, "its saved state", note=note)
    if len(fitting) == 1:
        name, path = next(iter(fitting.items()))
        return Identification(name, cands, path)
    why = "the saved arguments name several" if fitting else "nothing saved names one of them"
    return Identification(None, cands, problem=(
        f"the optimizer state fits {' and '.join(cands)} (the same saved keys in this PyTorch "
        f"version) and {why}: {_SETTLE}"))  # fmt: skip


def name_from_param_group(group: Mapping, *contexts: Mapping) -> str | None:
    """The optimizer whose ``param_groups`` entry this is, None when unknown or ambiguous
    (:func:`identify` without the per-parameter state; ``contexts``: saved arguments)."""
    return identify(group, frozenset(), contexts).name


def optimizer_state(obj: Any) -> Mapping | None:
    """The optimizer state_dict inside a loaded checkpoint object (None when there is none)."""
    if not isinstance(obj, Mapping):
        return None
    if "param_groups" in obj and "state" in obj:  # the state_dict itself (optimizer.pt)
        return obj
    for k in STATE_KEYS:
        if isinstance(obj.get(k), Mapping) and "param_groups" in obj[k]:
            return obj[k]
    states = obj.get("optimizer_states")  # Lightning
    if isinstance(states, (list, tuple)) and states and isinstance(states[0], Mapping):
        return states[0]
    return None


@dataclass(frozen=True)
class OptimizerReading:
    """An optimizer read from a checkpoint: the info (None when it cannot be), how, and a note
    for the measurement's warnings (why there is none, or a disagreement)."""

    info: OptimizerInfo | None
    identification: Identification | None
    note: str | None = None


def _group_values(d: OptimizerDef, g: Mapping) -> dict[str, float]:
    """A saved group's base values: the LR is the schedule's peak (OneCycle's ``max_lr``, else
    ``initial_lr``, else ``lr``); a OneCycle-cycled momentum (β₁) is the one it pairs with the
    peak, ``base_momentum``, not what it was cycled to at the checkpoint."""
    v: dict[str, Any] = {"lr": peak_of_group(g)}
    betas = g.get("betas")
    if "beta1" in d.keys and isinstance(betas, (list, tuple)) and len(betas) == 2:
        v["beta1"], v["beta2"] = to_float(betas[0]), to_float(betas[1])
    for k in FLOAT_FIELDS:
        if k in d.keys:
            v[k] = to_float(g.get(k))
    at_peak = to_float(g.get("base_momentum")) if "max_lr" in g else None
    if at_peak is not None:
        if "momentum" in d.keys and v.get("momentum") is not None:
            v["momentum"] = at_peak
        elif "beta1" in d.keys and v.get("beta1") is not None:
            v["beta1"] = at_peak
    return {k: float(d.defaults[k] if v.get(k) is None else v[k]) for k in d.values}


def read_state(
    opt_state: Mapping | None, contexts: Sequence[Any] = (), name: str | None = None
) -> OptimizerReading:
    """Every param group of a saved optimizer state, as one :class:`OptimizerInfo`.

    ``name`` (the spec's ``optimizer.name``) settles the optimizer; else :func:`identify` does,
    or says why it cannot. Each group's base LR (``initial_lr`` where a scheduler stored it),
    current LR and other values are kept in ``groups``; the top-level values are the main
    group's (:func:`~bscrit.optim.state.main_group`: the largest decayed group, so a timm-style
    no-decay group listed first does not make the run's weight decay 0).
    """
    opt_state = indexed(opt_state)  # a by-name state (get_optimizer_state_dict): index form
    groups = groups_of(opt_state)
    if not groups or opt_state is None:
        return OptimizerReading(None, None)
    skeys = next((s for s in (state_keys(opt_state, g) for g in groups) if s), set())
    ident = identify(groups[0], frozenset(skeys), contexts)
    note = ident.note
    if name is not None:
        name = get(name).name
        if ident.candidates and name not in ident.candidates:
            note = (f"the spec names {name}, but the checkpoint's optimizer state looks like "
                    f"{' or '.join(ident.candidates)}'s; read as {name}")  # fmt: skip
        ident = replace(ident, name=name, by="the spec's optimizer.name", problem=None)
    if ident.name is None:
        return OptimizerReading(None, ident, ident.problem)
    if any(to_float(g.get("lr")) is None for g in groups):
        return OptimizerReading(None, ident, "the optimizer state's param groups have no lr")
    d = REGISTRY[ident.name]
    infos = []
    for i, g in enumerate(groups):
        values = _group_values(d, g)
        infos.append(ParamGroupInfo(
            index=i, tensors=len(indices(g)), values=values,
            lr_current=to_float(g.get("lr")), params=group_params(opt_state, g),
            nesterov=bool(g.get("nesterov", False))))  # fmt: skip
    main = main_group(infos)
    flags = {
        "nesterov": main.nesterov,
        "decoupled_weight_decay": groups[main.index].get("decoupled_weight_decay") is True,
    }
    info = from_flat(ident.name, {**main.values, **flags}, "checkpoint")
    info = replace(info, lr_current=main.lr_current, groups=tuple(infos), identified_by=ident.by)
    return OptimizerReading(info, ident, note)


def read_checkpoint(obj: Any, *contexts: Any, name: str | None = None) -> OptimizerReading:
    """:func:`read_state` of the optimizer state inside a loaded checkpoint object; the object
    itself and ``contexts`` (e.g. an HF Trainer's saved arguments) are searched for a name."""
    return read_state(optimizer_state(obj), (obj, *contexts), name)


def from_checkpoint(obj: Any, *contexts: Any, name: str | None = None) -> OptimizerInfo | None:
    """OptimizerInfo(source="checkpoint") from a saved optimizer, None when there is none or it
    cannot be named (:func:`read_checkpoint` says why)."""
    return read_checkpoint(obj, *contexts, name=name).info
