"""Scaling rules for the batch size, and the SVAG hyperparameters (pure: no torch).

docs/theory.md §5 and §6. Going from batch size B to B' = κB with the training length fixed in
epochs (so the number of steps and the warm-up are divided by κ):

- SGD, linear scaling rule [LMA21, Def. 2.1]: η' = κη; coupled weight decay λ and momentum μ
  unchanged (Goyal et al.'s practice; for μ > 0 it is a heuristic).
- RMSprop, square-root scaling rule [MLPA22, Def. 5.1]: η' = √κ η, β' = 1 − κ(1 − β) (PyTorch's
  ``alpha``), ε' = ε/√κ.
- Adam, square-root scaling rule [MLPA22, Def. 5.2]: η' = √κ η, β₁' = 1 − κ(1 − β₁),
  β₂' = 1 − κ(1 − β₂), ε' = ε/√κ.
- AdamW decoupled weight decay (*derived here*, not stated in the papers): one Adam step is η² of
  SDE time and decays the weights by ηλ, so the decay rate per unit time is λ/η; keeping it gives
  λ' = √κ λ.

Adam's rule has two variants (``adam_rule``, docs/theory.md §5 "Adam rule variants"): ``"full"``
is [MLPA22]'s rule above; ``"lr-only"`` scales only η' = √κ η and keeps β₁, β₂, ε and λ (a
common practice, e.g. OLMo-core's batch-size scheduler; not a rule [MLPA22] states). Both warm
start Adam's v at v/κ at a branch (v tracks the gradient noise, σ² ∝ 1/B, whatever the betas).

Coupled (L2) weight decay of SGD, Adam and RMSprop is part of the loss and does not depend on η:
it is left unchanged. The square-root rule cannot be applied when κ(1 − β) ≥ 1 for some β (β' would
be ≤ 0): :func:`square_root_rule` refuses with a message that gives the largest usable κ.

Traps:
- PyTorch's RMSprop ``alpha`` is the paper's β (the EMA constant of the squared gradient).
- ε scales *down* when the batch grows (ε' = ε/√κ) because the gradient noise, hence √v, shrinks.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

from bscrit.checker import check_batch_size
from bscrit.errors import UsageError
from bscrit.optim import registry as optim
from bscrit.optim.registry import OptimizerInfo
from bscrit.optim.state import ParamGroupInfo

#: Variants of the square-root rule (docs/theory.md §5): [MLPA22]'s full rule, or the LR alone.
ADAM_RULES: tuple[str, ...] = ("full", "lr-only")
DEFAULT_ADAM_RULE = "full"
#: What each variant keeps, for reports.
ADAM_RULE_TEXT = {
    "full": "η√κ, β' = 1 − κ(1 − β), ε/√κ, AdamW λ√κ [MLPA22 Defs. 5.1–5.2]",
    "lr-only": "η√κ only; β₁, β₂, ε, λ kept (a practice, e.g. OLMo-core; not [MLPA22]'s rule)",
}


def check_adam_rule(adam_rule: str) -> str:
    """``adam_rule`` when it is one of :data:`ADAM_RULES`, else a :class:`UsageError`."""
    if adam_rule not in ADAM_RULES:
        raise UsageError(
            f"unknown Adam rule {adam_rule!r}: expected one of {', '.join(ADAM_RULES)}",
        )
    return adam_rule


#: Below this NSR at the target batch the noise no longer dominates the gradient, which the Adam /
#: RMSprop SDE needs ([MLPA22] §4.1, Remark 4.3: σ ≫ ‖ḡ‖). A heuristic threshold, not a theorem.
ADAPTIVE_SDE_MIN_NSR = 1.0


def _check_kappa(kappa: float) -> None:
    if not (kappa > 0 and math.isfinite(kappa)):
        raise UsageError(f"the batch-size ratio κ must be a positive number, got {kappa}")


def linear_rule(opt: OptimizerInfo, kappa: float) -> OptimizerInfo:
    """SGD from B to κB: η' = κη; momentum and coupled weight decay unchanged [LMA21, Def. 2.1].

    Works for κ < 1 (scaling down) too.
    """
    _check_kappa(kappa)
    return replace(opt, lr=opt.lr * kappa, source="scaled", groups=(), lr_current=None)


def _scaled_beta(beta: float, kappa: float, label: str, optimizer: str) -> float:
    """β' = 1 − κ(1 − β) [MLPA22, Defs. 5.1–5.2]; refuses when β' ≤ 0 (κ(1 − β) ≥ 1)."""
    if not 0.0 <= beta < 1.0:
        raise UsageError(f"{label} of {optimizer} must be in [0, 1), got {beta}")
    new = 1.0 - kappa * (1.0 - beta)
    if new <= 1e-12:  # κ(1 − β) ≥ 1 up to rounding: 1 − 10·(1 − 0.9) is 2e-16 in floating point
        kmax = 1.0 / (1.0 - beta)
        raise UsageError(
            f"the square-root scaling rule cannot scale {optimizer} by κ = {kappa:g}: "
            f"{label}' = 1 − κ(1 − {label}) = 1 − {kappa:g}·(1 − {beta:g}) = {new:.4g} ≤ 0 "
            f"[MLPA22 Defs. 5.1–5.2]; the rule needs κ < 1/(1 − {label}) = {kmax:.4g}"
        )
    return new


#: Below this value a scaled EMA constant β' averages over fewer than two steps: the scaled run's
#: moment estimates are then barely smoothed, a regime far from the base run's (docs/theory.md §5).
BETA_CAUTION = 0.5


@dataclass(frozen=True)
class RuleLimit:
    """How far the optimizer's scaling rule reaches from batch size B (docs/theory.md §5).

    Attributes:
        kappa_max: supremum of the usable κ (exclusive); inf when the rule has no limit.
        batch_max: the largest integer B' with B'/B < kappa_max (None when unlimited).
        binding: the hyperparameter that sets the limit (``"beta1"``, ``"beta2"``, ``"alpha"``,
            ``"weight_decay"``), or None.
        caution_kappa: above this κ some scaled β' is below :data:`BETA_CAUTION` (None: never).
        reason: one sentence, in words fit for the optimizer.
    """

    kappa_max: float
    batch_max: int | None
    binding: str | None
    caution_kappa: float | None
    reason: str

    def to_dict(self) -> dict[str, object]:
        k = self.kappa_max if math.isfinite(self.kappa_max) else None
        return {"batch_max": self.batch_max, "kappa_max": k, "binding": self.binding,
                "reason": self.reason}  # fmt: skip


def rule_limit(
    opt: OptimizerInfo, batch_size: int, adam_rule: str = DEFAULT_ADAM_RULE
) -> RuleLimit:
    """The largest κ (and B' = κB) the optimizer's scaling rule can reach from ``batch_size``.

    - Adam / AdamW / RMSprop, square-root rule [MLPA22 Defs. 5.1–5.2]: every β' = 1 − κ(1 − β)
      must stay > 0, so κ < 1/(1 − β) for each β; above κ = 0.5/(1 − β), β' < 0.5.
    - SGD with coupled weight decay, linear rule: one step multiplies the weights by
      1 − η'λ = 1 − κηλ ([LMA21] eq. 7), which must stay > 0: κ < 1/(ηλ).
    - AdamW: its decoupled decay multiplies the weights by 1 − η'λ' = 1 − κηλ per step (η' = √κη,
      λ' = √κλ), the same condition.
    - ``adam_rule="lr-only"``: the betas are kept (no limit from them); AdamW's factor is
      1 − √κηλ, so κ < 1/(ηλ)².
    """
    d = optim.scalable(opt.name)
    check_batch_size(batch_size, "batch_size")
    lr_only = d.adaptive and check_adam_rule(adam_rule) == "lr-only"
    per_group = [rule_limit(g, batch_size, adam_rule) for _, g in optim.group_optimizers(opt)]
    if per_group:  # every group must stay valid: the smallest reach binds
        return min(per_group, key=lambda r: r.kappa_max)
    v = optim.flat(opt)
    limits: list[tuple[float, str, str]] = []  # (κ_max, key, reason)
    caution = None
    for b in ("beta1", "beta2", "alpha"):
        if b in v and 0 < v[b] < 1 and not lr_only:
            k = 1.0 / (1.0 - v[b])
            limits.append((k, b, f"{b}' = 1 − κ(1 − {b}) must stay > 0 {d.reference}"))
            c = BETA_CAUTION / (1.0 - v[b])
            caution = c if caution is None else min(caution, c)
    coupled_sgd = not d.adaptive and v.get("weight_decay", 0.0) > 0
    rate = v.get("lr", 0.0) * v.get("weight_decay", 0.0)  # 0 when ηλ underflows: no limit
    if (coupled_sgd or optim.decoupled(opt)) and rate > 0 and math.isfinite(1.0 / rate):
        k = 1.0 / rate**2 if lr_only else 1.0 / rate
        factor = "1 − √κηλ" if lr_only else "1 − κηλ"
        limits.append(
            (k, "weight_decay", f"the per-step weight decay factor {factor} must stay > 0 "
             "([LMA21] eq. 7)")
        )  # fmt: skip
    name = "LR-only square-root scaling (η√κ, the rest kept)" if lr_only else d.rule_reference
    if not limits:
        return RuleLimit(math.inf, None, None, caution, f"the {name} has no limit")
    k, key, why = min(limits)
    if not math.isfinite(k * batch_size):  # a limit beyond every float: none in practice
        return RuleLimit(math.inf, None, None, caution, f"the {name} has no limit")
    b_max = math.floor(k * batch_size)  # the largest B' with B'/B < κ_max (up to rounding)
    if b_max / batch_size >= k * (1.0 - 1e-12):
        b_max -= 1
    return RuleLimit(k, b_max, key, caution, f"{why}: κ < {k:.4g}, B' <= {b_max}")


def square_root_rule(
    opt: OptimizerInfo, kappa: float, adam_rule: str = DEFAULT_ADAM_RULE
) -> OptimizerInfo:
    """Adam / AdamW / RMSprop from B to κB [MLPA22, Def. 5.1 (RMSprop) and Def. 5.2 (Adam)].

    η' = √κ η, β' = 1 − κ(1 − β) for every β (Adam's β₁, β₂; RMSprop's ``alpha``), ε' = ε/√κ.
    AdamW: λ' = √κ λ (derived: keeps λ/η, the decay rate per unit SDE time). Coupled weight decay
    (Adam, RMSprop) and RMSprop's heavy-ball momentum are left unchanged.

    ``adam_rule="lr-only"``: η' = √κ η and nothing else.

    Raises:
        UsageError: when κ(1 − β) ≥ 1 for some β, i.e. β' ≤ 0: the rule cannot be applied.
    """
    _check_kappa(kappa)
    d = optim.scalable(opt.name)
    if not d.adaptive:
        raise UsageError(
            f"the square-root scaling rule is for adaptive optimizers, not {d.torch_class}"
        )
    s = math.sqrt(kappa)
    v = optim.flat(opt)
    if check_adam_rule(adam_rule) == "lr-only":
        return optim.from_flat(d.name, {**v, **optim.switches(opt), "lr": v["lr"] * s}, "scaled")
    new = {"lr": v["lr"] * s, "eps": v["eps"] / s}
    for b in ("beta1", "beta2", "alpha"):
        if b in v:
            new[b] = _scaled_beta(v[b], kappa, b, d.torch_class)
    if optim.decoupled(opt):
        new["weight_decay"] = v["weight_decay"] * s
    if "momentum_decay" in v:  # NAdam's momentum schedule counts steps: keep it in epochs
        new["momentum_decay"] = v["momentum_decay"] * kappa
    return optim.from_flat(d.name, {**v, **optim.switches(opt), **new}, source="scaled")


def scale_optimizer(
    opt: OptimizerInfo, kappa: float, adam_rule: str = DEFAULT_ADAM_RULE
) -> OptimizerInfo:
    """Apply the rule of ``opt.name``: :func:`linear_rule` or :func:`square_root_rule` (a
    :class:`UsageError` for an optimizer with no established rule)."""
    if optim.scalable(opt.name).rule == "linear":
        return linear_rule(opt, kappa)
    return square_root_rule(opt, kappa, adam_rule)


def scale_groups(
    opt: OptimizerInfo, scaled: OptimizerInfo, kappa: float, adam_rule: str = DEFAULT_ADAM_RULE
) -> OptimizerInfo:
    """``scaled`` (``opt`` scaled by its rule) with every param group of ``opt`` scaled by the
    same rule, so a run at B' trains each group as the base run did, scaled."""
    return replace(scaled, groups=_map_groups(opt, lambda o: scale_optimizer(o, kappa, adam_rule)))


def _map_groups(
    opt: OptimizerInfo, change: Callable[[OptimizerInfo], OptimizerInfo]
) -> tuple[ParamGroupInfo, ...]:
    """Every param group of ``opt`` with its values changed by ``change`` (applied to the group
    as an optimizer of its own, ``opt``'s switches kept); the LR at the checkpoint dropped."""
    groups = []
    for g in opt.groups:
        g_opt = optim.from_flat(opt.name, {**g.values, **optim.switches(opt)}, opt.source)
        groups.append(replace(g, values=optim.flat(change(g_opt)), lr_current=None))
    return tuple(groups)


def rule_reaches(opt: OptimizerInfo, batch_size: int) -> dict[str, RuleLimit]:
    """How far each variant of the optimizer's rule reaches from B (one entry, ``"linear"``, for
    SGD; one per :data:`ADAM_RULES` for the adaptive optimizers)."""
    d = optim.scalable(opt.name)
    if not d.adaptive:
        return {"linear": rule_limit(opt, batch_size)}
    return {r: rule_limit(opt, batch_size, r) for r in ADAM_RULES}


def svag_hyperparameters(opt: OptimizerInfo, l: int) -> OptimizerInfo:  # noqa: E741
    """Hyperparameters of one SVAG step with parameter l ≥ 1 (docs/theory.md §6).

    SVAG draws two batches and combines them with r₁,₂ = (1 ± √(2l − 1))/2 (mean kept, covariance
    × l), then takes l steps per step of the original run:

    - SGD [LMA21, Def. 4.1]: LR η/l; coupled weight decay and momentum unchanged.
    - RMSprop / Adam [MLPA22, §6], written with bscrit's l (the paper's ℓ is √l): LR η/√l,
      β ← 1 − (1 − β)/l for every β, ε ← ε√l. AdamW also λ ← λ/√l (keeps λ/η, derived as in
      :func:`square_root_rule`). Missing betas/eps/alpha take PyTorch's defaults.

    l = 1 returns the optimizer unchanged (SVAG with l = 1 is the plain optimizer).
    """
    if isinstance(l, bool) or int(l) != l or l < 1:
        raise UsageError(f"the SVAG parameter l must be an integer >= 1, got {l}")
    d = optim.scalable(opt.name)
    if l == 1:
        return opt
    if opt.groups:  # each param group takes the same SVAG transformation
        groups = _map_groups(opt, lambda o: svag_hyperparameters(o, l))
        return replace(svag_hyperparameters(replace(opt, groups=()), l), groups=groups)
    if not d.adaptive:
        return replace(opt, lr=opt.lr / l)
    s = math.sqrt(l)
    v = optim.flat(opt)
    new = {"lr": v["lr"] / s, "eps": v["eps"] * s}
    for b in ("beta1", "beta2", "alpha"):
        if b in v:
            new[b] = 1.0 - (1.0 - v[b]) / l
    if optim.decoupled(opt):
        new["weight_decay"] = v["weight_decay"] / s
    if "momentum_decay" in v:
        new["momentum_decay"] = v["momentum_decay"] / l
    return optim.from_flat(d.name, {**v, **optim.switches(opt), **new}, source=opt.source)


# ----------------------------------------------------------------------------------------------
# The full "old -> new" answer
# ----------------------------------------------------------------------------------------------


def scale_steps(steps: int | None, kappa: float) -> int | None:
    """Steps at the new batch size for the same number of epochs: round(steps/κ).

    Rounded to the nearest integer; a positive count never rounds down to 0.
    """
    if steps is None:
        return None
    if steps < 0:
        raise UsageError(f"a step count must be >= 0, got {steps}")
    if steps == 0:
        return 0
    return max(1, math.floor(steps / kappa + 0.5))


def adaptive_sde_warning(nsr_target: float | None, optimizer: str) -> str | None:
    """Heuristic warning for the square-root rule when noise stops dominating (docs/theory.md §5).

    The Adam/RMSprop SDE of [MLPA22] needs σ ≫ ‖ḡ‖ (§4.1, Remark 4.3). When the NSR at the target
    batch size, N^{B'}/G, is below :data:`ADAPTIVE_SDE_MIN_NSR` (1), the rule's premise is doubtful.
    Returns None for SGD, for an unknown NSR, or when the NSR is large enough.
    """
    if nsr_target is None or not optim.get(optimizer).adaptive:
        return None
    if nsr_target < ADAPTIVE_SDE_MIN_NSR:
        return (
            f"the noise-to-signal ratio at the target batch size is {nsr_target:.3g} < "
            f"{ADAPTIVE_SDE_MIN_NSR:g}: the gradient noise no longer dominates the gradient, which "
            "the adaptive-optimizer SDE behind the square-root rule assumes ([MLPA22] §4.1, "
            "Remark 4.3; heuristic threshold)"
        )
    return None
