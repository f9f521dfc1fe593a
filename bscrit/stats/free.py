"""G, N and B* from the batch gradients a training step computes anyway (pure: no torch, no numpy).

docs/theory.md §8, "Several batch gradients inside one step" and "Pooling free steps". A step with
gradient accumulation or DDP holds M ≥ 2 batch gradients at the same weights x: M disjoint slices
of b examples (micro-batches, ranks) of one shuffle of the n training examples, so the step's
batch is B = M·b distinct examples. With slice gradients h_1..h_M (each the gradient of the
slice's *mean* loss), the step gradient h̄ = (1/M) Σ_j h_j and::

    s² = Σ_j ‖h_j − h̄‖² / (M − 1) = (Σ_j ‖h_j‖² − M ‖h̄‖²) / (M − 1)

Derivation (finite population, [SDBD21] eq. 22 and its App. A). Let X_i = ∇ℓ_i − ∇L, so
Σ_i X_i = 0, T₁ = (1/n) Σ_i ‖X_i‖², and for i ≠ l drawn without replacement
E⟨X_i, X_l⟩ = −T₁/(n − 1). A slice mean d_j = h_j − ∇L then has E‖d_j‖² = N^b =
T₁(n − b)/(b(n − 1)), two disjoint slices have E⟨d_j, d_k⟩ = −T₁/(n − 1), and h̄ is the mean of
B = Mb distinct examples, E‖h̄ − ∇L‖² = N^B. Hence::

    E Σ_j ‖h_j − h̄‖² = M·N^b − M·N^B = (M − 1)·T₁ n/(b (n − 1))
    E s²    = T₁ n / (b (n − 1))            (not N^b: the slices are negatively correlated)
    E‖h̄‖²  = G + N^B

so the unbiased per-step estimators are::

    T̂₁   = s² b (n − 1)/n
    N̂^b  = s² (n − b)/n                     noise at the slice (micro-batch) size b
    N̂^B  = s² (n − B)/(n M)                 noise at the step's batch size B = M·b
    Ĝ    = ‖h̄‖² − N̂^B = ‖h̄‖² − s² (n − Mb)/(n M)

With n = ∞ (a stream, ``dataset_size=None``) they reduce to the independent-batch forms
N̂^b = s², Ĝ = ‖h̄‖² − s²/M (docs/theory.md §2). For finite n those *plain* forms are biased:
E s² = N^b · n/(n − b), and E[‖h̄‖² − s²/M] = G − T₁/(n − 1), which matters when T₁/G (the simple
noise scale) is a sizeable fraction of n.

Pooling S steps (:func:`pool_steps`): the weights move between steps, so the pooled values are
ratio-of-means averages over the window, Ḡ = mean_t Ĝ_t and T̄₁ = mean_t T̂₁_t (T₁ and G do not
depend on B, so steps with other slice sizes pool too); N^B = T̄₁(n − B)/(B(n − 1)),
NSR^B = N^B/Ḡ and B* = C²B(1 + NSR^B) ([LMA21] Thm 5.6) at the user's batch B. Intervals: the
delete-one-block jackknife over blocks of consecutive steps (Student t, blocks − 1 df), as for
checkpoints in :mod:`bscrit.stats.equilibrium`: blocks of at least τ = 1/(2ηλ) steps when the window
spans two or more relaxation times (the interval then covers the equilibrium), otherwise up to
:data:`DEFAULT_BLOCKS` blocks of equal size (the interval covers the average over this window's
weights, conservatively: the drift of G, N across the window counts as noise).

Along a training run (:func:`select_steps`, docs/free.md "Regimes") the estimators stay unbiased
only where a step's slices are drawn independently of the weights x_t they are read at: a stream
(each example used once, n = ∞) or the first step of each epoch of a reshuffled finite set (a
fresh shuffle). Inside an epoch the slices come from the examples not yet used this epoch while
x_t was just fitted on the used ones: E[h_j | x_t] ≠ ∇L(x_t), and the pooled N̂, Ĝ are biased
(``benchmarks/free_trajectory.py``); such windows are labelled ``within_epoch``, not covered.

Traps: the slices must be equal in size (a last, short micro-batch breaks the formulas: such
steps are skipped by the capture); the gradients must be those of the *mean* slice loss (scale
convention, :mod:`bscrit.engine.free_capture`); one step's Ĝ is very noisy (M is small), so never
read a single step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bscrit.artifacts.jsonvalues import estimate_dict, finite_or_none
from bscrit.errors import UsageError
from bscrit.stats.equilibrium import ratio_interval
from bscrit.stats.estimators import Estimate, interval
from bscrit.theory.formulas import DEFAULT_C2, check_c2, critical_batch_size

#: Blocks of the jackknife over steps when the relaxation time does not set them.
DEFAULT_BLOCKS = 20


# ----------------------------------------------------------------------------------------------
# One step
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FreeStep:
    """The sufficient statistics of one optimizer step's M slice gradients.

    Attributes:
        sum_sq: Σ_j ‖h_j‖², the slices' squared gradient norms summed.
        mean_sq: ‖h̄‖², the squared norm of the step gradient h̄ = (1/M) Σ_j h_j.
        slices: M ≥ 2.
        slice_size: b, examples per slice.
        step: the training step (optimizer steps before this one), None when unknown.
        examples_seen: training examples before this step, None when unknown.
        epoch_start: the first step of an epoch of a reshuffled finite set (a fresh shuffle).
    """

    sum_sq: float
    mean_sq: float
    slices: int
    slice_size: int
    step: int | None = None
    examples_seen: int | None = None
    epoch_start: bool = False

    @property
    def batch_size(self) -> int:
        """B = M·b, the step's batch."""
        return self.slices * self.slice_size

    @property
    def s2(self) -> float:
        """s² = (Σ_j ‖h_j‖² − M‖h̄‖²)/(M − 1), the slices' sample variance (trace)."""
        m = self.slices
        return (self.sum_sq - m * self.mean_sq) / (m - 1)


