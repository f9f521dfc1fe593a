"""From raw per-tensor sums to the reported statistics (pure: no torch).

The hot loop in :mod:`bscrit.engine` produces, for every trainable tensor, its
:class:`~bscrit.stats.GroupSums` plus three scalars for the scale-invariance test and ‖W‖².
Everything after that (which tensors are scale-invariant, G/N/NSR of a parameter set, the
equilibrium residual, pooling checkpoints) is plain arithmetic and lives here, so it can be tested
without torch and reused by the distributed path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .results import (
    CheckpointStats,
    Equilibrium,
    OptimizerInfo,
    ParameterRow,
    ParamSetStats,
)
from .stats import GroupSums, noise_stats, pool

#: Default tolerance of the scale-invariance test Σ|⟨W, g⟩| ≤ τ Σ‖W‖‖g‖ (THEORY §3, fp32).
TAU_FP32 = 1e-4
#: With bf16 autocast the gradients carry ~3 significant digits; the test needs a looser τ.
TAU_BF16 = 2e-2
#: |ρ| above this is reported as "not at equilibrium".
EQUILIBRIUM_TOLERANCE = 0.5


@dataclass(frozen=True)
class TensorSums:
    """What the hot loop keeps for one trainable tensor.

    Attributes:
        name: parameter name in ``model.named_parameters()``.
        shape: its shape.
        sums: Gram matrix of its group sums, its Q_j and the group counts.
        norm_sq: ‖W‖² at the checkpoint (float64).
        abs_dot: Σᵢ |⟨W, g_{i,W}⟩| over the batches of the invariance test (the first
            ``engine.INVARIANCE_BATCHES`` batches of every group).
        norm_prod: Σᵢ ‖W‖ ‖g_{i,W}‖ over the same batches.
    """

    name: str
    shape: tuple[int, ...]
    sums: GroupSums
    norm_sq: float
    abs_dot: float
    norm_prod: float

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def invariance_ratio(self) -> float:
        """Σ|⟨W, g⟩| / Σ‖W‖‖g‖: 0 for a scale-invariant tensor ([LMA21] Lemma E.7), nan if g ≡ 0."""
        if self.norm_prod <= 0.0:
            return math.nan
        return self.abs_dot / self.norm_prod

    def is_scale_invariant(self, tau: float = TAU_FP32) -> bool:
        r = self.invariance_ratio
        return (not math.isnan(r)) and r <= tau


def set_sums(tensors: Sequence[TensorSums]) -> GroupSums:
    """Group sums of the union of ``tensors`` (Gram matrices and Q add over disjoint tensors)."""
    if not tensors:
        raise ValueError("empty parameter set")
    total = GroupSums.zeros(tensors[0].sums.counts)
    for t in tensors:
        total = total + t.sums
    return total


def param_set_stats(tensors: Sequence[TensorSums]) -> ParamSetStats:
    """G, N, NSR with jackknife intervals, and R = ‖x‖², of a set of tensors."""
    s = noise_stats(set_sums(tensors))
    return ParamSetStats.from_noise_stats(
        s,
        R=sum(t.norm_sq for t in tensors),
        num_params=sum(t.numel for t in tensors),
        num_tensors=len(tensors),
    )


def parameter_rows(tensors: Sequence[TensorSums], tau: float = TAU_FP32) -> list[ParameterRow]:
    """The per-tensor breakdown: point values of G and N for each tensor alone."""
    rows = []
    for t in tensors:
        g, n = t.sums.full()
        rows.append(
            ParameterRow(
                name=t.name,
                shape=t.shape,
                numel=t.numel,
                G=g,
                N=n,
                R=t.norm_sq,
                scale_invariant=t.is_scale_invariant(tau),
                invariance_ratio=t.invariance_ratio,
            )
        )
    return rows


def equilibrium(
    opt: OptimizerInfo | None, stats: ParamSetStats | None, param_set: str
) -> tuple[Equilibrium | None, str]:
    """Residual of the SGD equilibrium condition, [LMA21] eq. (11).

    ``(2 − ηλ) λ R = η (G + N)`` on the scale-invariant weights, for SGD with coupled weight decay
    λ and LR η; ``ρ = (2 − ηλ) λ R / (η (G + N)) − 1``. With heavy-ball momentum μ the stationary
    dynamics are those of SGD with LR η/(1 − μ) and the same λ, so η is replaced by η/(1 − μ)
    (a heuristic, stated in the note).

    Returns:
        ``(Equilibrium or None, note)``: the note says how ρ was computed, or why it is null.
    """
    if stats is None:
        return None, "no parameter set to test"
    if opt is None:
        return None, "no optimizer in the spec or the checkpoint: equilibrium not checked"
    if opt.name != "sgd":
        return None, (
            f"the equilibrium condition [LMA21] eq. (11) is for SGD; the optimizer is {opt.name}"
        )
    if opt.weight_decay <= 0:
        return None, "SGD without weight decay has no equilibrium of the norm ([LMA21] eq. 11)"
    lr = opt.lr / (1.0 - opt.momentum) if opt.momentum else opt.lr
    lam = opt.weight_decay
    lhs = (2.0 - lr * lam) * lam * stats.R
    rhs = lr * (stats.G + stats.N)
    rho = lhs / rhs - 1.0 if rhs > 0 else math.inf
    note = f"[LMA21] eq. (11) on the {param_set.replace('_', '-')} parameters"
    if opt.momentum:
        note += f"; momentum {opt.momentum:g}: effective LR η/(1−μ) = {lr:.4g} (heuristic)"
    if param_set != "scale_invariant":
        note += "; no scale-invariant tensors, so the condition is only indicative"
    return (
        Equilibrium(
            lr=lr,
            weight_decay=lam,
            R=stats.R,
            G=stats.G,
            N=stats.N,
            lhs=lhs,
            rhs=rhs,
            residual=rho,
            param_set=param_set,
        ),
        note,
    )


@dataclass(frozen=True)
class CheckpointSummary:
    """One checkpoint, summarised: its stats, per-tensor rows and the names of the SI tensors."""

    stats: CheckpointStats
    rows: list[ParameterRow]
    scale_invariant_names: tuple[str, ...]
    scale_invariant_fraction: float
    equilibrium_note: str


def summarize_checkpoint(
    path: str,
    tensors: Sequence[TensorSums],
    opt: OptimizerInfo | None,
    elapsed_s: float,
    tau: float = TAU_FP32,
) -> CheckpointSummary:
    """Stats for all trainable tensors and for the scale-invariant subset of one checkpoint."""
    si = [t for t in tensors if t.is_scale_invariant(tau)]
    all_stats = param_set_stats(tensors)
    si_stats = param_set_stats(si) if si else None
    eq_set, eq_name = (si_stats, "scale_invariant") if si_stats else (all_stats, "all")
    eq, note = equilibrium(opt, eq_set, eq_name)
    total = sum(t.numel for t in tensors)
    return CheckpointSummary(
        stats=CheckpointStats(
            path=path, all=all_stats, scale_invariant=si_stats, equilibrium=eq, elapsed_s=elapsed_s
        ),
        rows=parameter_rows(tensors, tau),
        scale_invariant_names=tuple(t.name for t in si),
        scale_invariant_fraction=(sum(t.numel for t in si) / total) if total else 0.0,
        equilibrium_note=note,
    )


def pool_param_sets(sets: Sequence[ParamSetStats]) -> ParamSetStats:
    """Pool one parameter set across checkpoints (mean of G, N and R; see :func:`stats.pool`)."""
    pooled = pool([s.noise_stats() for s in sets])
    first = sets[0]
    return ParamSetStats.from_noise_stats(
        pooled,
        R=sum(s.R for s in sets) / len(sets),
        num_params=first.num_params,
        num_tensors=first.num_tensors,
    )
