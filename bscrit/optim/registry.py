"""The one registry of optimizers bscrit knows (pure: no torch import).

Everything bscrit knows about an optimizer lives here and nowhere else: its name, the
hyperparameters it takes, PyTorch's defaults for them, which scaling rule applies and where it is
stated (docs/theory.md §5; ``"none"`` where no rule is established, said plainly), the
``torch.optim`` class that runs it (how to recognise it in a saved optimizer state is
:mod:`bscrit.optim.saved`). The spec parser, ``bscrit scale``, the SVAG/confirmation runs and
the reports all read this registry; adding an optimizer means adding one :class:`OptimizerDef`
here, its signature in :func:`bscrit.optim.state.candidates` (and its rows in
``tests/unit/test_optim.py``).

Hyperparameters have one flat name each (``lr``, ``momentum``, ``nesterov``, ``beta1``,
``beta2``, ``eps``, ``alpha``, ``weight_decay``, ``momentum_decay``, ``lr_decay``,
``decoupled_weight_decay``); Adam's pair is ``betas`` in a spec and in :class:`OptimizerInfo`, as
in PyTorch. Trap: PyTorch's RMSprop ``alpha`` is the paper's β (the EMA constant of the squared
gradient) [MLPA22 Def. 5.1]; ASGD's ``alpha`` is something else (ASGD is not RMSprop).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from bscrit import boundary
from bscrit.errors import UsageError
from bscrit.optim.state import (
    ParamGroupInfo,
    describe_groups,
)

#: ``OptimizerInfo.source`` of a spec whose ``optimizer:`` gives only the name: the values are
#: read from the checkpoint's optimizer state (:func:`bscrit.load.optimizer.resolve_optimizer`).
NAME_ONLY = "spec-name"


@dataclass(frozen=True)
class OptimizerInfo:
    """The optimizer of the run the checkpoint comes from (spec, checkpoint or command line).

    The top-level values are the run's (with several param groups: the main group's, the largest
    decayed one, :func:`bscrit.optim.state.main_group`); ``lr`` is the base LR of the schedule
    (a scheduler's ``initial_lr``), ``lr_current`` the LR at the checkpoint; ``groups`` lists every
    param group read from a checkpoint.
    """

    name: str  # a key of REGISTRY
    lr: float
    momentum: float = 0.0
    weight_decay: float = 0.0
    betas: tuple[float, float] | None = None  # adam-family, lion
    eps: float | None = None  # adam-family/rmsprop/adagrad
    alpha: float | None = None  # rmsprop (PyTorch's smoothing constant, the paper's beta)
    nesterov: bool = False
    source: str = "spec"  # "spec" | "checkpoint" | "api" | "cli" | "scaled" | NAME_ONLY
    momentum_decay: float | None = None  # nadam's ψ
    lr_decay: float | None = None  # adagrad
    decoupled_weight_decay: bool = False  # nadam/radam's switch (adamw and lion always are)
    lr_current: float | None = None  # the main group's lr at the checkpoint
    groups: tuple[ParamGroupInfo, ...] = ()
    identified_by: str | None = None  # how the name was decided (checkpoint only)

    def to_dict(self) -> dict[str, Any]:
        """JSON form; the keys added after schema 1's first version only when they say
        something (an artifact of an SGD/Adam run from a spec is written as before)."""
        d = asdict(self)
        d["betas"] = list(self.betas) if self.betas is not None else None
        d["groups"] = [g.to_dict() for g in self.groups]
        return {k: v for k, v in d.items() if k not in _ADDED or v not in (None, False, [])}

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> OptimizerInfo:
        """Read ``to_dict``'s form; keys added after schema 1's first version may be absent."""
        betas = d.get("betas")

        def num(k: str) -> float | None:
            return None if d.get(k) is None else float(d[k])

        return OptimizerInfo(
            name=str(d["name"]),
            lr=float(d["lr"]),
            momentum=float(d.get("momentum") or 0.0),
            weight_decay=float(d.get("weight_decay") or 0.0),
            betas=(float(betas[0]), float(betas[1])) if betas is not None else None,
            eps=num("eps"),
            alpha=num("alpha"),
            nesterov=bool(d.get("nesterov", False)),
            source=str(d.get("source", "spec")),
            momentum_decay=num("momentum_decay"),
            lr_decay=num("lr_decay"),
            decoupled_weight_decay=bool(d.get("decoupled_weight_decay", False)),
            lr_current=num("lr_current"),
            groups=tuple(ParamGroupInfo.from_dict(g) for g in d.get("groups") or ()),
            identified_by=d.get("identified_by"),
        )


_ADDED = ("momentum_decay", "lr_decay", "decoupled_weight_decay", "lr_current", "groups",
          "identified_by")  # fmt: skip


@dataclass(frozen=True)
class Hyperparameter:
    """One hyperparameter: its flat name, the values it may take, and a one-line help."""

    key: str
    kind: str  # "positive" | "unit" ([0, 1)) | "nonnegative" | "bool"
    help: str


HYPERPARAMETERS: dict[str, Hyperparameter] = {
    h.key: h
    for h in (
        Hyperparameter("lr", "positive", "learning rate η"),
        Hyperparameter("momentum", "unit", "heavy-ball momentum μ"),
        Hyperparameter("nesterov", "bool", "Nesterov momentum"),
        Hyperparameter("beta1", "unit", "first-moment EMA constant β₁"),
        Hyperparameter("beta2", "unit", "second-moment EMA constant β₂"),
        Hyperparameter("alpha", "unit", "RMSprop's smoothing constant (the paper's β)"),
        Hyperparameter("eps", "positive", "ε of the adaptive denominator √v + ε"),
        Hyperparameter("weight_decay", "nonnegative", "weight decay λ"),
        Hyperparameter("momentum_decay", "nonnegative", "NAdam's momentum decay ψ (per step)"),
        Hyperparameter("lr_decay", "nonnegative", "Adagrad's LR decay (per step)"),
        Hyperparameter("decoupled_weight_decay", "bool", "AdamW-style decay (NAdam, RAdam)"),
    )
}

_KIND_TEXT = {
    "positive": "a positive number",
    "unit": "a number in [0, 1)",
    "nonnegative": "a non-negative number",
    "bool": "true or false",
}
#: The float-valued fields of :class:`OptimizerInfo` besides ``lr`` and ``betas``.
FLOAT_FIELDS = ("momentum", "weight_decay", "eps", "alpha", "momentum_decay", "lr_decay")
_BOOL_FIELDS = ("nesterov", "decoupled_weight_decay")


@dataclass(frozen=True)
class OptimizerDef:
    """Everything bscrit knows about one optimizer.

    Attributes:
        name: the registry key (lower case), as written in a spec.
        torch_class: the ``torch.optim`` class that runs it (None: not in PyTorch).
        rule: ``"linear"``, ``"square-root"`` or ``"none"`` (no established rule; docs/theory.md
            §5 says why).
        reference: where the rule is stated, e.g. ``"[LMA21 Def. 2.1]"``; for ``"none"`` why.
        keys: the flat hyperparameters it takes, ``lr`` first, in display order.
        defaults: PyTorch's default for every key but ``lr``.
        decoupled_weight_decay: AdamW-style decay always (λ scales with √κ, docs/theory.md §5).
        second_moment: state key of the second-moment EMA (the preconditioner √v + ε).
        bias_corrected: the second moment is divided by 1 − β₂^t in the update.
        svag: bscrit's SVAG runs support it (docs/theory.md §6).
    """

    name: str
    torch_class: str | None
    rule: str
    reference: str
    keys: tuple[str, ...]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    decoupled_weight_decay: bool = False
    second_moment: str | None = None
    bias_corrected: bool = False
    svag: bool = False

    @property
    def rule_reference(self) -> str:
        """e.g. ``"square-root scaling rule [MLPA22 Def. 5.2]"``."""
        if self.rule == "none":
            return f"no established scaling rule ({self.reference})"
        return f"{self.rule} scaling rule {self.reference}"

    @property
    def adaptive(self) -> bool:
        """Scaled by the square-root rule (an EMA-preconditioned optimizer)."""
        return self.rule == "square-root"

    @property
    def spec_keys(self) -> tuple[str, ...]:
        """The keys of a spec's ``optimizer:`` section (Adam's two betas as one ``betas``)."""
        out: list[str] = []
        for k in self.keys:
            k = "betas" if k in ("beta1", "beta2") else k
            if k not in out:
                out.append(k)
        return tuple(out)

    @property
    def values(self) -> tuple[str, ...]:
        """The numeric hyperparameters (``keys`` without the boolean switches)."""
        return tuple(k for k in self.keys if HYPERPARAMETERS[k].kind != "bool")


_ADAM = ("lr", "beta1", "beta2", "eps", "weight_decay")
_ADAM_DEFAULTS = {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0}
_SQRT = "[MLPA22 Def. 5.2]"
_NONE = "none is established; docs/theory.md §5"

#: The optimizers bscrit knows, by spec name.
REGISTRY: dict[str, OptimizerDef] = {
    d.name: d
    for d in (
        OptimizerDef("sgd", "SGD", "linear", "[LMA21 Def. 2.1]",
                     ("lr", "momentum", "nesterov", "weight_decay"),
                     {"momentum": 0.0, "nesterov": False, "weight_decay": 0.0}, svag=True),
        OptimizerDef("adam", "Adam", "square-root", _SQRT, _ADAM, _ADAM_DEFAULTS,
                     second_moment="exp_avg_sq", bias_corrected=True, svag=True),
        OptimizerDef("adamw", "AdamW", "square-root", _SQRT, _ADAM,
                     {**_ADAM_DEFAULTS, "weight_decay": 0.01},  # PyTorch's AdamW default
                     decoupled_weight_decay=True, second_moment="exp_avg_sq",
                     bias_corrected=True, svag=True),
        OptimizerDef("rmsprop", "RMSprop", "square-root", "[MLPA22 Def. 5.1]",
                     ("lr", "alpha", "eps", "momentum", "weight_decay"),
                     {"alpha": 0.99, "eps": 1e-8, "momentum": 0.0, "weight_decay": 0.0},
                     second_moment="square_avg", svag=True),
        OptimizerDef("nadam", "NAdam", "square-root", "[MLPA22 Def. 5.2; NAdam: docs/theory.md §5]",
                     (*_ADAM, "momentum_decay", "decoupled_weight_decay"),
                     {**_ADAM_DEFAULTS, "eps": 1e-8, "momentum_decay": 4e-3,
                      "decoupled_weight_decay": False},
                     second_moment="exp_avg_sq", bias_corrected=True),
        OptimizerDef("radam", "RAdam", "square-root", "[MLPA22 Def. 5.2; RAdam: docs/theory.md §5]",
                     (*_ADAM, "decoupled_weight_decay"),
                     {**_ADAM_DEFAULTS, "decoupled_weight_decay": False},
                     second_moment="exp_avg_sq", bias_corrected=True),
        OptimizerDef("adamax", "Adamax", "square-root",
                     "[MLPA22 Def. 5.2, by analogy: docs/theory.md §5]", _ADAM,
                     {**_ADAM_DEFAULTS, "beta2": 0.999}),
        OptimizerDef("adagrad", "Adagrad", "none", _NONE, ("lr", "lr_decay", "eps", "weight_decay"),
                     {"lr_decay": 0.0, "eps": 1e-10, "weight_decay": 0.0}),
        OptimizerDef("lion", None, "none", _NONE, ("lr", "beta1", "beta2", "weight_decay"),
                     {"beta1": 0.9, "beta2": 0.99, "weight_decay": 0.0},
                     decoupled_weight_decay=True),
        OptimizerDef("asgd", "ASGD", "none", _NONE, ("lr", "weight_decay"), {"weight_decay": 0.0}),
    )
}  # fmt: skip

NAMES: tuple[str, ...] = tuple(REGISTRY)
#: The optimizers a scaling rule applies to (``bscrit scale``, predict's scaled values).
SCALABLE: tuple[str, ...] = tuple(n for n, d in REGISTRY.items() if d.rule != "none")


def get(name: str) -> OptimizerDef:
    """The registry entry of ``name`` (case-insensitive); a :class:`UsageError` if unknown."""
    d = REGISTRY.get(str(name).lower())
    if d is None:
        raise UsageError(f"unknown optimizer {name!r}; bscrit knows {', '.join(sorted(NAMES))}")
    return d


def scalable(name: str) -> OptimizerDef:
    """The entry of ``name`` when a scaling rule applies to it, else a :class:`UsageError` that
    says plainly that none is established (docs/theory.md §5)."""
    d = get(name)
    if d.rule == "none":
        raise UsageError(
            f"bscrit knows no scaling rule for {d.name}: {d.reference} (rules are known for "
            f"{', '.join(SCALABLE)})"
        )
    return d


def decoupled(opt: OptimizerInfo) -> bool:
    """AdamW-style weight decay: the optimizer always has it, or its switch is on."""
    return get(opt.name).decoupled_weight_decay or opt.decoupled_weight_decay


def current_lr(opt: OptimizerInfo) -> float:
    """The LR at the checkpoint (equilibrium, continued training): ``lr_current`` when known."""
    return opt.lr_current if opt.lr_current is not None else opt.lr


def flat(opt: OptimizerInfo) -> dict[str, float]:
    """The numeric hyperparameters that apply to ``opt``, flat, defaults filled in.

    SGD: lr, momentum, weight_decay. Adam/AdamW: lr, beta1, beta2, eps, weight_decay. RMSprop:
    lr, alpha, eps, momentum, weight_decay. These are the ``scale --json`` key names.
    """
    d = get(opt.name)
    given: dict[str, Any] = {k: getattr(opt, k) for k in ("lr", *FLOAT_FIELDS)}
    given["beta1"] = opt.betas[0] if opt.betas is not None else None
    given["beta2"] = opt.betas[1] if opt.betas is not None else None
    return {k: float(d.defaults[k] if given[k] is None else given[k]) for k in d.values}


def from_flat(name: str, values: Mapping[str, Any], source: str = "spec") -> OptimizerInfo:
    """An :class:`OptimizerInfo` from flat values; keys that are absent take PyTorch's defaults."""
    d = get(name)
    v = {**d.defaults, **{k: x for k, x in values.items() if x is not None}}
    kw: dict[str, Any] = {k: float(v[k]) for k in FLOAT_FIELDS if k in d.keys}
    kw |= {k: bool(v[k]) for k in _BOOL_FIELDS if k in d.keys}
    if "beta1" in d.keys:
        kw["betas"] = (float(v["beta1"]), float(v["beta2"]))
    return OptimizerInfo(name=d.name, lr=float(v["lr"]), source=source, **kw)