def check_step(
    slices: int, slice_size: int, dataset_size: int | None, where: str = "free mode"
) -> None:
    """Raise :class:`UsageError` unless M ≥ 2, b ≥ 1 and M·b ≤ n."""
    if slices < 2:
        raise UsageError(
            f"{where}: a step needs at least 2 micro-batches or ranks to estimate the noise, got "
            f"{slices} (use gradient accumulation, DDP, or the every-n-steps mode)"
        )
    if slice_size < 1:
        raise UsageError(f"{where}: the micro-batch size must be >= 1, got {slice_size}")
    if dataset_size is not None and slices * slice_size > dataset_size:
        raise UsageError(
            f"{where}: {slices} slices of {slice_size} examples exceed the dataset size "
            f"{dataset_size} (the slices must be disjoint examples of one shuffle)"
        )


@dataclass(frozen=True)
class StepEstimate:
    """Unbiased per-step estimates (module docstring): Ĝ, T̂₁, N̂^b and N̂^B at B = M·b."""

    G: float
    T1: float
    N_slice: float
    N_batch: float


def _fpc(n: int | None, size: int) -> float:
    """(n − size)/n, 1 for an infinite population."""
    return 1.0 if n is None else (n - size) / n


def step_estimate(step: FreeStep, dataset_size: int | None) -> StepEstimate:
    """Ĝ = ‖h̄‖² − s²(n − Mb)/(nM), T̂₁ = s² b(n − 1)/n, N̂^b = s²(n − b)/n, N̂^B = s²(n − B)/(nM).

    Args:
        step: the step's sums.
        dataset_size: n, or None for an infinite population (a stream): the n → ∞ limits.
    """
    n, m, b = dataset_size, step.slices, step.slice_size
    check_step(m, b, n)
    s2 = step.s2
    t1 = s2 * b * (1.0 if n is None else (n - 1) / n)
    n_batch = s2 * _fpc(n, m * b) / m
    return StepEstimate(step.mean_sq - n_batch, t1, s2 * _fpc(n, b), n_batch)


def plain_step_estimate(step: FreeStep) -> tuple[float, float]:
    """The *biased* independent-batch forms (Ĝ, N̂^b) = (‖h̄‖² − s²/M, s²), for comparison.

    For slices of one shuffle of n examples: E s² = N^b·n/(n − b) and
    E[‖h̄‖² − s²/M] = G − T₁/(n − 1) (module docstring).
    """
    return step.mean_sq - step.s2 / step.slices, step.s2


# ----------------------------------------------------------------------------------------------
# Blocks of steps
# ----------------------------------------------------------------------------------------------


