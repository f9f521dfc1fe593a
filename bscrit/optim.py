"""The one registry of optimizers bscrit knows (pure: no torch import).

Everything bscrit knows about an optimizer lives here and nowhere else: its name, the
hyperparameters it takes, PyTorch's defaults for them, which scaling rule applies and where it is
stated (docs/theory.md §5), the ``torch.optim`` class that runs it, and how to recognise it in a
saved optimizer state. The spec parser, ``bscrit scale``, the SVAG/confirmation runs and the
reports all read this registry; adding an optimizer means adding one :class:`OptimizerDef` here
(and its row in ``tests/unit/test_optim.py``).

Hyperparameters have one flat name each (``lr``, ``momentum``, ``nesterov``, ``beta1``,
``beta2``, ``eps``, ``alpha``, ``weight_decay``); Adam's pair is ``betas`` in a spec and in
:class:`OptimizerInfo`, as in PyTorch. Trap: PyTorch's RMSprop ``alpha`` is the paper's β (the
EMA constant of the squared gradient) [MLPA22 Def. 5.1].
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from .errors import UsageError


@dataclass(frozen=True)
class OptimizerInfo:
    """The optimizer of the run the checkpoint comes from (spec, checkpoint or command line)."""

    name: str  # a key of REGISTRY
    lr: float
    momentum: float = 0.0
    weight_decay: float = 0.0
    betas: tuple[float, float] | None = None  # adam/adamw
    eps: float | None = None  # adam/adamw/rmsprop
    alpha: float | None = None  # rmsprop (PyTorch's smoothing constant, the paper's beta)
    nesterov: bool = False
    source: str = "spec"  # "spec" | "checkpoint" | "cli" | "scaled"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["betas"] = list(self.betas) if self.betas is not None else None
        return d

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> OptimizerInfo:
        betas = d.get("betas")
        return OptimizerInfo(
            name=str(d["name"]),
            lr=float(d["lr"]),
            momentum=float(d.get("momentum") or 0.0),
            weight_decay=float(d.get("weight_decay") or 0.0),
            betas=(float(betas[0]), float(betas[1])) if betas is not None else None,
            eps=None if d.get("eps") is None else float(d["eps"]),
            alpha=None if d.get("alpha") is None else float(d["alpha"]),
            nesterov=bool(d.get("nesterov", False)),
            source=str(d.get("source", "spec")),
        )


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
        Hyperparameter("beta1", "unit", "Adam's first-moment EMA constant β₁"),
        Hyperparameter("beta2", "unit", "Adam's second-moment EMA constant β₂"),
        Hyperparameter("alpha", "unit", "RMSprop's smoothing constant (the paper's β)"),
        Hyperparameter("eps", "positive", "ε of the adaptive denominator √v + ε"),
        Hyperparameter("weight_decay", "nonnegative", "weight decay λ"),
    )
}

_KIND_TEXT = {
    "positive": "a positive number",
    "unit": "a number in [0, 1)",
    "nonnegative": "a non-negative number",
    "bool": "true or false",
}


@dataclass(frozen=True)
class OptimizerDef:
    """Everything bscrit knows about one optimizer.

    Attributes:
        name: the registry key (lower case), as written in a spec.
        torch_class: the ``torch.optim`` class that runs it.
        rule: ``"linear"`` or ``"square-root"`` (docs/theory.md §5).
        reference: where the rule is stated, e.g. ``"[LMA21 Def. 2.1]"``.
        keys: the flat hyperparameters it takes, ``lr`` first, in display order.
        defaults: PyTorch's default for every key but ``lr``.
        decoupled_weight_decay: AdamW-style decay (λ scales with √κ, docs/theory.md §5).
    """

    name: str
    torch_class: str
    rule: str
    reference: str
    keys: tuple[str, ...]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    decoupled_weight_decay: bool = False
    second_moment: str | None = None  # state key of the second-moment EMA (the preconditioner)
    bias_corrected: bool = False  # the second moment is divided by 1 − β₂^t in the update

    @property
    def rule_reference(self) -> str:
        """e.g. ``"square-root scaling rule [MLPA22 Def. 5.2]"``."""
        return f"{self.rule} scaling rule {self.reference}"

    @property
    def adaptive(self) -> bool:
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
        """The numeric hyperparameters (``keys`` without the ``nesterov`` switch)."""
        return tuple(k for k in self.keys if HYPERPARAMETERS[k].kind != "bool")


_ADAM_DEFAULTS = {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8}

#: The optimizers bscrit knows, by spec name.
REGISTRY: dict[str, OptimizerDef] = {
    d.name: d
    for d in (
        OptimizerDef(
            "sgd",
            "SGD",
            "linear",
            "[LMA21 Def. 2.1]",
            ("lr", "momentum", "nesterov", "weight_decay"),
            {"momentum": 0.0, "nesterov": False, "weight_decay": 0.0},
        ),
        OptimizerDef(
            "adam",
            "Adam",
            "square-root",
            "[MLPA22 Def. 5.2]",
            ("lr", "beta1", "beta2", "eps", "weight_decay"),
            {**_ADAM_DEFAULTS, "weight_decay": 0.0},
            second_moment="exp_avg_sq",
            bias_corrected=True,
        ),
        OptimizerDef(
            "adamw",
            "AdamW",
            "square-root",
            "[MLPA22 Def. 5.2]",
            ("lr", "beta1", "beta2", "eps", "weight_decay"),
            {**_ADAM_DEFAULTS, "weight_decay": 0.01},  # PyTorch's AdamW default
            decoupled_weight_decay=True,
            second_moment="exp_avg_sq",
            bias_corrected=True,
        ),
        OptimizerDef(
            "rmsprop",
            "RMSprop",
            "square-root",
            "[MLPA22 Def. 5.1]",
            ("lr", "alpha", "eps", "momentum", "weight_decay"),
            {"alpha": 0.99, "eps": 1e-8, "momentum": 0.0, "weight_decay": 0.0},
            second_moment="square_avg",
        ),
    )
}

NAMES: tuple[str, ...] = tuple(REGISTRY)


def get(name: str) -> OptimizerDef:
    """The registry entry of ``name`` (case-insensitive); a :class:`UsageError` if unknown."""
    d = REGISTRY.get(str(name).lower())
    if d is None:
        raise UsageError(f"unknown optimizer {name!r}; bscrit scales {', '.join(sorted(NAMES))}")
    return d


def flat(opt: OptimizerInfo) -> dict[str, float]:
    """The numeric hyperparameters that apply to ``opt``, flat, defaults filled in.

    SGD: lr, momentum, weight_decay. Adam/AdamW: lr, beta1, beta2, eps, weight_decay. RMSprop:
    lr, alpha, eps, momentum, weight_decay. These are the ``scale --json`` key names.
    """
    d = get(opt.name)
    given: dict[str, Any] = {
        "lr": opt.lr,
        "momentum": opt.momentum,
        "weight_decay": opt.weight_decay,
        "eps": opt.eps,
        "alpha": opt.alpha,
        "beta1": opt.betas[0] if opt.betas is not None else None,
        "beta2": opt.betas[1] if opt.betas is not None else None,
    }
    return {k: float(d.defaults[k] if given[k] is None else given[k]) for k in d.values}


def from_flat(name: str, values: Mapping[str, Any], source: str = "spec") -> OptimizerInfo:
    """An :class:`OptimizerInfo` from flat values; keys that are absent take PyTorch's defaults."""
    d = get(name)
    v = {**d.defaults, **{k: x for k, x in values.items() if x is not None}}
    adam = "beta1" in d.keys
    return OptimizerInfo(
        name=d.name,
        lr=float(v["lr"]),
        momentum=float(v.get("momentum", 0.0)),
        weight_decay=float(v.get("weight_decay", 0.0)),
        betas=(float(v["beta1"]), float(v["beta2"])) if adam else None,
        eps=float(v["eps"]) if "eps" in d.keys else None,
        alpha=float(v["alpha"]) if "alpha" in d.keys else None,
        nesterov=bool(v.get("nesterov", False)),
        source=source,
    )


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
    b = bounds(key)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = value > b["low"] if b["low_open"] else value >= b["low"]
    if ok and b["high"] is not None:
        ok = value < b["high"] if b["high_open"] else value <= b["high"]
    return None if ok else f"expected {b['what']}, got {value!r}"