def switches(opt: OptimizerInfo) -> dict[str, bool]:
    """The boolean hyperparameters of ``opt`` (``nesterov``, ``decoupled_weight_decay``)."""
    return {k: getattr(opt, k) for k in _BOOL_FIELDS}


#: (low, high, low_open, high_open) of each numeric kind.
_BOUNDS: dict[str, tuple[float, float | None, bool, bool]] = {
    "positive": (0.0, None, True, True),
    "unit": (0.0, 1.0, False, True),
    "nonnegative": (0.0, None, False, True),
}


def bounds(key: str) -> dict[str, Any]:
    """The range of numeric hyperparameter ``key``: low, high, low_open, high_open, what."""
    kind = HYPERPARAMETERS[key].kind
    low, high, low_open, high_open = _BOUNDS[kind]
    return {"low": low, "high": high, "low_open": low_open, "high_open": high_open,
            "what": _KIND_TEXT[kind]}  # fmt: skip


def check_value(key: str, value: Any) -> str | None:
    """Why ``value`` is not valid for hyperparameter ``key`` (None when it is)."""
    kind = HYPERPARAMETERS[key].kind
    if kind == "bool":
        return None if isinstance(value, bool) else f"expected true or false, got {value!r}"
    return boundary.number_problem(value, **bounds(key))[1]


