"""From raw per-tensor sums to the reported statistics (pure: no torch).

The hot loop in :mod:`bscrit.engine.loop` produces, for every trainable tensor, its
:class:`~bscrit.stats.estimators.GroupSums` plus three scalars for the scale-invariance test
and ‖W‖². Everything after that (which tensors are scale-invariant, G/N/NSR of a parameter set,
the equilibrium residual, pooling checkpoints) is plain arithmetic and lives here, so it can be
tested without torch and reused by the distributed path.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from bscrit.artifacts.records import CheckpointStats, Equilibrium, ParameterRow, ParamSetStats
from bscrit.errors import MeasurementError
from bscrit.optim.registry import OptimizerInfo, current_lr
from bscrit.stats.equilibrium import (
    EquilibriumInterval,
    equilibrium_interval,
    relaxation_steps,
)
from bscrit.stats.estimators import (
    GroupSums,
    NoiseStats,
    PerExampleRaw,
    PerExampleStats,
    noise_stats,
    per_example_stats,
    pool,
)

#: Default tolerance of the scale-invariance test Σ|⟨W, g⟩| ≤ τ Σ‖W‖‖g‖ (docs/theory.md §3, fp32).
TAU_FP32 = 1e-4
#: With bf16 autocast or half-precision weights the gradients carry ~3 significant digits; the
#: test needs a looser τ.
TAU_BF16 = 2e-2


def default_tau(dtypes: Iterable[str], amp: str | None = None) -> float:
    """τ of the scale-invariance test for parameters of these dtypes (``str(p.dtype)``): the bf16
    one under bf16 autocast or when any measured parameter is bf16 or fp16 (docs/theory.md §3)."""
    half = any(d.replace("torch.", "") in ("bfloat16", "float16", "half") for d in dtypes)
    return TAU_BF16 if amp == "bf16" or half else TAU_FP32


@dataclass(frozen=True)
class PerExampleInput:
    """What the per-example estimator adds to one checkpoint's sums: C[j][t], n and B."""

    raw: PerExampleRaw
    n: int
    b: int


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
    preconditioned: GroupSums | None = None  # the same sums of P g (docs/theory.md §5)

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

    @property
    def zero_gradient(self) -> bool:
        """Whether its gradient was identically zero on every batch (Q_j = 0 in every group): a
        parameter the loss never reaches (an unused head), which has no N to divide by."""
        return all(q == 0.0 for q in self.sums.q)


def set_sums(tensors: Sequence[TensorSums], preconditioned: bool = False) -> GroupSums:
    """Group sums of the union of ``tensors`` (Gram matrices and Q add over disjoint tensors);
    with ``preconditioned``, of their sums of P g (every tensor must have them)."""
    if not tensors:
        raise ValueError("empty parameter set")
    parts = [t.preconditioned if preconditioned else t.sums for t in tensors]
    total = GroupSums.zeros(parts[0].counts)  # type: ignore[union-attr]
    for p in parts:
        total = total + p  # type: ignore[operator]
    return total


def param_set_stats(
    tensors: Sequence[TensorSums], noise: NoiseStats | None = None
) -> ParamSetStats:
    """G, N, NSR with jackknife intervals, and R = ‖x‖², of a set of tensors.

    ``noise``: G and N from another estimator of the same set (default: the batch estimator).
    """
    s = noise if noise is not None else noise_stats(set_sums(tensors))
    return ParamSetStats.from_noise_stats(
        s,
        R=sum(t.norm_sq for t in tensors),
        num_params=sum(t.numel for t in tensors),
        num_tensors=len(tensors),
    )


def parameter_row(t: TensorSums, g: float, n: float, tau: float = TAU_FP32) -> ParameterRow:
    """One row of the per-tensor breakdown: G and N of the tensor alone."""
    return ParameterRow(
        name=t.name,
        shape=t.shape,
        numel=t.numel,
        G=g,
        N=n,
        R=t.norm_sq,
        scale_invariant=t.is_scale_invariant(tau),
        invariance_ratio=t.invariance_ratio,
    )


