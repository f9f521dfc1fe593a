"""The full "old -> new" answer of a scaling rule: every hyperparameter, steps, warnings (pure).

``bscrit scale``, ``predict``'s scaled values, ``schedule``'s stages and the demo all call
:func:`scale_hyperparameters`; the rules themselves are :mod:`bscrit.theory.scaling`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from bscrit.checker import check_batch_size
from bscrit.errors import UsageError
from bscrit.optim import registry as optim
from bscrit.optim.registry import OptimizerInfo
from bscrit.theory.scaling import (
    ADAM_RULE_TEXT,
    BETA_CAUTION,
    DEFAULT_ADAM_RULE,
    RuleLimit,
    adaptive_sde_warning,
    check_adam_rule,
    rule_limit,
    scale_optimizer,
    scale_steps,
)


@dataclass(frozen=True)
class ScaledGroup:
    """One param group's hyperparameters, old and new (given where the groups' values differ)."""

    index: int
    tensors: int
    params: int | None
    old: dict[str, float]
    new: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"index": self.index, "tensors": self.tensors, "params": self.params}
        return d | {"hyperparameters": dict(self.new), "old_hyperparameters": dict(self.old)}


@dataclass(frozen=True)
class ScaledHyperparameters:
    """The answer of ``bscrit scale``: old and new hyperparameters, rule, steps, warnings."""

    optimizer: str
    rule: str  # "linear" | "square-root"
    reference: str  # e.g. "linear scaling rule [LMA21 Def. 2.1]"
    batch_size: int
    target_batch_size: int
    kappa: float
    old: dict[str, float]
    new: dict[str, float]
    notes: dict[str, str]  # per hyperparameter: why it changed or not
    epochs: float | None
    steps: tuple[int | None, int | None]  # (old, new)
    warmup_steps: tuple[int | None, int | None]  # (old, new)
    warnings: tuple[str, ...] = ()
    groups: tuple[ScaledGroup, ...] = ()  # per param group, where the groups' values differ
    adam_rule: str | None = None  # the square-root rule's variant (None: SGD's linear rule)

    def to_dict(self) -> dict[str, Any]:
        """The ``scale --json`` object (and ``predict --json``'s ``scaled``)."""
        return {
            "rule": self.rule,
            "reference": self.reference,
            "optimizer": self.optimizer,
            "batch_size": self.batch_size,
            "target_batch_size": self.target_batch_size,
            "kappa": self.kappa,
            "hyperparameters": dict(self.new),
            "old_hyperparameters": dict(self.old),
            "notes": dict(self.notes),
            "epochs": self.epochs,
            "steps": self.steps[1],
            "warmup_steps": self.warmup_steps[1],
            "old_steps": self.steps[0],
            "old_warmup_steps": self.warmup_steps[0],
            "warnings": list(self.warnings),
            "groups": [g.to_dict() for g in self.groups],
        } | ({"adam_rule": self.adam_rule} if self.adam_rule is not None else {})


def _notes(
    opt: OptimizerInfo, old: dict[str, float], new: dict[str, float], adam_rule: str
) -> dict[str, str]:
    d = optim.get(opt.name)
    notes: dict[str, str] = {}
    if not d.adaptive:
        notes["lr"] = "η' = κη " + "[LMA21 Def. 2.1]"
        notes["momentum"] = "unchanged (Goyal et al. 2017; a heuristic)"
        notes["weight_decay"] = "unchanged (coupled weight decay)"
        return notes
    ref = d.reference
    if adam_rule == "lr-only":
        notes["lr"] = f"η' = √κ η {ref}"
        for k in new:
            if k != "lr":
                notes[k] = "kept (--adam-rule lr-only: a practice, not [MLPA22]'s rule)"
        return notes
    notes["lr"] = f"η' = √κ η {ref}"
    for b in ("beta1", "beta2", "alpha"):
        if b in new:
            notes[b] = f"β' = 1 − κ(1 − β) {ref}"
    notes["eps"] = f"ε' = ε/√κ {ref}"
    if optim.decoupled(opt):
        notes["weight_decay"] = "λ' = √κ λ (derived: keeps λ/η; not stated in [MLPA22])"
    else:
        notes["weight_decay"] = "unchanged (coupled L2 weight decay)"
    if "momentum" in new:
        notes["momentum"] = "unchanged (heavy-ball momentum is not covered by [MLPA22 Def. 5.1])"
    if "momentum_decay" in new:
        notes["momentum_decay"] = "ψ' = κψ (derived: its schedule counts steps)"
    return notes


def scale_hyperparameters(
    opt: OptimizerInfo,
    batch_size: int,
    target_batch_size: int,
    *,
    epochs: float | None = None,
    steps: int | None = None,
    warmup_steps: int | None = None,
    nsr_target: float | None = None,
    adam_rule: str = DEFAULT_ADAM_RULE,
) -> ScaledHyperparameters:
    """Scale ``opt`` from ``batch_size`` to ``target_batch_size`` with the optimizer's rule.

    κ = B'/B (κ < 1 scales down). Steps and warm-up steps are divided by κ (training length fixed
    in epochs); epochs are unchanged. ``nsr_target`` (the NSR at B', when a measurement is known)
    enables the adaptive-SDE warning of docs/theory.md §5. ``adam_rule`` picks the square-root
    rule's variant (:data:`~bscrit.theory.scaling.ADAM_RULES`; ignored for SGD).

    Raises:
        UsageError: invalid sizes, an unknown optimizer, or a κ the square-root rule cannot take.
    """
    check_batch_size(batch_size, "batch_size")
    check_batch_size(target_batch_size, "target_batch_size")
    if not (opt.lr > 0 and math.isfinite(opt.lr)):
        raise UsageError(f"the learning rate must be a positive number, got {opt.lr}")
    name = optim.scalable(opt.name).name
    if not 0.0 <= opt.momentum < 1.0:
        raise UsageError(f"momentum must be in [0, 1), got {opt.momentum}")
    if not opt.weight_decay >= 0.0:
        raise UsageError(f"weight decay must be >= 0, got {opt.weight_decay}")
    if opt.eps is not None and not opt.eps > 0.0:
        raise UsageError(f"eps must be > 0, got {opt.eps}")
    kappa = target_batch_size / batch_size
    adaptive = optim.get(name).adaptive
    adam_rule = check_adam_rule(adam_rule)
    limit = rule_limit(replace(opt, name=name), batch_size, adam_rule)
    try:
        new_opt = scale_optimizer(replace(opt, name=name), kappa, adam_rule)
    except UsageError as e:  # offer the largest B' the rule can reach
        if limit.batch_max is None or target_batch_size <= limit.batch_max:
            raise
        raise UsageError(
            f"{e.template}; from B = {batch_size} the largest B' it reaches is {limit.batch_max}",
            **e.options,
        ) from None
    if limit.batch_max is not None and target_batch_size > limit.batch_max:
        raise UsageError(
            f"the {optim.get(name).rule_reference} cannot scale {name} from B = {batch_size} to "
            f"{target_batch_size} (κ = {kappa:.4g}): {limit.reason}; the largest B' it "
            f"reaches is {limit.batch_max}"
        )
    old = optim.flat(replace(opt, name=name))
    new = optim.flat(new_opt)
    overflow = [k for k, v in new.items() if isinstance(v, float) and not math.isfinite(v)]
    if overflow:
        raise UsageError(
            f"{', '.join(overflow)} scaled by κ = {kappa:.4g} is not a finite number (from "
            f"{', '.join(f'{k} = {old[k]:g}' for k in overflow)}): no run takes it"
        )
    warnings = _warnings(opt, name, kappa, new, limit, nsr_target, adam_rule)
    groups = tuple(
        ScaledGroup(g.index, g.tensors, g.params, optim.flat(o),
                    optim.flat(scale_optimizer(replace(o, name=name), kappa, adam_rule)))
        for g, o in optim.group_optimizers(opt)
    )  # fmt: skip
    return ScaledHyperparameters(
        optimizer=name,
        rule=optim.get(name).rule,
        reference=optim.get(name).rule_reference,
        batch_size=int(batch_size),
        target_batch_size=int(target_batch_size),
        kappa=kappa,
        old=old,
        new=new,
        notes=_notes(replace(opt, name=name), old, new, adam_rule),
        epochs=epochs,
        steps=(steps, scale_steps(steps, kappa)),
        warmup_steps=(warmup_steps, scale_steps(warmup_steps, kappa)),
        warnings=tuple(warnings),
        groups=groups,
        adam_rule=adam_rule if adaptive else None,
    )


def _warnings(
    opt: OptimizerInfo,
    name: str,
    kappa: float,
    new: dict[str, float],
    limit: RuleLimit,
    nsr_target: float | None,
    adam_rule: str,
) -> list[str]:
    """What :func:`scale_hyperparameters` warns about: what the rule does not cover."""
    adaptive = optim.get(name).adaptive
    warnings: list[str] = []
    if name == "sgd" and opt.nesterov:
        warnings.append("Nesterov momentum is kept as is; the linear rule does not cover it")
    if name == "rmsprop" and opt.momentum:
        warnings.append(
            "RMSprop momentum is kept unchanged: [MLPA22 Def. 5.1] covers RMSprop without momentum"
        )
    if limit.caution_kappa is not None and kappa > limit.caution_kappa:
        low = ", ".join(f"{k}' = {new[k]:.3g}" for k in ("beta1", "beta2", "alpha")
                        if k in new and new[k] < BETA_CAUTION)  # fmt: skip
        warnings.append(
            f"{low}: below {BETA_CAUTION:g}, the scaled moment estimates average over fewer than "
            "two steps; the square-root rule is stretched close to its limit here (κ = "
            f"{kappa:.3g}, limit {limit.kappa_max:.3g})"
        )
    if "docs/theory.md" in optim.get(name).reference:
        warnings.append(
            f"the square-root rule is stated for Adam and RMSprop [MLPA22]; for {name} it is "
            "extended in docs/theory.md §5, not proved"
        )
    w = adaptive_sde_warning(nsr_target, name)
    if w:
        warnings.append(w)
    if adaptive and adam_rule == "lr-only":
        warnings.append(f"--adam-rule lr-only: {ADAM_RULE_TEXT['lr-only']}; the betas' horizons "
                        "in epochs shrink by κ, which [MLPA22]'s SDE does not cover")  # fmt: skip
    return warnings


def warnings_once(scalings: Mapping[int, ScaledHyperparameters | None]) -> list[str]:
    """The warnings of the scalings to several batch sizes (None: none was possible there), each
    said once: ``"every stage: …"`` when every batch size got it, else ``"B = 256, 512: …"``."""
    said: dict[str, list[int]] = {}
    for b, s in scalings.items():
        for w in s.warnings if s is not None else ():
            said.setdefault(w, []).append(b)
    return [
        f"{'every stage' if len(bs) == len(scalings) else 'B = ' + ', '.join(map(str, bs))}: {w}"
        for w, bs in said.items()
    ]