def with_values(
    opt: OptimizerInfo, values: Mapping[str, Any], source: str = "cli"
) -> OptimizerInfo:
    """``opt`` with some flat hyperparameters replaced (None values are ignored).

    Param groups keep their own values, except that a group whose value of a replaced key equals
    the main value gets the new one (a no-decay group stays at 0 when ``weight_decay`` changes).

    Raises:
        UsageError: a key that the optimizer does not take (naming what it takes), or a value out
            of its range. Messages write options as ``{key}`` placeholders (see
            :class:`~bscrit.errors.UsageError`).
    """
    given = {k: v for k, v in values.items() if v is not None}
    if not given:
        return opt
    d = get(opt.name)
    unknown = sorted(k for k in given if k not in HYPERPARAMETERS)
    if unknown:
        raise UsageError(f"unknown hyperparameter(s): {', '.join(unknown)}")
    bad = [k for k in given if k not in d.keys]
    if bad:
        if "beta1" in bad or "beta2" in bad:  # Adam's pair is named together
            bad = [k for k in bad if k not in ("beta1", "beta2")] + ["beta1", "beta2"]
        takers = [n for n, o in REGISTRY.items() if all(k in o.keys for k in bad)]
        where = (
            ", ".join(takers[:-1]) + " and " * (len(takers) > 1) + takers[-1]
            if takers
            else ("no optimizer bscrit knows")
        )
        verb = "applies" if len(bad) == 1 else "apply"
        names = "/".join("{" + k + "}" for k in bad)
        raise UsageError(
            f"{names} {verb} to {where}, not {d.name} (it takes: {', '.join(d.keys)})",
            **{k: k for k in bad},
        )
    problems = boundary.Problems()  # every bad value at once
    for k, v in given.items():
        why = check_value(k, v)
        if why is not None:
            problems.add(k, why)
    problems.raise_any()
    old = flat(opt)
    new = from_flat(d.name, {**old, **switches(opt), **given}, source)
    groups = tuple(
        replace(g, values={k: (given[k] if k in given and old.get(k) == x else x)
                           for k, x in g.values.items()},
                lr_current=None if "lr" in given else g.lr_current)
        for g in opt.groups
    )  # fmt: skip
    lr_now = None if "lr" in given else opt.lr_current
    return replace(new, groups=groups, lr_current=lr_now, identified_by=opt.identified_by)


