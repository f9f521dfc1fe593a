"""What a saved optimizer state_dict says, read without torch and without the registry.

A PyTorch optimizer's ``state_dict()`` is ``{"state": {index: {...tensors...}}, "param_groups":
[{"params": [indices], "lr": ..., ...}, ...]}``. Parameters are named by integer index in the
order they were handed to the optimizer, group after group (``Adam(model.head.parameters())``:
index 0 is the head's first tensor, not the model's). This module reads, from such a mapping:

- each param group's keys, its learning rates and the per-tensor shapes its state reveals
  (:func:`group_shapes`), so the indices can be matched to the model's tensors
  (:mod:`bscrit.engine.params`);
- which optimizer names saved training arguments mention (:func:`names_in`), e.g. a Lightning
  checkpoint's ``hyper_parameters``, an HF Trainer's ``optim`` argument or a name saved beside
  the weights.

The optimizer registry (:mod:`bscrit.optim.registry`) turns these into an
:class:`~bscrit.optim.registry.OptimizerInfo`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: Per-parameter state entries that have the parameter's shape (the first one present is read).
SHAPED_STATE_KEYS = (
    "exp_avg", "exp_avg_sq", "momentum_buffer", "square_avg", "sum", "exp_inf", "ax",
    "max_exp_avg_sq", "grad_avg", "acc_delta", "prev",
)  # fmt: skip
#: Keys under which saved training arguments are searched for an optimizer's name.
ARGUMENT_KEYS = ("hyper_parameters", "hparams", "args", "config", "cfg", "training_args")
#: In a mapping that names an optimizer (LightningCLI, Hydra), the keys that hold the class.
CLASS_KEYS = ("class_path", "_target_", "name", "type", "class", "optimizer")


@dataclass(frozen=True)
class ParamGroupInfo:
    """One param group of the run's optimizer, as saved.

    Attributes:
        index: position in ``param_groups``.
        tensors: number of parameter tensors in the group.
        values: the group's numeric hyperparameters, flat (``lr``, ``beta1``, ``weight_decay``...;
            :func:`bscrit.optim.registry.flat` keys). ``lr`` is the base LR: ``initial_lr`` where a
            scheduler stored it, else ``lr``.
        lr_current: the group's ``lr`` at the checkpoint (what the scheduler had set it to).
        params: number of scalars, when known (from the state's tensors or the model).
        nesterov: SGD's Nesterov switch.
    """

    index: int
    tensors: int
    values: Mapping[str, float]
    lr_current: float | None = None
    params: int | None = None
    nesterov: bool = False

    @property
    def decayed(self) -> bool:
        return self.values.get("weight_decay", 0.0) > 0

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "tensors": self.tensors, "params": self.params,
                "values": dict(self.values), "lr_current": self.lr_current,
                "nesterov": self.nesterov}  # fmt: skip

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> ParamGroupInfo:
        return ParamGroupInfo(
            index=int(d["index"]),
            tensors=int(d["tensors"]),
            values={str(k): float(v) for k, v in dict(d.get("values") or {}).items()},
            lr_current=None if d.get("lr_current") is None else float(d["lr_current"]),
            params=None if d.get("params") is None else int(d["params"]),
            nesterov=bool(d.get("nesterov", False)),
        )


def to_float(x: Any, default: float | None = None) -> float | None:
    """``float(x)`` (a Tensor lr is allowed by PyTorch), or ``default``."""
    if x is None or isinstance(x, bool):
        return default
    try:
        v = float(x)
    except (TypeError, ValueError, RuntimeError):
        return default
    return v if math.isfinite(v) else default


def groups_of(opt_state: Mapping | None) -> list[Mapping]:
    """The param groups of a saved optimizer state (empty when it has none)."""
    if not isinstance(opt_state, Mapping):
        return []
    groups = opt_state.get("param_groups")
    if not isinstance(groups, (list, tuple)):
        return []
    return [g for g in groups if isinstance(g, Mapping)]


def by_name(opt_state: Mapping | None) -> bool:
    """The state names its parameters (``get_optimizer_state_dict``: ``"params": ["fc.weight"]``,
    the state keyed by the same names) rather than numbering them."""
    groups = groups_of(opt_state)
    names = [p for g in groups for p in (g.get("params") or ())]
    return bool(names) and all(isinstance(p, str) and not p.isdigit() for p in names)


def indexed(opt_state: Mapping | None) -> Mapping | None:
    """A by-name state (:func:`by_name`) in PyTorch's index form: indices in the order the groups
    list the names, group after group (as ``Optimizer.state_dict`` numbers them), each group's
    names kept as ``param_names`` (PyTorch ≥ 2.6 saves the same key). Others are returned as is."""
    if opt_state is None or not by_name(opt_state):
        return opt_state
    state = opt_state.get("state")
    state = state if isinstance(state, Mapping) else {}
    groups, new_state, i = [], {}, 0
    for g in groups_of(opt_state):
        names = [str(p) for p in g.get("params") or ()]
        groups.append({**g, "params": list(range(i, i + len(names))), "param_names": names})
        for n in names:
            if isinstance(state.get(n), Mapping):
                new_state[i] = state[n]
            i += 1
    return {**opt_state, "state": new_state, "param_groups": groups}


def param_names(opt_state: Mapping | None) -> list[list[str]] | None:
    """Per group, the parameter names saved with it (``param_names``), None when any group has
    none or they do not match its ``params`` one to one."""
    out = []
    for g in groups_of(opt_state):
        names = g.get("param_names")
        if not isinstance(names, (list, tuple)) or len(names) != len(indices(g)):
            return None
        out.append([str(n) for n in names])
    return out or None


def indices(group: Mapping) -> list[int]:
    """The parameter indices a group lists (``params``)."""
    params = group.get("params")
    if not isinstance(params, (list, tuple)):
        return []
    return [int(i) for i in params if isinstance(i, int) or str(i).isdigit()]


def entry(opt_state: Mapping, index: int) -> Mapping | None:
    """The saved state of parameter ``index`` (keys may be ints or strings)."""
    state = opt_state.get("state")
    if not isinstance(state, Mapping):
        return None
    st = state.get(index, state.get(str(index)))
    return st if isinstance(st, Mapping) else None


def shape_of(st: Mapping | None) -> tuple[int, ...] | None:
    """The parameter's shape as its state reveals it (None when no shaped tensor is saved)."""
    if st is None:
        return None
    for k in SHAPED_STATE_KEYS:
        shape = getattr(st.get(k), "shape", None)
        if shape is not None:
            return tuple(int(s) for s in shape)
    return None


def group_shapes(opt_state: Mapping) -> list[list[tuple[int, tuple[int, ...] | None]]]:
    """Per group, ``(index, shape or None)`` of each parameter it lists, in order."""
    return [[(i, shape_of(entry(opt_state, i))) for i in indices(g)] for g in groups_of(opt_state)]


def state_keys(opt_state: Mapping, group: Mapping) -> set[str]:
    """The keys of the first saved per-parameter state of ``group`` (empty: never stepped)."""
    for i in indices(group):
        st = entry(opt_state, i)
        if st:
            return {str(k) for k in st}
    return set()


def group_params(opt_state: Mapping, group: Mapping) -> int | None:
    """Number of scalars in ``group`` when the state holds a shaped tensor for every index."""
    total = 0
    for i in indices(group):
        shape = shape_of(entry(opt_state, i))
        if shape is None:
            return None
        total += math.prod(shape)
    return total


def candidates(group: Mapping, state: set[str] | frozenset[str] = frozenset()) -> tuple[str, ...]:
    """The optimizers whose param group keys (and per-parameter state keys, when saved) these are.

    PyTorch 2.x (checked in tests/torch/test_optim_state.py against real state_dicts): RMSprop
    has ``alpha`` (ASGD too, with ``lambd``/``t0``: ASGD is not RMSprop); Adagrad ``lr_decay``
    and a ``sum`` state; NAdam ``momentum_decay`` and ``mu_product``; Adamax an ``exp_inf``
    state; Lion-style sign optimizers ``betas`` without ``eps`` and only ``exp_avg``; Adam and
    AdamW ``amsgrad`` (and since PyTorch 2.6 ``decoupled_weight_decay``, which tells them apart);
    RAdam ``betas`` and ``eps`` without ``amsgrad``; SGD ``momentum``/``dampening``. Adam,
    AdamW and RAdam save the same state; more than one name means the keys cannot decide.
    """
    keys = set(group)
    if keys & {"lambd", "t0"} or state & {"eta", "ax"}:
        return ("asgd",)
    if "alpha" in keys:
        return ("rmsprop",)
    if keys & {"lr_decay", "initial_accumulator_value"} or "sum" in state:
        return ("adagrad",)
    if "momentum_decay" in keys or "mu_product" in state:
        return ("nadam",)
    if "exp_inf" in state:
        return ("adamax",)
    if "betas" in keys:
        if "eps" not in keys and not state & {"exp_avg_sq", "exp_inf"}:
            return ("lion",)
        if "correct_bias" in keys:  # transformers' own AdamW (deprecated)
            return ("adamw",)
        flag = group.get("decoupled_weight_decay")
        if "amsgrad" in keys:
            return ("adam", "adamw") if flag is None else ("adamw",) if flag else ("adam",)
        if flag is not None:
            return ("radam",)
        return ("adam", "adamw", "radam") + (() if state else ("adamax",))
    if keys & {"momentum", "dampening", "nesterov"}:
        return ("sgd",)
    return ()


def _tokens(text: str) -> set[str]:
    """``"paged_adamw_8bit"`` → {paged, adamw}; ``"torch.optim.AdamW"`` → {torch, optim, adamw}."""
    out = set()
    for tok in re.split(r"[^a-z0-9]+", text.lower()):
        tok = re.sub(r"\d+bit$", "", tok)
        if tok:
            out.add(tok)
    return out


def names_in(
    contexts: Iterable[Any], known: Sequence[str], depth: int = 3, where: str = ""
) -> dict[str, str]:
    """Optimizer names from ``known`` that saved training arguments mention: ``{name: key path}``.

    A string under a key containing "optim" (``optimizer_name: AdamW``, an HF Trainer's
    ``optim: adamw_torch``), or a class under such a key (LightningCLI's ``class_path``, Hydra's
    ``_target_``), searched inside the argument mappings of :data:`ARGUMENT_KEYS` too. Saved
    optimizer states (mappings with ``param_groups``) are skipped.
    """
    found: dict[str, str] = {}
    for ctx in contexts:
        if not isinstance(ctx, Mapping) or "param_groups" in ctx:
            continue
        for k, v in ctx.items():
            if not isinstance(k, str):
                continue
            path = f"{where}{k}"
            if "optim" in k.lower():
                texts = [v] if isinstance(v, str) else []
                if isinstance(v, Mapping) and "param_groups" not in v:
                    texts = [v[c] for c in CLASS_KEYS if isinstance(v.get(c), str)]
                for t in texts:
                    for name in sorted(_tokens(t) & set(known)):
                        found.setdefault(name, f"{path} = {t!r}")
            if (
                depth > 0
                and isinstance(v, Mapping)
                and (k in ARGUMENT_KEYS or "optim" in k.lower())
            ):
                for name, p in names_in([v], known, depth - 1, f"{path}.").items():
                    found.setdefault(name, p)
    return found


@dataclass(frozen=True)
class GroupSummary:
    """What the report says about the groups: the decayed value, the no-decay groups."""

    decayed: tuple[ParamGroupInfo, ...] = field(default_factory=tuple)
    no_decay: tuple[ParamGroupInfo, ...] = field(default_factory=tuple)


def summarize(groups: Sequence[ParamGroupInfo]) -> GroupSummary:
    """Split groups into decayed and no-decay ones (only meaningful when some are decayed)."""
    decayed = tuple(g for g in groups if g.decayed)
    if not decayed:
        return GroupSummary((), ())
    return GroupSummary(decayed, tuple(g for g in groups if not g.decayed))


def main_group(groups: Sequence[ParamGroupInfo]) -> ParamGroupInfo:
    """The group whose values stand for the run: the largest decayed group (by scalars, else by
    tensors; the first of equals), or the largest group when none is decayed."""
    pool = [g for g in groups if g.decayed] or list(groups)
    return max(pool, key=lambda g: (g.params if g.params is not None else -1, g.tensors, -g.index))


def _count(g: ParamGroupInfo) -> str:
    n = f"{g.tensors} tensor{'s' * (g.tensors != 1)}"
    return n + (f", {g.params:,} params" if g.params is not None else "")


def describe_groups(groups: Sequence[ParamGroupInfo]) -> list[str]:
    """Lines for the report: the weight decay of the decayed groups and which groups have none,
    and each group whose other values differ from the main group's (empty: nothing to say)."""
    if len(groups) < 2:
        return []
    lines: list[str] = []
    s = summarize(groups)
    if s.decayed and s.no_decay:
        wds = sorted({g.values["weight_decay"] for g in s.decayed})
        wd = ", ".join(f"{w:g}" for w in wds)
        on = ", ".join(f"{g.index} ({_count(g)})" for g in s.decayed)
        off = ", ".join(f"{g.index} ({_count(g)})" for g in s.no_decay)
        lines.append(f"weight decay {wd} on group(s) {on}; none on group(s) {off}")
    main = main_group(groups)
    for g in groups:
        diff = [f"{k} {v:.6g}" for k, v in g.values.items()
                if k != "weight_decay" and main.values.get(k) != v]  # fmt: skip
        if diff:
            lines.append(f"group {g.index} ({_count(g)}): {', '.join(diff)}")
    return lines
