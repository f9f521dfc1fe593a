"""Intervals for the equilibrium value from several checkpoints (pure: no torch, no numpy).

docs/theory.md §8, "Intervals for the equilibrium". G∞, N∞ and NSR∞ = N∞/G∞ of [LMA21] Def. 5.1
are expectations over SGD's equilibrium distribution of the weights x; one checkpoint is one draw
x_t from it, and the batch-noise intervals of §2 cover E_γ at that x_t only. With checkpoints
x_1..x_K (each measured with its own batches, so Ĝ_i, N̂_i are unbiased for G(x_i), N(x_i)):

- **Draws.** Checkpoints closer than the relaxation time τ = 1/(2ηλ) steps ([LMA21] eq. 10) are
  correlated. Consecutive checkpoints are merged into ``b`` blocks that each span at least τ
  steps (batch means); a block is one draw. Checkpoints with no saved step, or a run with no
  known τ, are taken as independent draws (the output says so).
- **Point value.** The ratio of means, NSR = ΣN̂_i/ΣĜ_i, as the pooled measurement has it.
- **Interval.** The delete-one-draw jackknife of the ratio of means, ``ρ_(j) = N̄_(j)/Ḡ_(j)``,
  with Student's t at b − 1 degrees of freedom; the same for Ḡ and N̄. The draws' own batch noise
  is inside the jackknife already, so the within-checkpoint jackknife is not added. Fieller's and
  the log-ratio interval were tried and covered less often when G is right-skewed across
  checkpoints, as it is (docs/theory.md §8 has the simulation). When Ḡ's interval reaches 0 the
  interval is that of G/N jackknifed and inverted (upper end ∞), as for one checkpoint.

Traps: the ratio of means is not the mean of ratios (the few checkpoints with a large G weigh
most); a single draw gives no interval for the equilibrium at all.

Sampling the equilibrium from one checkpoint (``measure --sample-steps``) is
:mod:`bscrit.stats.sample_plan`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bscrit.artifacts.jsonvalues import finite_or_none, finite_pair, none_to_inf
from bscrit.optim import registry as optim
from bscrit.optim.registry import OptimizerInfo
from bscrit.stats.estimators import (
    LEVEL,
    Estimate,
    NoiseStats,
    interval,
    jackknife_se,
    nsr_interval,
)

#: Warn when the between-checkpoint spread of G/N is this many times the within-checkpoint s.e.
#: (its RMS): the scatter of the checkpoints, not the batches, sets the uncertainty (heuristic).
SPREAD_WARN = 2.0

#: ``EquilibriumInterval.scope``: what the intervals cover.
SCOPES = ("checkpoint", "checkpoints", "equilibrium")


# ----------------------------------------------------------------------------------------------
# Time scale
# ----------------------------------------------------------------------------------------------


def relaxation_steps(opt: OptimizerInfo | None) -> tuple[float | None, str]:
    """τ = 1/(2ηλ) steps, the relaxation time of ‖x‖² under SGD ([LMA21] eq. 10), and how it was
    computed.

    η is the LR at the checkpoint (``lr_current``, what a scheduler had decayed it to), not the
    schedule's base LR. Eq. (10) shrinks E‖x‖² by (1 − ηλ)² ≈ 1 − 2ηλ per step. With heavy-ball
    momentum μ, η is η/(1 − μ) (the heuristic of docs/theory.md §3). AdamW's decoupled decay
    shrinks the weights by (1 − ηλ) per step as well, so the same τ is used there as a
    heuristic. Returns
    ``(None, why)`` without weight decay (no equilibrium of the norm, [LMA21] eq. 11) or for an
    optimizer whose decay does not act this way.
    """
    if opt is None:
        return None, "no optimizer known: the relaxation time 1/(2ηλ) is unknown"
    eta = optim.current_lr(opt)  # the LR at the checkpoint, not the schedule's base
    at = "" if eta == opt.lr else f" at the checkpoint's LR η = {eta:.4g}"
    if opt.weight_decay <= 0 or eta <= 0:
        return None, (
            f"{opt.name} without weight decay (or at LR 0) has no equilibrium of the norm "
            "([LMA21] eq. 11) and no relaxation time 1/(2ηλ)"
        )
    if opt.name == "sgd":
        lr = eta / (1.0 - opt.momentum) if opt.momentum else eta
        why = f"1/(2ηλ){at} ([LMA21] eq. 10)"
        if opt.momentum:
            why += f" with η/(1 − μ) = {lr:.4g} for momentum {opt.momentum:g} (heuristic)"
        return _tau(lr, opt.weight_decay, why)
    if opt.name == "adamw":
        why = f"1/(2ηλ){at} of AdamW's decoupled decay (a heuristic transfer of [LMA21] eq. 10)"
        return _tau(eta, opt.weight_decay, why)
    return None, f"no relaxation time is known for {opt.name} with coupled weight decay"


def _tau(lr: float, weight_decay: float, why: str) -> tuple[float | None, str]:
    """1/(2ηλ), or None when it is not a finite number (ηλ below the float range)."""
    rate = 2.0 * lr * weight_decay
    if not (rate > 0 and math.isfinite(1.0 / rate)):
        return None, f"2ηλ = 2 · {lr:g} · {weight_decay:g} is too small for a relaxation time"
    return 1.0 / rate, why


# ----------------------------------------------------------------------------------------------
# Draws: blocks of consecutive checkpoints spanning at least τ
# ----------------------------------------------------------------------------------------------


def draw_blocks(steps: Sequence[float | None], tau: float | None) -> tuple[list[list[int]], str]:
    """Indices of the checkpoints in each draw (block), in step order, and a note.

    Checkpoints sorted by step span ``S = s_K − s_1 + Δ`` steps (Δ = mean spacing, the time each
    one stands for); ``b = min(K, ⌊S/τ⌋)`` blocks of equal duration S/b ≥ τ (batch means).
    Unknown steps (any None) or unknown τ: every checkpoint is its own draw.
    """
    k = len(steps)
    if k == 0:
        raise ValueError("no checkpoints")
    every = [[i] for i in range(k)]
    if k == 1:
        return every, "one checkpoint"
    if any(s is None for s in steps):
        return every, (
            "the steps of the checkpoints are not all known: each is taken as an independent "
            "draw, which needs them at least 1/(2ηλ) steps apart"
        )
    if tau is None:
        return every, (
            "the relaxation time is unknown: each checkpoint is taken as an independent draw, "
            "which needs them far enough apart for their weights to decorrelate"
        )
    order = sorted(range(k), key=lambda i: steps[i])  # type: ignore[arg-type,return-value]
    s = [float(steps[i]) for i in order]  # type: ignore[arg-type]
    if s[-1] <= s[0]:
        return [order], "the checkpoints are all at the same step: one draw"
    delta = (s[-1] - s[0]) / (k - 1)
    span = s[-1] - s[0] + delta
    b = min(k, int(span // tau))
    if b >= k:
        return [[i] for i in order], (
            f"{k} checkpoints over {span:.0f} steps, spaced {delta:.0f} ≥ τ = {tau:.0f} steps: "
            f"{k} independent draws"
        )
    if b < 2:
        return [order], (
            f"{k} checkpoints over {span:.0f} steps < 2τ = {2 * tau:.0f} steps: one draw from the "
            "equilibrium, so no interval for it"
        )
    blocks: list[list[int]] = [[] for _ in range(b)]
    for i, si in zip(order, s, strict=True):
        blocks[min(b - 1, int((si - s[0]) / span * b))].append(i)
    blocks = [blk for blk in blocks if blk]
    return blocks, (
        f"{k} checkpoints over {span:.0f} steps, spaced {delta:.0f} < τ = {tau:.0f} steps: "
        f"batch means over {len(blocks)} blocks of ≥ τ steps"
    )


# ----------------------------------------------------------------------------------------------
# The interval
# ----------------------------------------------------------------------------------------------


def ratio_interval(
    g: float, n: float, g_loo: Sequence[float], n_loo: Sequence[float], level: float = LEVEL
) -> tuple[float, tuple[float, float]]:
    """NSR = N̄/Ḡ and its delete-one-draw jackknife interval (module docstring).

    ``nsr ± t_{(1+level)/2, b−1} · se`` with ``se² = (b − 1)/b · Σ_j (ρ_(j) − ρ̄)²`` and
    ``ρ_(j) = N̄_(j)/Ḡ_(j)``; the lower end is clipped at 0. When Ḡ's own interval reaches 0 (or a
    leave-one-out Ḡ_(j) ≤ 0) the ratio is not smooth there, and the interval is that of
    :func:`~bscrit.stats.estimators.nsr_interval`: G/N jackknifed and inverted, upper end ∞.

    Returns:
        ``(nsr, (lo, hi))``; ``nsr`` is ∞ when Ḡ ≤ 0.
    """
    b = len(g_loo)
    if b < 2 or len(n_loo) != b:
        raise ValueError(f"the jackknife needs at least 2 draws with G and N, got {b}")
    g_est = interval(g, g_loo, level)
    if g_est.ci95[0] <= 0 or min(g_loo) <= 0:
        return nsr_interval(g, n, g_loo, n_loo, level)
    nsr = n / g
    est = interval(nsr, [nj / gj for gj, nj in zip(g_loo, n_loo, strict=True)], level)
    return nsr, (max(est.ci95[0], 0.0), est.ci95[1])


@dataclass(frozen=True)
class SetInterval:
    """G, N and NSR of one parameter set over the draws, with 95% intervals.

    ``spread``: the standard deviation of the checkpoints' G/N divided by the RMS of their own
    batch-noise standard errors (≈ 1 when the checkpoints differ by batch noise only; None for one
    checkpoint).
    """

    G: Estimate
    N: Estimate
    nsr: float
    nsr_ci95: tuple[float, float]
    spread: float | None

    def to_dict(self) -> dict[str, Any]:
        def est(e: Estimate) -> dict[str, Any]:
            return {"value": e.value, "se": finite_or_none(e.se), "ci95": finite_pair(e.ci95)}

        return {
            "G": est(self.G),
            "N": est(self.N),
            "nsr": finite_or_none(self.nsr),
            "nsr_ci95": finite_pair(self.nsr_ci95),
            "spread": finite_or_none(self.spread),
        }

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> SetInterval:
        def est(e: Mapping[str, Any]) -> Estimate:
            lo, hi = e["ci95"]
            se = math.nan if e.get("se") is None else float(e["se"])
            low = -math.inf if lo is None else lo
            return Estimate(float(e["value"]), se, (low, none_to_inf(hi)))

        lo, hi = d["nsr_ci95"]
        return SetInterval(
            G=est(d["G"]),
            N=est(d["N"]),
            nsr=none_to_inf(d["nsr"]),
            nsr_ci95=(none_to_inf(lo), none_to_inf(hi)),
            spread=None if d.get("spread") is None else float(d["spread"]),
        )


def spread_ratio(stats: Sequence[NoiseStats]) -> float | None:
    """sd of the checkpoints' Ĝ/N̂ over the RMS of their jackknife standard errors (G/N is
    smooth through G = 0, so it is the scale on which the checkpoints are compared)."""
    if len(stats) < 2 or any(s.N.value <= 0 for s in stats):
        return None
    snr = [s.G.value / s.N.value for s in stats]
    ses = [jackknife_se([g / n for g, n in zip(s.jackknife_G, s.jackknife_N)]) for s in stats]
    mean = sum(snr) / len(snr)
    sd = math.sqrt(sum((x - mean) * (x - mean) for x in snr) / (len(snr) - 1))
    within = math.sqrt(sum(se * se for se in ses) / len(ses))
    return sd / within if within > 0 else math.inf


def set_interval(stats: Sequence[NoiseStats], blocks: Sequence[Sequence[int]]) -> SetInterval:
    """Pooled G, N (means over checkpoints), NSR = ΣN/ΣG and their intervals over ``blocks``
    (each a list of checkpoint indices: one draw). Needs at least 2 blocks."""
    if len(blocks) < 2:
        raise ValueError("an interval over the equilibrium needs at least 2 draws")
    k = len(stats)
    g_all = [s.G.value for s in stats]
    n_all = [s.N.value for s in stats]
    sg, sn = sum(g_all), sum(n_all)
    g_loo, n_loo = [], []
    for blk in blocks:
        rest = k - len(blk)
        g_loo.append((sg - sum(g_all[i] for i in blk)) / rest)
        n_loo.append((sn - sum(n_all[i] for i in blk)) / rest)
    g, n = sg / k, sn / k
    nsr, ci = ratio_interval(g, n, g_loo, n_loo)
    return SetInterval(interval(g, g_loo), interval(n, n_loo), nsr, ci, spread_ratio(stats))


def pooled_set_interval(pooled: NoiseStats, stats: Sequence[NoiseStats]) -> SetInterval:
    """The batch-noise interval of the pooled checkpoints (no equilibrium interval possible)."""
    return SetInterval(pooled.G, pooled.N, pooled.nsr, pooled.nsr_ci95, spread_ratio(stats))


@dataclass(frozen=True)
class EquilibriumInterval:
    """What the intervals of a measurement cover, and the equilibrium intervals when there are.

    Attributes:
        scope: "checkpoint" (one checkpoint: batch noise at that point only), "checkpoints"
            (several, but one draw: batch noise of their average only) or "equilibrium"
            (``draws`` ≥ 2 independent draws: the intervals cover the equilibrium value).
        checkpoints: K, the checkpoints (or sampled points) measured.
        draws: b, the independent draws (blocks) the interval rests on.
        relaxation_steps: τ = 1/(2ηλ), or None when unknown.
        steps: the step of each checkpoint (None where unknown), in measurement order.
        note: how the draws were formed, in words.
        sets: ``"all"``, ``"scale_invariant"``, ``"preconditioned"`` → :class:`SetInterval`.
    """

    scope: str
    checkpoints: int
    draws: int
    relaxation_steps: float | None
    steps: tuple[int | None, ...]
    note: str
    sets: dict[str, SetInterval]

    @property
    def covers_equilibrium(self) -> bool:
        return self.scope == "equilibrium"

    def to_dict(self) -> dict[str, Any]:
        return {
            "scope": self.scope,
            "checkpoints": self.checkpoints,
            "draws": self.draws,
            "relaxation_steps": finite_or_none(self.relaxation_steps),
            "steps": list(self.steps),
            "note": self.note,
            "sets": {k: v.to_dict() for k, v in self.sets.items()},
        }

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> EquilibriumInterval:
        tau = d.get("relaxation_steps")
        return EquilibriumInterval(
            scope=str(d["scope"]),
            checkpoints=int(d["checkpoints"]),
            draws=int(d["draws"]),
            relaxation_steps=None if tau is None else float(tau),
            steps=tuple(None if s is None else int(s) for s in d.get("steps", [])),
            note=str(d.get("note", "")),
            sets={k: SetInterval.from_dict(v) for k, v in d["sets"].items()},
        )


def equilibrium_interval(
    sets: Mapping[str, tuple[NoiseStats, Sequence[NoiseStats]]],
    steps: Sequence[int | None],
    tau: float | None,
    tau_note: str = "",
) -> EquilibriumInterval:
    """Intervals over the equilibrium for each parameter set (module docstring).

    Args:
        sets: name → (pooled batch-noise stats, per-checkpoint stats in measurement order).
        steps: each checkpoint's training step (None where unknown).
        tau: the relaxation time in steps (:func:`relaxation_steps`), or None.
        tau_note: how τ was computed (or why it is unknown), for the note.
    """
    k = len(steps)
    blocks, note = draw_blocks(steps, tau)
    if tau is None and k > 1 and tau_note:
        note = f"{tau_note}; {note}"
    if k == 1 or len(blocks) < 2:
        scope = "checkpoint" if k == 1 else "checkpoints"
        out = {name: pooled_set_interval(p, per) for name, (p, per) in sets.items()}
        return EquilibriumInterval(scope, k, 1, tau, tuple(steps), note, out)
    # a set without noise at some point (N ≤ 0) has no ratio to bound: left out here
    out = {name: set_interval(per, blocks) for name, (_, per) in sets.items()
           if all(s.N.value > 0 for s in per)}  # fmt: skip
    return EquilibriumInterval("equilibrium", k, len(blocks), tau, tuple(steps), note, out)


def one_draw_advice(tau: float | None) -> str:
    """What the user can do to get an interval for the equilibrium."""
    apart = f"≥ {tau:.0f} steps = 1/(2ηλ)" if tau else "≥ 1/(2ηλ) steps"
    return (
        f"for the equilibrium: several checkpoints {apart} apart (-c runs/ --last 10), or "
        "--sample-steps (docs/theory.md §8)"
    )


#: An NSR interval is called wide (and the output says what would narrow it) when its upper end
#: is more than this many times its lower end, or infinite (a display threshold, not a test).
WIDE_RATIO = 2.0


def wide_interval(ci: tuple[float, float]) -> bool:
    """Whether an NSR interval ``(lo, hi)`` is wide: ``hi > WIDE_RATIO · lo`` or unbounded."""
    lo, hi = ci
    return not math.isfinite(hi) or not lo > 0 or hi > WIDE_RATIO * lo


def narrowing_advice(scope: str, tau: float | None, draws: int = 1) -> str:
    """What would narrow an interval of this ``scope`` (:data:`SCOPES`), in words.

    At one checkpoint (or one draw of several) the interval is the batch noise there: more
    batches narrow it, and only more draws give one for the equilibrium. Over the equilibrium the
    interval rests on ``draws`` independent draws (t at draws − 1 degrees of freedom, and the
    scatter between them): more draws narrow it, more batches per checkpoint only the batch noise
    within each draw.
    """
    apart = f"≥ {tau:.0f} steps = 1/(2ηλ)" if tau else "≥ 1/(2ηλ) steps"
    if scope == "equilibrium":
        return (
            f"this interval rests on {draws} draws from the equilibrium: more draws narrow it "
            f"(more checkpoints {apart} apart, -c runs/ --last 10, or a longer --sample-steps); "
            "more batches narrow only the batch noise within each draw"
        )
    where = "this checkpoint" if scope == "checkpoint" else "these checkpoints"
    return f"more batches (--batches) narrow the batch noise at {where}; {one_draw_advice(tau)}"


def interval_warnings(e: EquilibriumInterval) -> list[str]:
    """Warnings about what the intervals cover: the between-checkpoint spread dominating the
    batch noise (:data:`SPREAD_WARN`), several checkpoints that are one draw, unknown spacing."""
    out: list[str] = []
    spreads = {k: v.spread for k, v in e.sets.items() if v.spread is not None}
    if spreads:
        name, worst = max(spreads.items(), key=lambda kv: kv[1])
        if worst > SPREAD_WARN:
            tail = (
                f"the equilibrium interval (from {e.draws} draws) includes that scatter"
                if e.covers_equilibrium
                else "the intervals above cover these checkpoints only, not the equilibrium"
            )
            out.append(
                f"the NSR varies between checkpoints {worst:.1f}× more than the batch noise at "
                f"each ({name.replace('_', '-')} parameters): one checkpoint's interval would "
                f"cover that point only; {tail}"
            )
    if e.scope == "checkpoints":
        out.append(
            f"{e.note}: the intervals cover the average of these {e.checkpoints} checkpoints, not "
            f"the equilibrium; {one_draw_advice(e.relaxation_steps)}"
        )
    elif e.covers_equilibrium and "independent draw" in e.note and "spaced" not in e.note:
        out.append(e.note)
    return out