def equilibrium(
    opt: OptimizerInfo | None, stats: ParamSetStats | None, param_set: str
) -> tuple[Equilibrium | None, str]:
    """Residual of the SGD equilibrium condition, [LMA21] eq. (11).

    ``(2 − ηλ) λ R = η (G + N)`` on the scale-invariant weights, for SGD with coupled weight decay
    λ and LR η; ``ρ = (2 − ηλ) λ R / (η (G + N)) − 1``. With heavy-ball momentum μ the stationary
    dynamics are those of SGD with LR η/(1 − μ) and the same λ, so η is replaced by η/(1 − μ)
    (a heuristic, stated in the note). η is the LR at the checkpoint (``lr_current`` when a
    scheduler moved it), the one the current dynamics run at.

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
    lr = current_lr(opt)  # the LR at the checkpoint (a scheduler's current lr), not the base
    lr = lr / (1.0 - opt.momentum) if opt.momentum else lr
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


def equilibrium_set(
    all_stats: ParamSetStats, si_stats: ParamSetStats | None
) -> tuple[ParamSetStats, str]:
    """The parameter set the equilibrium condition is tested on: the scale-invariant one if any
    (the condition is about scale-invariant weights, docs/theory.md §3), else all parameters."""
    return (si_stats, "scale_invariant") if si_stats is not None else (all_stats, "all")


@dataclass(frozen=True)
class CheckpointSummary:
    """One checkpoint, summarised: its stats, per-tensor rows and the names of the SI tensors.

    ``per_example`` holds the per-example estimator's (all, scale-invariant or None) statistics
    when it was used.
    """

    stats: CheckpointStats
    rows: list[ParameterRow]
    scale_invariant_names: tuple[str, ...]
    scale_invariant_fraction: float
    equilibrium_note: str
    per_example: tuple[PerExampleStats, PerExampleStats | None] | None = None
    preconditioned: ParamSetStats | None = None  # G_P, N_P of all trainable tensors
    zero_gradient_names: tuple[str, ...] = ()  # tensors whose gradient was 0 on every batch


def summarize_checkpoint(
    path: str,
    tensors: Sequence[TensorSums],
    opt: OptimizerInfo | None,
    elapsed_s: float,
    tau: float = TAU_FP32,
    per_example: PerExampleInput | None = None,
) -> CheckpointSummary:
    """Stats for all trainable tensors and for the scale-invariant subset of one checkpoint.

    With ``per_example`` (the C_j of the per-example estimator, with n and B) G and N come from
    :func:`~bscrit.stats.estimators.per_example_stats` instead of the batch estimator
    (docs/theory.md §2).

    Tensors whose gradient was identically zero on every batch (:attr:`TensorSums.zero_gradient`)
    are named in ``zero_gradient_names`` and left out of every parameter set (G, N, R, the
    counts): their per-tensor row has G = N = 0 and no NSR.

    Raises:
        MeasurementError: every tensor's gradient was zero on every batch (no N at all).
    """

    def noise_of(idx: list[int]) -> tuple[NoiseStats, PerExampleStats | None]:
        sums = set_sums([tensors[i] for i in idx])
        if per_example is None:
            return noise_stats(sums), None
        pe = per_example_stats(sums, per_example.raw.set_c(idx), per_example.n, per_example.b)
        return pe.noise, pe

    def set_stats(idx: list[int]) -> tuple[ParamSetStats, PerExampleStats | None]:
        noise, pe = noise_of(idx)
        return param_set_stats([tensors[i] for i in idx], noise), pe

    used = _nonzero(tensors)
    si_idx = [i for i in used if tensors[i].is_scale_invariant(tau)]
    all_stats, all_pe = set_stats(used)
    si_stats, si_pe = set_stats(si_idx) if si_idx else (None, None)
    eq, note = equilibrium(opt, *equilibrium_set(all_stats, si_stats))
    rows, measured = [], set(used)
    for i, t in enumerate(tensors):
        noise = noise_of([i])[0] if i in measured else None  # a zero gradient: G = N = 0, no NSR
        g, n = (noise.G.value, noise.N.value) if noise is not None else (0.0, 0.0)
        rows.append(parameter_row(t, g, n, tau))
    total = sum(tensors[i].numel for i in used)
    return CheckpointSummary(
        stats=CheckpointStats(
            path=path, all=all_stats, scale_invariant=si_stats, equilibrium=eq, elapsed_s=elapsed_s
        ),
        rows=rows,
        scale_invariant_names=tuple(tensors[i].name for i in si_idx),
        scale_invariant_fraction=(sum(tensors[i].numel for i in si_idx) / total) if total else 0.0,
        equilibrium_note=note,
        per_example=None if per_example is None else (all_pe, si_pe),  # type: ignore[arg-type]
        preconditioned=_preconditioned([tensors[i] for i in used]),
        zero_gradient_names=tuple(t.name for t in tensors if t.zero_gradient),
    )


def _nonzero(tensors: Sequence[TensorSums]) -> list[int]:
    """The indices of the tensors with a gradient somewhere (see :func:`summarize_checkpoint`)."""
    used = [i for i, t in enumerate(tensors) if not t.zero_gradient]
    if tensors and not used:
        raise MeasurementError(
            f"the gradient of every measured parameter ({len(tensors)} tensor(s)) was zero on "
            "every batch: the loss does not depend on the parameters measured (are they the "
            "ones the model uses? is the loss constant?)"
        )
    return used


def _preconditioned(tensors: Sequence[TensorSums]) -> ParamSetStats | None:
    """G_P, N_P, NSR_P of all tensors when every one has its preconditioned sums, else None."""
    if not tensors or any(t.preconditioned is None for t in tensors):
        return None
    return param_set_stats(tensors, noise_stats(set_sums(tensors, preconditioned=True)))


def pool_param_sets(sets: Sequence[ParamSetStats]) -> ParamSetStats:
    """Pool one parameter set across checkpoints (mean of G, N, R; :func:`estimators.pool`)."""
    pooled = pool([s.noise_stats() for s in sets])
    first = sets[0]
    return ParamSetStats.from_noise_stats(
        pooled,
        R=sum(s.R for s in sets) / len(sets),
        num_params=first.num_params,
        num_tensors=first.num_tensors,
    )


def equilibrium_intervals(
    summaries: Sequence[CheckpointSummary],
    all_pooled: ParamSetStats,
    si_pooled: ParamSetStats | None,
    pre_pooled: ParamSetStats | None,
    steps: Sequence[int | None],
    opt: OptimizerInfo | None,
) -> EquilibriumInterval:
    """What the intervals cover, and the intervals over the equilibrium (docs/theory.md §8) of
    each pooled parameter set, with τ = 1/(2ηλ) of the run's optimizer."""
    sets = {"all": (all_pooled, [s.stats.all for s in summaries])}
    if si_pooled is not None:
        sets["scale_invariant"] = (si_pooled, [s.stats.scale_invariant for s in summaries])
    if pre_pooled is not None:
        sets["preconditioned"] = (pre_pooled, [s.preconditioned for s in summaries])
    tau, why = relaxation_steps(opt)
    return equilibrium_interval(
        {k: (p.noise_stats(), [x.noise_stats() for x in per]) for k, (p, per) in sets.items()},  # type: ignore[union-attr]
        steps,
        tau,
        why,
    )