def with_values(
    opt: OptimizerInfo, values: Mapping[str, Any], source: str = "cli"
) -> OptimizerInfo:
    """``opt`` with some flat hyperparameters replaced (None values are ignored).

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
        where = " and ".join(takers) if takers else "no optimizer bscrit knows"
        verb = "applies" if len(bad) == 1 else "apply"
        names = "/".join("{" + k + "}" for k in bad)
        raise UsageError(
            f"{names} {verb} to {where}, not {d.name} (it takes: {', '.join(d.keys)})",
            **{k: k for k in bad},
        )
    for k, v in given.items():
        why = check_value(k, v)
        if why is not None:
            raise UsageError("{" + k + "}: " + why, **{k: k})
    return from_flat(d.name, {**flat(opt), "nesterov": opt.nesterov, **given}, source)


def torch_kwargs(opt: OptimizerInfo) -> tuple[str, dict[str, Any]]:
    """``(torch.optim class name, keyword arguments)`` that run ``opt`` in PyTorch."""
    d = get(opt.name)
    v = flat(opt)
    kw: dict[str, Any] = {k: v[k] for k in d.values if k not in ("beta1", "beta2")}
    if "beta1" in d.keys:
        kw["betas"] = (v["beta1"], v["beta2"])
    if "nesterov" in d.keys:
        kw["nesterov"] = bool(opt.nesterov and opt.momentum > 0)
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
    ):
        if k in v and (v[k] or k in ("alpha", "eps")):
            parts.append(f"{label} {v[k]:{f}}")
    if d.name == "sgd" and opt.nesterov:
        parts.append("nesterov")
    return ", ".join(parts)


# ----------------------------------------------------------------------------------------------
# Reading the optimizer from a saved optimizer state
# ----------------------------------------------------------------------------------------------

#: Keys under which training scripts save the optimizer's state_dict.
STATE_KEYS = ("optimizer", "optimizer_state_dict", "optim", "opt", "optimizer_state")


def name_from_param_group(group: Mapping, *contexts: Mapping) -> str | None:
    """The optimizer whose ``param_groups`` entry has these keys (None when unknown).

    Adam and AdamW keep the same keys; AdamW is recognised by ``decoupled_weight_decay`` (PyTorch
    ≥ 2.5) or by a string mentioning it under a key containing "optim" in ``contexts``.
    """
    keys = set(group)
    if "betas" in keys and "amsgrad" in keys:
        if group.get("decoupled_weight_decay") is True:
            return "adamw"
        for ctx in contexts:
            for k, v in ctx.items():
                if isinstance(k, str) and "optim" in k.lower() and isinstance(v, str):
                    if "adamw" in v.lower():
                        return "adamw"
        return "adam"
    if "alpha" in keys:
        return "rmsprop"
    if "momentum" in keys or "dampening" in keys:
        return "sgd"
    return None


def _float(x: Any, default: float | None = None) -> float | None:
    if x is None:
        return default
    try:
        return float(x)  # a Tensor lr is allowed by PyTorch
    except (TypeError, ValueError):
        return default


def optimizer_state(obj: Any) -> Mapping | None:
    """The optimizer state_dict inside a loaded checkpoint object (None when there is none)."""
    if not isinstance(obj, Mapping):
        return None
    for k in STATE_KEYS:
        if isinstance(obj.get(k), Mapping) and "param_groups" in obj[k]:
            return obj[k]
    states = obj.get("optimizer_states")  # Lightning
    if isinstance(states, (list, tuple)) and states and isinstance(states[0], Mapping):
        return states[0]
    return None


def from_checkpoint(obj: Any) -> OptimizerInfo | None:
    """OptimizerInfo(source="checkpoint") from the first param_group of a saved optimizer."""
    opt_state = optimizer_state(obj)
    if opt_state is None or not isinstance(opt_state.get("param_groups"), (list, tuple)):
        return None
    groups = opt_state["param_groups"]
    if not groups or not isinstance(groups[0], Mapping):
        return None
    g = groups[0]
    name = name_from_param_group(g, obj, opt_state)
    lr = _float(g.get("lr"))
    if name is None or lr is None:
        return None
    keys = REGISTRY[name].keys
    betas = g.get("betas")
    values: dict[str, Any] = {"lr": lr}
    if "beta1" in keys and isinstance(betas, (list, tuple)) and len(betas) == 2:
        values["beta1"], values["beta2"] = float(betas[0]), float(betas[1])
    for k in ("momentum", "weight_decay", "eps", "alpha"):
        if k in keys:
            values[k] = _float(g.get(k))
    if "nesterov" in keys:
        values["nesterov"] = bool(g.get("nesterov", False))
    info = from_flat(name, values, "checkpoint")
    if "beta1" in keys and "beta1" not in values:  # keep "unknown" as None, as before
        info = replace(info, betas=None)
    return info