def group_optimizers(opt: OptimizerInfo) -> list[tuple[ParamGroupInfo, OptimizerInfo]]:
    """Each param group with its own :class:`OptimizerInfo` (the group's values, ``opt``'s
    switches), when the groups' values differ; empty when there is one set of values."""
    if len({tuple(sorted(g.values.items())) for g in opt.groups}) < 2:
        return []
    flags = switches(opt)
    return [(g, from_flat(opt.name, {**g.values, **flags}, opt.source)) for g in opt.groups]


def with_group_params(opt: OptimizerInfo, params: Sequence[int]) -> OptimizerInfo:
    """``opt`` with each param group's number of scalars, as matched to the model."""
    if len(params) != len(opt.groups):
        return opt
    return replace(opt, groups=tuple(replace(g, params=int(n)) for g, n in zip(opt.groups, params)))


def summary_lines(opt: OptimizerInfo) -> list[str]:
    """What a report says about ``opt`` beyond its name: the base and the current LR when a
    scheduler moved it; the decayed groups' weight decay and the no-decay groups."""
    lines = []
    if opt.lr_current is not None and not math.isclose(opt.lr_current, opt.lr, rel_tol=1e-9):
        lines.append(
            f"lr {opt.lr:.6g} (the schedule's base; {opt.lr_current:.6g} at the checkpoint)"
        )
    return lines + describe_groups(opt.groups)