def step_blocks(
    steps: Sequence[int], tau: float | None, max_blocks: int = DEFAULT_BLOCKS
) -> tuple[list[list[int]], str, str]:
    """Indices of the pooled steps in each jackknife block, the scope and a note.

    ``steps`` are the step numbers (increasing). When τ is known and the window spans
    ``S = s_last − s_first + 1 ≥ 2τ`` steps: ``⌊S/τ⌋`` blocks of equal duration ≥ τ, scope
    "equilibrium". Otherwise ``min(len(steps), max_blocks)`` blocks of consecutive steps, equal in
    count, scope "window".
    """
    k = len(steps)
    if k < 2:
        raise UsageError(f"free mode: pooling needs at least 2 steps with micro-batches, got {k}")
    span = steps[-1] - steps[0] + 1
    if tau is not None and tau > 0 and span >= 2 * tau:
        nb = min(k, int(span // tau))
        blocks: list[list[int]] = [[] for _ in range(nb)]
        for i, s in enumerate(steps):
            blocks[min(nb - 1, int((s - steps[0]) / span * nb))].append(i)
        blocks = [blk for blk in blocks if blk]
        if len(blocks) >= 2:
            note = (
                f"{k} steps over {span} ≥ 2τ = {2 * tau:.0f} steps: {len(blocks)} blocks of "
                "≥ τ = 1/(2ηλ) steps (the interval covers the equilibrium)"
            )
            return blocks, "equilibrium", note
    nb = min(k, max(2, max_blocks))
    blocks = [list(range(j * k // nb, (j + 1) * k // nb)) for j in range(nb)]
    why = (
        f"shorter than 2τ = {2 * tau:.0f} steps"
        if tau is not None and tau > 0
        else "τ = 1/(2ηλ) unknown"
    )
    note = (
        f"{k} steps over {span} ({why}): {nb} blocks of consecutive steps; the interval covers "
        "the average over this window's weights, not the equilibrium"
    )
    return blocks, "window", note


#: Regimes, which steps are independent of the weights along a training run:
#: regime → (its 95% intervals cover the trajectory mean, what it is). Coverage: docs/free.md
#: "Regimes" (``python benchmarks/free_trajectory.py``).
REGIMES: dict[str, tuple[bool, str]] = {
    "stream": (
        True,
        "a stream, each example used once (dataset_size=None): every step's slices are fresh "
        "draws, independent of the weights; G and N are those of the stream's distribution",
    ),
    "epoch_start": (
        True,
        "the first step of each epoch of a reshuffled finite set only: a fresh shuffle, "
        "independent of the weights; G and N are those of the training set",
    ),
    "within_epoch": (
        False,
        "NOT COVERED: steps inside the epochs of a reshuffled finite set, whose slices come from "
        "the examples not yet used this epoch while the weights were just fitted on the used "
        "ones, so N and G are biased along training (benchmarks/free_trajectory.py: coverage "
        "below 90%); mark the epochs (FreeCapture.epoch_begin(), as the callbacks do) to pool "
        "each epoch's first step only, or pass dataset_size=None for a single pass",
    ),
}


def select_steps(
    steps: Sequence[FreeStep], dataset_size: int | None, pool: str = "auto"
) -> tuple[list[FreeStep], str]:
    """The steps to pool and their regime (:data:`REGIMES`).

    ``dataset_size=None``: every step ("stream"). A finite n with ``pool="auto"`` and some steps
    marked ``epoch_start``: those only ("epoch_start", at least 2 needed). Otherwise, or with
    ``pool="all"``: every step, labelled "within_epoch" (unbiased only if the weights do not move).

    Raises:
        UsageError: an unknown ``pool``, or fewer than 2 epoch starts to pool.
    """
    if pool not in ("auto", "all"):
        raise UsageError(f"free mode: pool must be 'auto' or 'all', got {pool!r}")
    if dataset_size is None:
        return list(steps), "stream"
    firsts = [s for s in steps if s.epoch_start]
    if pool == "all" or not firsts:
        return list(steps), "within_epoch"
    if len(firsts) < 2:
        raise UsageError(
            f"free mode: the window holds {len(firsts)} epoch start; on a reshuffled finite set "
            "only an epoch's first step is independent of the weights, so a window must span at "
            "least 2 epochs (or pass dataset_size=None for a single pass over a stream)"
        )
    return firsts, "epoch_start"


# ----------------------------------------------------------------------------------------------
# Pooling
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Drift:
    """How far the weights moved over the pooled window (one point it is not).

    Attributes:
        relative: ‖x_end − x_start‖/‖x_start‖.
        norm_sq_start: ‖x_start‖², at the first pooled gradient.
        norm_sq_end: ‖x_end‖², at the last pooled gradient (or when the estimate was taken).
    """

    relative: float
    norm_sq_start: float
    norm_sq_end: float

    @property
    def norm_sq_change(self) -> float:
        """(‖x_end‖² − ‖x_start‖²)/‖x_start‖²."""
        if self.norm_sq_start <= 0:
            return math.nan
        return (self.norm_sq_end - self.norm_sq_start) / self.norm_sq_start

    def to_dict(self) -> dict[str, Any]:
        return {
            "relative": finite_or_none(self.relative),
            "norm_sq_start": finite_or_none(self.norm_sq_start),
            "norm_sq_end": finite_or_none(self.norm_sq_end),
            "norm_sq_change": finite_or_none(self.norm_sq_change),
        }


@dataclass(frozen=True)
class FreeEstimate:
    """G, N, NSR and B* pooled over the steps of a window, with 95% intervals.

    Attributes:
        G: Ḡ, the mean of the steps' Ĝ.
        T1: T̄₁, the per-example trace.
        N: N^B at :attr:`batch_size` B.
        N_slice: N^b at :attr:`slice_size` b (the micro-batch).
        nsr: NSR^B = N^B/Ḡ and ``nsr_ci95`` (upper end ∞ when Ḡ's interval reaches 0).
        b_star: B* = C²B(1 + NSR^B) ([LMA21] Thm 5.6) and ``b_star_ci95``.
        steps: S, the pooled steps; ``first_step``/``last_step`` and ``examples_seen`` (at the
            last step) where known.
        skipped: steps left out (fewer than 2 slices, unequal slices, non-finite sums).
        blocks, scope, note: the jackknife (:func:`step_blocks`).
        drift: the weight drift over the window, when the capture tracked it.
        regime: :data:`REGIMES` key (:func:`select_steps`); ``covered`` says whether the
            interval is backed along training, ``regime_note`` what the regime is.
    """

    G: Estimate
    T1: Estimate
    N: Estimate
    N_slice: Estimate
    nsr: float
    nsr_ci95: tuple[float, float]
    b_star: float
    b_star_ci95: tuple[float, float]
    batch_size: int
    slice_size: int
    slices: int
    dataset_size: int | None
    c2: float
    steps: int
    first_step: int | None
    last_step: int | None
    examples_seen: int | None
    blocks: int
    scope: str
    note: str
    skipped: int = 0
    relaxation_steps: float | None = None
    drift: Drift | None = None
    regime: str = "within_epoch"
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def covered(self) -> bool:
        """Whether the regime's 95% interval covers the trajectory mean (docs/free.md)."""
        return REGIMES[self.regime][0]

    @property
    def regime_note(self) -> str:  # what the regime is, and what to do when not covered
        return REGIMES[self.regime][1]

    @property
    def signal_detected(self) -> bool:
        """False when Ḡ's 95% interval reaches 0: B* has no upper bound at this precision."""
        return self.G.ci95[0] > 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (non-finite numbers as null); the keys of a ``series.jsonl`` line."""
        return {
            "mode": "free",
            "step": self.last_step,
            "first_step": self.first_step,
            "examples_seen": self.examples_seen,
            "steps_pooled": self.steps,
            "steps_skipped": self.skipped,
            "batch_size": self.batch_size,
            "micro_batch_size": self.slice_size,
            "slices": self.slices,
            "dataset_size": self.dataset_size,
            "G": estimate_dict(self.G),
            "N": estimate_dict(self.N),
            "N_micro_batch": estimate_dict(self.N_slice),
            "T1": estimate_dict(self.T1),
            "nsr": finite_or_none(self.nsr),
            "nsr_ci95": [finite_or_none(x) for x in self.nsr_ci95],
            "b_star": finite_or_none(self.b_star),
            "b_star_ci95": [finite_or_none(x) for x in self.b_star_ci95],
            "signal_detected": self.signal_detected,
            "c2": self.c2,
            "interval": {
                "scope": self.scope,
                "blocks": self.blocks,
                "relaxation_steps": finite_or_none(self.relaxation_steps),
                "note": self.note,
            },
            "drift": None if self.drift is None else self.drift.to_dict(),
            "regime": {"name": self.regime, "covered": self.covered, "note": self.regime_note},
            **dict(self.extra),
        }


def _mode(values: Sequence[int]) -> int:
    counts: dict[int, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    return max(counts, key=lambda v: (counts[v], v))


def pool_steps(
    steps: Sequence[FreeStep],
    dataset_size: int | None,
    *,
    batch_size: int | None = None,
    c2: float = DEFAULT_C2,
    relaxation_steps: float | None = None,
    max_blocks: int = DEFAULT_BLOCKS,
    drift: Drift | None = None,
    skipped: int = 0,
    pool: str = "auto",
) -> FreeEstimate:
    """Pool the steps of a window: Ḡ, T̄₁, N^B, NSR^B and B* with block-jackknife intervals.

    Args:
        steps: the steps, in training order (at least 2; their ``step`` may be None, then their
            position is used).
        dataset_size: n, or None for an infinite population.
        batch_size: B at which N, NSR and B* are reported; default the most common M·b.
        c2: C² of [LMA21] (> 1).
        relaxation_steps: τ = 1/(2ηλ) (:func:`bscrit.stats.equilibrium.relaxation_steps`), or None.
        max_blocks: blocks of the jackknife when τ does not set them.
        drift: the window's weight drift, reported as is.
        skipped: steps the capture left out, reported as is.
        pool: ``"auto"`` or ``"all"``: which steps enter (:func:`select_steps`).

    Raises:
        UsageError: fewer than 2 steps (epoch starts), a step with M < 2, or M·b > n.
    """
    c2 = check_c2(c2)
    steps, regime = select_steps(steps, dataset_size, pool)
    if len(steps) < 2:
        raise UsageError(
            f"free mode: pooling needs at least 2 steps with micro-batches, got {len(steps)}"
        )
    n = dataset_size
    per = [step_estimate(s, n) for s in steps]
    big_b = batch_size if batch_size is not None else _mode([s.batch_size for s in steps])
    small_b = _mode([s.slice_size for s in steps])
    if n is not None and big_b > n:
        raise UsageError(f"free mode: batch size {big_b} exceeds the dataset size {n}")
    # N^B = T₁ (n − B)/(B (n − 1)) ([SDBD21] eq. 22; n → ∞: T₁/B)
    f_big = (1.0 if n is None else (n - big_b) / (n - 1)) / big_b
    f_small = (1.0 if n is None else (n - small_b) / (n - 1)) / small_b

    numbers = [s.step if s.step is not None else i for i, s in enumerate(steps)]
    order = sorted(range(len(steps)), key=lambda i: numbers[i])
    blocks, scope, note = step_blocks([numbers[i] for i in order], relaxation_steps, max_blocks)
    blocks = [[order[i] for i in blk] for blk in blocks]

    k = len(per)
    sg, st = sum(p.G for p in per), sum(p.T1 for p in per)
    g, t1 = sg / k, st / k
    g_loo, t_loo = [], []
    for blk in blocks:
        rest = k - len(blk)
        g_loo.append((sg - sum(per[i].G for i in blk)) / rest)
        t_loo.append((st - sum(per[i].T1 for i in blk)) / rest)
    n_loo = [t * f_big for t in t_loo]
    nb_value = t1 * f_big
    if nb_value > 0:
        nsr, nsr_ci = ratio_interval(g, nb_value, g_loo, n_loo)
    else:  # no noise detected: B* = C²B
        nsr, nsr_ci = 0.0, (0.0, 0.0)
    known = [s for s in steps if s.step is not None]
    seen = [s.examples_seen for s in steps if s.examples_seen is not None]
    return FreeEstimate(
        G=interval(g, g_loo),
        T1=interval(t1, t_loo),
        N=interval(nb_value, n_loo),
        N_slice=interval(t1 * f_small, [t * f_small for t in t_loo]),
        nsr=nsr,
        nsr_ci95=nsr_ci,
        b_star=critical_batch_size(big_b, nsr, c2),
        b_star_ci95=(
            critical_batch_size(big_b, nsr_ci[0], c2),
            critical_batch_size(big_b, nsr_ci[1], c2),
        ),
        batch_size=big_b,
        slice_size=small_b,
        slices=_mode([s.slices for s in steps]),
        dataset_size=n,
        c2=c2,
        steps=k,
        first_step=min((s.step for s in known), default=None),  # type: ignore[type-var]
        last_step=max((s.step for s in known), default=None),  # type: ignore[type-var]
        examples_seen=max(seen) if seen else None,
        blocks=len(blocks),
        scope=scope,
        note=note,
        skipped=skipped,
        relaxation_steps=relaxation_steps,
        drift=drift,
        regime=regime,
    )