def torch_kwargs(opt: OptimizerInfo) -> tuple[str, dict[str, Any]]:
    """``(torch.optim class name, keyword arguments)`` that run ``opt`` in PyTorch."""
    d = get(opt.name)
    if d.torch_class is None:
        raise UsageError(f"{d.name} is not in torch.optim: bscrit cannot run it")
    v = flat(opt)
    kw: dict[str, Any] = {k: v[k] for k in d.values if k not in ("beta1", "beta2")}
    if "beta1" in d.keys:
        kw["betas"] = (v["beta1"], v["beta2"])
    if "nesterov" in d.keys:
        kw["nesterov"] = bool(opt.nesterov and opt.momentum > 0)
    if "decoupled_weight_decay" in d.keys:
        kw["decoupled_weight_decay"] = bool(opt.decoupled_weight_decay)
    return d.torch_class, kw


def describe(opt: OptimizerInfo) -> str:
    """The hyperparameters of ``opt`` compactly (6 significant digits; zeros left out)."""
    d = get(opt.name)
    v = flat(opt)
    parts = [f"lr {v['lr']:.6g}"]
    if "beta1" in v:
        parts.append(f"betas ({v['beta1']:.6g}, {v['beta2']:.6g})")
    for k, label, f in (
        ("momentum", "momentum", ".6g"),
        ("alpha", "alpha", ".6g"),
        ("eps", "eps", ".3g"),
        ("weight_decay", "wd", ".6g"),
        ("momentum_decay", "momentum_decay", ".3g"),
        ("lr_decay", "lr_decay", ".3g"),
    ):
        if k in v and (v[k] or k in ("alpha", "eps")):
            parts.append(f"{label} {v[k]:{f}}")
    if d.name == "sgd" and opt.nesterov:
        parts.append("nesterov")
    if opt.decoupled_weight_decay and not d.decoupled_weight_decay:
        parts.append("decoupled")
    return ", ".join(parts)
