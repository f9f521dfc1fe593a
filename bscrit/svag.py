"""SVAG runs: simulate the SDE of SGD / Adam / RMSprop at the target batch size (torch).

SVAG is the *Stochastic Variance Amplified Gradient* of Li, Malladi & Arora [LMA21 §4, eq. (5)]
and its adaptive version [MLPA22 §6, Defs. 6.1–6.2] — not Balles & Hennig's "SVAG" (stochastic
variance-adapted gradient, the M-SVAG optimiser), which shares the acronym. THEORY.md §6.

One SVAG step with parameter l ≥ 1 (l = 1 is the plain optimizer):

1. draw two independent batches γ₁, γ₂ of the target size B' and compute their loss gradients
   g₁, g₂ (weight decay is *not* part of g: the optimizer adds it);
2. ĝ = r₁ g₁ + r₂ g₂ with r₁,₂ = (1 ± √(2l − 1))/2, so r₁ + r₂ = 1 and r₁² + r₂² = l: ĝ has the
   mean of g and l times its covariance [LMA21 eq. (5)];
3. write ĝ into ``p.grad`` and call PyTorch's own ``optimizer.step()`` with the SVAG
   hyperparameters of :func:`bscrit.scaling.svag_hyperparameters`: SGD LR η/l (momentum and coupled
   weight decay unchanged; keeping momentum is a heuristic, [LMA21] covers plain SGD);
   Adam/RMSprop LR η/√l, β ← 1 − (1 − β)/l, ε ← ε√l (AdamW also λ ← λ/√l) [MLPA22 Def. 6.2, with
   bscrit's l = the paper's ℓ²];
4. advance the LR schedule on *effective steps* e = SVAG steps / l.

l SVAG steps simulate one step of the original run, so every l is compared at equal effective
steps; as l grows SVAG converges weakly to the SDE with error O(1/l) [LMA21 Thm 4.3; MLPA22
Thm 6.3]. Cost: 2 l forward-backward passes per effective step.

The step goes through one small interface, :class:`GradientOracle` (``params`` and ``pair()``),
with two implementations: :class:`ModelOracle` (a model, a loss and a dataset: what ``bscrit
svag`` uses) and :class:`GaussianNoiseOracle` (an analytic gradient plus Gaussian noise: what the
closed-form tests use). Both go through :func:`run_svag`, the same code path.

BatchNorm and other running statistics: each of the two batches gets its own forward pass in train
mode (its own batch statistics). The running statistics are updated **once per step, by the first
batch only**: every buffer of the model is saved before the second batch's forward pass and
restored after it. The evaluation passes (training loss, G, N in train mode) save and restore the
buffers too, so they never change the running statistics.

Optimizer state: SGD starts with a fresh momentum buffer for every l; Adam/AdamW/RMSprop are
warm-started for every l from the gradient moments at the checkpoint (:func:`warm_start`), so that
the start-up transient of a zero state, which depends on l, does not pass for a difference
between SGD and its SDE.

Seeds: every l starts from the same checkpoint weights, the same optimizer state, the same batch
generator seed and the same global torch seed (dropout, augmentation), and is evaluated on the
same fixed batches and held-out examples, so the runs differ only by l. The model is a deep copy;
the checkpoint file is only read. Details and the verdict: docs/svag.md.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from . import optim
from .data import tensor_view, to_device
from .errors import BscritError, DataError, ExitCode
from .optim import OptimizerInfo
from .scaling import (
    scale_optimizer,
    scale_steps,
    svag_hyperparameters,
)
from .estimators import estimate_g_n
from .svag_results import (
    DEFAULT_RTOL,
    DEFAULT_TAIL,
    DEFAULT_Z,
    SvagResult,
    SvagRun,
    compare_runs,
    decide,
)

Grads = list[Tensor | None]

__all__ = [
    "GaussianNoiseOracle",
    "GradientOracle",
    "ModelOracle",
    "SvagPlan",
    "combine",
    "lr_factor",
    "make_optimizer",
    "prepare_svag",
    "run_plan",
    "run_svag",
    "svag_coefficients",
    "svag_step",
    "target_schedule",
]


# ----------------------------------------------------------------------------------------------
# The SVAG gradient
# ----------------------------------------------------------------------------------------------


def svag_coefficients(l: int) -> tuple[float, float]:  # noqa: E741
    """r₁,₂ = (1 ± √(2l − 1))/2 [LMA21 eq. (5)]: r₁ + r₂ = 1 (mean kept), r₁² + r₂² = l
    (covariance × l, since g₁ and g₂ are independent)."""
    if isinstance(l, bool) or int(l) != l or l < 1:
        raise BscritError(f"the SVAG parameter l must be an integer >= 1, got {l}")
    s = math.sqrt(2 * l - 1)
    return (1.0 + s) / 2.0, (1.0 - s) / 2.0


def combine(g1: Grads, g2: Grads, r1: float, r2: float) -> Grads:
    """ĝ = r₁ g₁ + r₂ g₂ per tensor; None (an unused parameter) where both are None."""
    out: Grads = []
    for a, b in zip(g1, g2, strict=True):
        if a is None and b is None:
            out.append(None)
            continue
        a = torch.zeros_like(b) if a is None else a
        b = torch.zeros_like(a) if b is None else b
        out.append(torch.add(a * r1, b, alpha=r2))
    return out


class GradientOracle(Protocol):
    """What a SVAG step needs: the tensors to update and loss gradients on two fresh batches."""

    @property
    def params(self) -> list[Tensor]:
        """The leaf tensors the optimizer updates (``requires_grad``)."""
        ...

    def pair(self) -> tuple[Grads, Grads]:
        """Loss gradients (no weight decay) of two independent batches at the current point."""
        ...


def svag_step(
    oracle: GradientOracle, optimizer: torch.optim.Optimizer, r1: float, r2: float
) -> None:
    """One SVAG step: two batches → ĝ = r₁g₁ + r₂g₂ → ``p.grad`` → PyTorch ``optimizer.step()``."""
    g1, g2 = oracle.pair()
    for p, g in zip(oracle.params, combine(g1, g2, r1, r2), strict=True):
        p.grad = g
    optimizer.step()


# ----------------------------------------------------------------------------------------------
# Optimizer and schedule
# ----------------------------------------------------------------------------------------------


def make_optimizer(params: Sequence[Tensor], opt: OptimizerInfo) -> torch.optim.Optimizer:
    """PyTorch's own optimizer with the hyperparameters of ``opt`` (one parameter group)."""
    cls, kwargs = optim.torch_kwargs(opt)
    return getattr(torch.optim, cls)(list(params), **kwargs)


def target_schedule(schedule: Any, kappa: float) -> dict[str, Any]:
    """The spec's schedule (in steps of the base run at batch size B) in steps at B' = κB.

    Training length is fixed in epochs (THEORY §5), so warm-up, milestones and the cosine length
    are divided by κ (:func:`bscrit.scaling.scale_steps`). ``schedule`` is a
    :class:`~bscrit.spec.ScheduleSpec` (or None: constant).
    """
    if schedule is None:
        return {"name": "constant", "warmup_steps": 0, "milestones": [], "gamma": 0.1,
                "total_steps": None}  # fmt: skip
    return {
        "name": schedule.name,
        "warmup_steps": scale_steps(schedule.warmup_steps, kappa) or 0,
        "milestones": [scale_steps(m, kappa) for m in schedule.milestones],
        "gamma": schedule.gamma,
        "total_steps": scale_steps(schedule.total_steps, kappa),
    }


def lr_factor(schedule: dict[str, Any], e: float, e_end: float, default_total: float) -> float:
    """LR multiplier at effective time ``e`` (steps at the target batch size).

    - warm-up: linear, factor ``min(1, e_end / W)`` where ``e_end`` is the effective time at the
      *end* of the step (so for l = 1 step k gets (k + 1)/W, PyTorch's usual ramp);
    - ``step``: × gamma for every milestone ≤ e (``MultiStepLR``);
    - ``cosine``: ½(1 + cos(π·min(1, (e − W)/(T − W)))) after the warm-up, T = ``total_steps`` or
      ``default_total``, decaying to 0 (``CosineAnnealingLR``).
    """
    name = schedule.get("name", "constant")
    w = float(schedule.get("warmup_steps") or 0)
    f = 1.0
    if w > 0 and e < w:
        f = min(1.0, e_end / w)
    if name == "step":
        f *= float(schedule.get("gamma", 0.1)) ** sum(
            1 for m in schedule.get("milestones", []) if m <= e + 1e-9
        )
    elif name == "cosine":
        t = float(schedule.get("total_steps") or default_total)
        if e >= w:
            frac = min(1.0, (e - w) / (t - w)) if t > w else 1.0
            f *= 0.5 * (1.0 + math.cos(math.pi * frac))
    return f


# ----------------------------------------------------------------------------------------------
# Warm start of the adaptive optimizers' state
# ----------------------------------------------------------------------------------------------


@dataclass
class GradientMoments:
    """Per-coordinate moments of the batch gradient at the starting point, from k samples.

    ``mean`` estimates ḡ, ``mean_sq`` = (1/k) Σ gᵢ² estimates ḡ² + diag Σ, ``var`` (the sample
    variance, k − 1 in the denominator) estimates diag Σ.
    """

    mean: Grads
    mean_sq: Grads
    var: Grads
    k: int

    def second_moment(self, l: int) -> Grads:  # noqa: E741
        """E[ĝ²] under SVAG l per coordinate: ḡ² + l·diag Σ = mean_sq + (l − 1)·var (≥ 0)."""
        return [
            None if m is None else m + (l - 1) * v
            for m, v in zip(self.mean_sq, self.var, strict=True)
        ]


def gradient_moments(samples: Iterator[Grads] | Sequence[Grads]) -> GradientMoments:
    """Per-coordinate mean, mean square and variance of k ≥ 2 gradient samples (float64 sums)."""
    s1: list[Tensor | None] | None = None
    s2: list[Tensor | None] = []
    k = 0
    for g in samples:
        if s1 is None:
            s1 = [None if t is None else torch.zeros_like(t, dtype=torch.float64) for t in g]
            s2 = [None if t is None else torch.zeros_like(t, dtype=torch.float64) for t in g]
        for a, b, t in zip(s1, s2, g, strict=True):
            if t is not None and a is not None and b is not None:
                t64 = t.detach().double()
                a.add_(t64)
                b.add_(t64 * t64)
        k += 1
    if s1 is None or k < 2:
        raise BscritError(f"need at least 2 gradient samples for the moments, got {k}")
    mean: Grads = []
    mean_sq: Grads = []
    var: Grads = []
    for a, b, like in zip(s1, s2, s1, strict=True):
        if a is None or b is None or like is None:
            mean.append(None), mean_sq.append(None), var.append(None)
            continue
        m = a / k
        v = ((b - k * m * m) / (k - 1)).clamp_min_(0.0)
        mean.append(m.float()), mean_sq.append((b / k).float()), var.append(v.float())
    return GradientMoments(mean, mean_sq, var, k)


#: Bias corrections 1 − β^step are set to 1 − e^(−WARM_START_HORIZON) ≈ 1 by the warm start.
WARM_START_HORIZON = 30.0


def warm_start(
    optimizer: torch.optim.Optimizer,
    params: Sequence[Tensor],
    moments: GradientMoments,
    l: int,  # noqa: E741
) -> None:
    """Start Adam/AdamW/RMSprop from the moments of the gradient at x₀ instead of zeros.

    Why: from a zero state, RMSprop's first 1/(1 − β) steps divide by a tiny √v, and Adam's first
    steps divide by a √v̂ estimated from very few samples; both transients depend on l (SVAG takes l
    times more, noisier steps per unit of time), so a fresh state makes the runs differ for a
    reason unrelated to the SDE. The SDE starts from a state (θ₀, m₀, u₀) [MLPA22 Defs. 4.1, 4.4];
    here every l starts from the same one: m₀ = ḡ (Adam ``exp_avg``, centred RMSprop
    ``grad_avg``) and v₀ = E[ĝ²] = ḡ² + l·diag Σ (``exp_avg_sq`` / ``square_avg``), estimated on
    the fixed batches, with the step counter set so Adam's bias corrections are ≈ 1.

    PyTorch creates the state in a first ``step()``: taken with zero gradients and LR 0 (the
    parameters do not move), then the state tensors are overwritten in place.
    """
    names = {type(optimizer).__name__.lower()}
    if not names & {"adam", "adamw", "rmsprop"}:
        return
    v0 = moments.second_moment(l)
    lrs = [g["lr"] for g in optimizer.param_groups]
    saved = [p.grad for p in params]
    for g in optimizer.param_groups:
        g["lr"] = 0.0
    for p, m in zip(params, moments.mean, strict=True):
        p.grad = None if m is None else torch.zeros_like(p)
    optimizer.step()
    for g, lr in zip(optimizer.param_groups, lrs, strict=True):
        g["lr"] = lr
    for p, g in zip(params, saved, strict=True):
        p.grad = g
    betas = []
    for g in optimizer.param_groups:
        betas += list(g.get("betas", ())) + ([g["alpha"]] if "alpha" in g else [])
    horizon = math.ceil(WARM_START_HORIZON / max(1e-12, 1.0 - max(betas)))
    with torch.no_grad():
        for p, m, v in zip(params, moments.mean, v0, strict=True):
            st = optimizer.state.get(p)
            if not st or m is None or v is None:
                continue
            m, v = m.to(p.device, p.dtype), v.to(p.device, p.dtype)
            for key, val in (("exp_avg", m), ("grad_avg", m), ("exp_avg_sq", v),
                             ("square_avg", v)):  # fmt: skip
                if key in st:
                    st[key].copy_(val)
            if "exp_avg" in st:  # Adam: bias corrections ≈ 1
                if isinstance(st["step"], Tensor):
                    st["step"].fill_(float(horizon))
                else:
                    st["step"] = float(horizon)


# ----------------------------------------------------------------------------------------------
# One run
# ----------------------------------------------------------------------------------------------


def run_svag(
    oracle: GradientOracle,
    opt: OptimizerInfo,
    l: int,  # noqa: E741
    effective_steps: int,
    *,
    evaluate: Callable[[], dict[str, float]],
    eval_every: int = 1,
    schedule: dict[str, Any] | None = None,
    start_step: float = 0.0,
    on_step: Callable[[int], None] | None = None,
    moments: GradientMoments | None = None,
) -> SvagRun:
    """Run SVAG with parameter l for ``effective_steps`` effective steps (l × as many SVAG steps).

    Args:
        oracle: gradients of two independent batches per step (:class:`GradientOracle`).
        opt: the optimizer's hyperparameters *at the target batch size* (l = 1); the SVAG rule of
            THEORY §6 (:func:`bscrit.scaling.svag_hyperparameters`) is applied here.
        l: SVAG parameter ≥ 1.
        effective_steps: run length E in effective steps (steps at the target batch size).
        evaluate: test functions at the current point, called at effective steps 0, eval_every,
            2·eval_every, ..., E (the last point is always included).
        eval_every: effective steps between evaluations.
        schedule: target-batch schedule (:func:`target_schedule`); None = constant LR.
        start_step: effective step of the checkpoint in the schedule.
        on_step: called with 1 after every SVAG step (progress bars).
        moments: gradient moments at the start; given, Adam/AdamW/RMSprop start from them
            (:func:`warm_start`) rather than from a zero state.

    Returns:
        The :class:`~bscrit.svag_results.SvagRun`; a non-finite test function stops the run
        (``diverged_at``) and the remaining points are NaN.
    """
    if effective_steps < 1:
        raise BscritError(f"--effective-steps must be >= 1, got {effective_steps}")
    if eval_every < 1:
        raise BscritError(f"--eval-every must be >= 1, got {eval_every}")
    r1, r2 = svag_coefficients(l)
    hp = svag_hyperparameters(opt, l)
    optimizer = make_optimizer(oracle.params, hp)
    if moments is not None:
        warm_start(optimizer, oracle.params, moments, l)
    sched = schedule or {"name": "constant"}
    end = start_step + effective_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda k: lr_factor(sched, start_step + k / l, start_step + (k + 1) / l, end)
    )
    points = list(range(0, effective_steps, eval_every)) + [effective_steps]
    values: dict[str, list[float]] = {}
    t0 = time.perf_counter()
    steps = 0
    diverged_at: float | None = None
    evaluated: list[float] = []
    for p in points:
        while steps < p * l:
            svag_step(oracle, optimizer, r1, r2)
            scheduler.step()
            steps += 1
            if on_step is not None:
                on_step(1)
        vals = evaluate()
        for k, v in vals.items():
            values.setdefault(k, [math.nan] * len(evaluated)).append(float(v))
        evaluated.append(float(p))
        if not all(math.isfinite(v) for v in vals.values()):
            diverged_at = float(p)
            break
    if on_step is not None and steps < effective_steps * l:
        on_step(effective_steps * l - steps)  # skipped after divergence
    for p in points[len(evaluated) :]:
        evaluated.append(float(p))
        for vs in values.values():
            vs.append(math.nan)
    return SvagRun(
        l=int(l),
        optimizer=hp,
        steps=steps,
        effective_steps=tuple(evaluated),
        values={k: tuple(v) for k, v in values.items()},
        diverged_at=diverged_at,
        elapsed_s=time.perf_counter() - t0,
    )


# ----------------------------------------------------------------------------------------------
# Oracles
# ----------------------------------------------------------------------------------------------


class GaussianNoiseOracle:
    """A synthetic oracle: g = ∇f(x) + ξ with Gaussian ξ, independent between calls.

    Args:
        params: the tensors to optimise (leaf tensors, ``requires_grad`` not needed).
        grad_fn: exact gradient ``params -> list of tensors``.
        sigma: isotropic noise standard deviation (ξ ~ N(0, σ² I)), or ...
        scale_tril: ... a d × d matrix A with ξ = A z, Cov ξ = A Aᵀ, applied along the last
            dimension (a parameter of shape (..., d) holds independent d-vectors).
        generator: torch generator of the noise (seed it for reproducible tests).
    """

    def __init__(
        self,
        params: Sequence[Tensor],
        grad_fn: Callable[[list[Tensor]], list[Tensor]],
        sigma: float = 1.0,
        *,
        scale_tril: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        self._params = list(params)
        self.grad_fn = grad_fn
        self.sigma = float(sigma)
        self.scale_tril = scale_tril
        self.generator = generator

    @property
    def params(self) -> list[Tensor]:
        return self._params

    def sample(self) -> Grads:
        """One stochastic gradient at the current point."""
        with torch.no_grad():
            mean = self.grad_fn(self._params)
            out: Grads = []
            for m in mean:
                z = torch.randn(m.shape, generator=self.generator, dtype=m.dtype, device=m.device)
                out.append(
                    m + (z @ self.scale_tril.T if self.scale_tril is not None else self.sigma * z)
                )
            return out

    def pair(self) -> tuple[Grads, Grads]:
        return self.sample(), self.sample()


class _Batches:
    """Index lists of B distinct examples, uniform without replacement, batches independent."""

    def __init__(self, n: int, b: int, generator: torch.Generator) -> None:
        self.n, self.b, self.generator = n, b, generator

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            yield torch.randperm(self.n, generator=self.generator)[: self.b].tolist()


class BatchSource:
    """Fetches batches of a map-style dataset by index (TensorDataset: direct indexing)."""

    def __init__(self, dataset: Any, device: torch.device, num_workers: int = 0) -> None:
        self.dataset = dataset
        self.device = device
        self.num_workers = num_workers
        self.tensors = tensor_view(dataset)  # (Subset of a) TensorDataset: index directly

    def fetch(self, idx: list[int]) -> Any:
        """One batch ``(input, target)`` on the device."""
        if self.tensors is not None:
            ix = torch.as_tensor(idx)
            return to_device(tuple(t[ix] for t in self.tensors), self.device)
        from torch.utils.data import default_collate

        return to_device(default_collate([self.dataset[i] for i in idx]), self.device)

    def stream(self, b: int, generator: torch.Generator) -> Iterator[Any]:
        """An endless stream of independent random batches of size b."""
        sampler = _Batches(len(self.dataset), b, generator)
        if self.tensors is not None or self.num_workers == 0:
            return (self.fetch(i) for i in sampler)
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        return (to_device(batch, self.device) for batch in loader)


def _buffers(model: nn.Module) -> list[Tensor]:
    return [b for b in model.buffers() if b is not None]


class _KeepBuffers:
    """Context manager: save every buffer (BatchNorm running stats, ...) and restore it on exit."""

    def __init__(self, model: nn.Module) -> None:
        self.buffers = _buffers(model)

    def __enter__(self) -> None:
        self.saved = [b.detach().clone() for b in self.buffers]

    def __exit__(self, *exc: Any) -> None:
        with torch.no_grad():
            for b, s in zip(self.buffers, self.saved, strict=True):
                b.copy_(s)


def _split(batch: Any) -> tuple[Any, Any]:
    if isinstance(batch, (list, tuple)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise DataError(
        f"the dataset must yield (input, target) pairs; got a batch of type {type(batch).__name__}"
    )


def loss_gradient(
    model: nn.Module, loss_fn: Callable[[Any, Any], Tensor], params: list[Tensor], batch: Any
) -> Grads:
    """∇ of the batch-mean loss (no weight decay) w.r.t. ``params``; None for unused ones."""
    x, y = _split(batch)
    loss = loss_fn(model(x), y)
    if loss.dim() != 0:
        raise BscritError(
            f"the loss returned shape {tuple(loss.shape)}; expected a scalar (the batch mean)"
        )
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return [None if g is None else g.detach() for g in grads]


class ModelOracle:
    """Loss gradients of a model on independent random batches of size B (train mode).

    The running statistics (BatchNorm) are updated by the first batch of each pair only: the
    buffers are saved before the second batch's forward pass and restored after it.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[Any, Any], Tensor],
        source: BatchSource,
        batch_size: int,
        generator: torch.Generator,
    ) -> None:
        self.model = model
        self.loss_fn = loss_fn
        self._params = [p for p in model.parameters() if p.requires_grad]
        self.stream = source.stream(batch_size, generator)

    @property
    def params(self) -> list[Tensor]:
        return self._params

    def gradient(self, batch: Any) -> Grads:
        return loss_gradient(self.model, self.loss_fn, self._params, batch)

    def pair(self) -> tuple[Grads, Grads]:
        self.model.train()
        g1 = self.gradient(next(self.stream))
        with _KeepBuffers(self.model):
            g2 = self.gradient(next(self.stream))
        return g1, g2


class ModelEvaluator:
    """Test functions of a model at its current weights ([LMA21] Fig. 4; THEORY §6).

    - ``train_loss`` (and ``train_acc`` for class logits): mean over k fixed batches of the
      training set (drawn once, the same for every l), in the spec's measurement mode (train mode:
      batch statistics, running statistics restored afterwards);
    - ``G``, ``N``: the unbiased Ĝ, N̂ of :func:`bscrit.estimators.estimate_g_n` from the k loss
      gradients on the same batches (N is N^{B'}, at the target batch size; no weight decay);
    - ``norm_sq``: ‖x‖² of the trainable parameters;
    - ``eval_loss``, ``eval_acc``: on a fixed set of held-out examples, eval mode, when given.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[Any, Any], Tensor],
        train: BatchSource,
        fixed_batches: Sequence[list[int]],
        *,
        mode: str = "train",
        held_out: BatchSource | None = None,
        held_out_indices: Sequence[int] = (),
        eval_batch_size: int = 512,
    ) -> None:
        self.model = model
        self.loss_fn = loss_fn
        self.train = train
        self.fixed_batches = list(fixed_batches)
        self.mode = mode
        self.held_out = held_out
        self.held_out_indices = list(held_out_indices)
        self.eval_batch_size = eval_batch_size
        self.params = [p for p in model.parameters() if p.requires_grad]

    def __call__(self) -> dict[str, float]:
        out: dict[str, float] = {}
        model = self.model
        was_training = model.training
        k = len(self.fixed_batches)
        s = [torch.zeros_like(p, dtype=torch.float64) for p in self.params]
        q = 0.0
        loss_sum, correct, count, classify = 0.0, 0, 0, True
        with _KeepBuffers(model):
            model.train(self.mode == "train")
            for idx in self.fixed_batches:
                x, y = _split(self.train.fetch(idx))
                logits = model(x)
                loss = self.loss_fn(logits, y)
                grads = torch.autograd.grad(loss, self.params, allow_unused=True)
                sq = 0.0
                for acc, g in zip(s, grads, strict=True):
                    if g is not None:
                        g64 = g.detach().double()
                        acc.add_(g64)
                        sq += float(g64.pow(2).sum())
                q += sq
                loss_sum += float(loss.detach())
                if classify and _is_classification(logits, y):
                    correct += int((logits.detach().argmax(-1) == y).sum())
                    count += int(y.numel())
                else:
                    classify = False
        model.train(was_training)
        out["train_loss"] = loss_sum / k
        if classify and count:
            out["train_acc"] = correct / count
        g_hat, n_hat = estimate_g_n(float(sum(float(a.pow(2).sum()) for a in s)), q, k)
        out["G"], out["N"] = g_hat, n_hat
        with torch.no_grad():
            out["norm_sq"] = float(
                sum(float(p.detach().double().pow(2).sum()) for p in self.params)
            )
        if self.held_out is not None and self.held_out_indices:
            out.update(self._held_out())
        return out

    @torch.no_grad()
    def _held_out(self) -> dict[str, float]:
        assert self.held_out is not None
        model = self.model
        was_training = model.training
        model.eval()
        total, loss_sum, correct, classify = 0, 0.0, 0, True
        idx = self.held_out_indices
        for i in range(0, len(idx), self.eval_batch_size):
            x, y = _split(self.held_out.fetch(idx[i : i + self.eval_batch_size]))
            logits = model(x)
            n = _batch_len(y)
            loss_sum += float(self.loss_fn(logits, y)) * n
            total += n
            if classify and _is_classification(logits, y):
                correct += int((logits.argmax(-1) == y).sum())
            else:
                classify = False
        model.train(was_training)
        out = {"eval_loss": loss_sum / total}
        if classify:
            out["eval_acc"] = correct / total
        return out


def model_gradient_moments(
    model: nn.Module,
    loss_fn: Callable[[Any, Any], Tensor],
    source: BatchSource,
    batches: Sequence[list[int]],
    mode: str = "train",
) -> GradientMoments:
    """:class:`GradientMoments` of the loss gradient over fixed batches (running stats kept)."""
    params = [p for p in model.parameters() if p.requires_grad]
    was_training = model.training
    with _KeepBuffers(model):
        model.train(mode == "train")
        moments = gradient_moments(
            loss_gradient(model, loss_fn, params, source.fetch(i)) for i in batches
        )
    model.train(was_training)
    return moments


def _is_classification(logits: Any, y: Any) -> bool:
    return (
        isinstance(logits, Tensor)
        and isinstance(y, Tensor)
        and logits.dim() == 2
        and y.dim() == 1
        and not y.is_floating_point()
        and y.shape[0] == logits.shape[0]
    )


def _batch_len(y: Any) -> int:
    return int(y.shape[0]) if isinstance(y, Tensor) and y.dim() > 0 else 1


# ----------------------------------------------------------------------------------------------
# From a spec: plan (cost known before running), then run every l
# ----------------------------------------------------------------------------------------------

#: Command-line overrides of the target hyperparameters.


@dataclass
class SvagPlan:
    """Everything needed to run, and what it will cost; built by :func:`prepare_svag`."""

    model: nn.Module  # the loaded checkpoint, on CPU; never modified (each l gets a deep copy)
    loss_fn: Callable[[Any, Any], Tensor]
    train: BatchSource
    held_out: BatchSource | None
    held_out_indices: list[int]
    fixed_batches: list[list[int]]
    device: torch.device
    mode: str
    batch_size: int
    target_batch_size: int
    dataset_size: int
    kappa: float
    rule: str
    rule_reference: str
    base_optimizer: OptimizerInfo | None
    target_optimizer: OptimizerInfo
    schedule: dict[str, Any]
    start_step: float
    ls: tuple[int, ...]
    effective_steps: int
    eval_every: int
    seed: int
    warm_start: bool = True
    spec: str | None = None
    checkpoint: str | None = None
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def eval_points(self) -> int:
        return len(range(0, self.effective_steps, self.eval_every)) + 1

    def train_passes(self, l: int) -> int:  # noqa: E741
        """Forward-backward passes of the SVAG steps: 2 l per effective step."""
        return 2 * l * self.effective_steps

    def eval_passes(self) -> int:
        """Forward-backward passes of the evaluations (k fixed batches per evaluation point)."""
        return self.eval_points * len(self.fixed_batches)

    def forward_backward(self) -> dict[int, int]:
        return {lv: self.train_passes(lv) + self.eval_passes() for lv in self.ls}

    @property
    def total_steps(self) -> int:
        """SVAG steps over all runs (the progress bar's total)."""
        return sum(lv * self.effective_steps for lv in self.ls)


def parse_ls(text: str | Sequence[int]) -> tuple[int, ...]:
    """``"1,2,4"`` → (1, 2, 4): distinct integers ≥ 1, at least three (sorted)."""
    if isinstance(text, str):
        parts = [p.strip() for p in text.split(",") if p.strip()]
        try:
            ls = [int(p) for p in parts]
        except ValueError:
            raise BscritError(
                f"--l expects integers separated by commas (e.g. 1,2,4), got {text!r}"
            ) from None
    else:
        ls = [int(x) for x in text]
    if any(x < 1 for x in ls):
        raise BscritError(f"--l: every l must be an integer >= 1, got {ls}")
    ls = sorted(set(ls))
    if len(ls) < 3:
        raise BscritError(
            f"--l needs at least three distinct values (e.g. 1,2,4) to tell 'SGD left the SDE' "
            f"from 'SVAG not converged', got {ls}"
        )
    return tuple(ls)


def prepare_svag(
    spec: Any,
    *,
    target_batch_size: int,
    ls: Sequence[int] = (1, 2, 4),
    effective_steps: int = 300,
    checkpoint: str | Path | None = None,
    optimizer_name: str | None = None,
    overrides: dict[str, float | None] | None = None,
    eval_every: int | None = None,
    eval_batches: int = 8,
    eval_examples: int | None = 2048,
    start_step: float = 0.0,
    seed: int | None = None,
    device: str | None = None,
    warm_start: bool = True,
    unsafe: bool = False,
) -> SvagPlan:
    """Load the checkpoint and data of a spec and work out the target hyperparameters and cost.

    Target hyperparameters: the base run's optimizer (spec ``optimizer``, else the checkpoint's)
    at the spec's ``batch_size`` B, scaled to B' by its rule (linear for SGD, square-root for
    Adam / AdamW / RMSprop; :func:`bscrit.scaling.scale_optimizer`); then the ``overrides``
    (``--lr`` etc.) replace target values. Without a known optimizer, ``optimizer_name`` and an
    ``lr`` override are needed (rule ``"given"``).

    Raises:
        DataError: B' larger than the training set (a batch holds distinct examples).
        BscritError: no optimizer, bad l, κ the square-root rule cannot take, ...
    """
    from .loading import build_dataset, build_loss, load_model, optimizer_for, resolve_device

    ls = parse_ls(ls)
    if target_batch_size < 1:
        raise BscritError(f"--target-batch-size must be >= 1, got {target_batch_size}")
    if effective_steps < 1:
        raise BscritError(f"--effective-steps must be >= 1, got {effective_steps}")
    if eval_batches < 2:
        raise BscritError(f"--eval-batches must be >= 2 (N needs two batches), got {eval_batches}")
    overrides = dict(overrides or {})
    seed = spec.measure.seed if seed is None else int(seed)
    dev = resolve_device(device or spec.measure.device)

    model, ckpt = load_model(spec, checkpoint, unsafe=unsafe)
    train_ds = build_dataset(spec.data, spec.base_dir, "data")
    n = len(train_ds)
    if target_batch_size > n:
        raise DataError(
            f"--target-batch-size {target_batch_size} exceeds the {n} training examples: a batch "
            "holds distinct examples, so SVAG can only run at B' <= n"
        )
    notes: list[str] = []
    warnings: list[str] = []
    if target_batch_size > n // 2:
        warnings.append(
            f"B' = {target_batch_size} is more than half of the {n} training examples: the two "
            "batches of a SVAG step overlap heavily and the gradient noise is small "
            "(finite-population factor (n − B')/(n − 1))"
        )

    base = optimizer_for(spec, ckpt)
    kappa = target_batch_size / spec.batch_size
    if base is not None and optimizer_name is not None and optimizer_name.lower() != base.name:
        raise BscritError(
            f"--optimizer {optimizer_name} differs from the base run's {base.name}; scaling one "
            "optimizer's hyperparameters into another is not defined (drop --optimizer)"
        )
    if base is None:
        if optimizer_name is None or overrides.get("lr") is None:
            raise BscritError(
                "no optimizer: neither the spec (optimizer:) nor the checkpoint names one; give "
                "--optimizer and the target hyperparameters (--lr, ...)"
            )
        target = optim.with_values(OptimizerInfo(name=optimizer_name.lower(), lr=1.0), overrides)
        rule, reference = "given", "hyperparameters given on the command line"
        notes.append("target hyperparameters given on the command line (no base optimizer)")
    else:
        base = replace(base, name=base.name.lower())
        rule, reference = optim.get(base.name).rule, optim.get(base.name).rule_reference
        target = optim.with_values(scale_optimizer(base, kappa), overrides)
        given = [k for k, v in overrides.items() if v is not None]
        if given:
            notes.append(f"overridden on the command line: {', '.join(given)}")
    if target.name == "sgd" and target.momentum > 0:
        notes.append(
            f"SGD momentum {target.momentum:g} is kept unchanged for every l (a heuristic: the "
            "SVAG theorem [LMA21 Thm 4.3] covers plain SGD)"
        )
    if target.name == "rmsprop" and target.momentum > 0:
        notes.append("RMSprop momentum is kept unchanged for every l (not covered by [MLPA22])")

    sched = target_schedule(spec.schedule, kappa)
    if sched["name"] != "constant" or sched["warmup_steps"]:
        notes.append(
            f"schedule {sched['name']} (warm-up {sched['warmup_steps']}, milestones "
            f"{sched['milestones']}, total {sched['total_steps']}) in steps at B' = "
            f"{target_batch_size}, run on effective steps from step {start_step:g}"
        )

    if eval_every is None:
        eval_every = max(1, effective_steps // 20)
    gen = torch.Generator().manual_seed(seed + 1)
    fixed = [
        torch.randperm(n, generator=gen)[:target_batch_size].tolist() for _ in range(eval_batches)
    ]
    train = BatchSource(train_ds, dev, spec.data.num_workers)

    held_out, held_idx = None, []
    if spec.eval_data is not None:
        eval_ds = build_dataset(spec.eval_data, spec.base_dir, "eval_data")
        m = len(eval_ds)
        if eval_examples is None or eval_examples >= m:
            held_idx = list(range(m))
        else:
            g2 = torch.Generator().manual_seed(seed + 2)
            held_idx = sorted(torch.randperm(m, generator=g2)[:eval_examples].tolist())
        held_out = BatchSource(eval_ds, dev, spec.eval_data.num_workers)
    else:
        notes.append("no eval_data in the spec: no held-out loss/accuracy")

    return SvagPlan(
        model=model,
        loss_fn=build_loss(spec),
        train=train,
        held_out=held_out,
        held_out_indices=held_idx,
        fixed_batches=fixed,
        device=dev,
        mode=spec.measure.mode,
        batch_size=spec.batch_size,
        target_batch_size=int(target_batch_size),
        dataset_size=n,
        kappa=kappa,
        rule=rule,
        rule_reference=reference,
        base_optimizer=base,
        target_optimizer=target,
        schedule=sched,
        start_step=float(start_step),
        ls=ls,
        effective_steps=int(effective_steps),
        eval_every=int(eval_every),
        seed=seed,
        warm_start=warm_start,
        spec=str(spec.path),
        checkpoint=str(ckpt.path),
        notes=notes,
        warnings=warnings,
    )


def run_plan(
    plan: SvagPlan,
    *,
    on_step: Callable[[int], None] | None = None,
    rtol: float = DEFAULT_RTOL,
    z: float = DEFAULT_Z,
    tail: float = DEFAULT_TAIL,
) -> SvagResult:
    """Run SVAG once per l of the plan (same seeds), compare the runs and give the verdict."""
    t0 = time.perf_counter()
    runs: list[SvagRun] = []
    devices = [plan.device.index or 0] if plan.device.type == "cuda" else []
    notes = list(plan.notes)
    moments = None
    if plan.target_optimizer.name in ("adam", "adamw", "rmsprop"):
        if plan.warm_start:
            base = copy.deepcopy(plan.model).to(plan.device)
            moments = model_gradient_moments(
                base, plan.loss_fn, plan.train, plan.fixed_batches, plan.mode
            )
            del base
            notes.append(
                f"{plan.target_optimizer.name} state warm-started for every l from the gradient "
                f"moments at the checkpoint on the {len(plan.fixed_batches)} fixed batches: "
                "m0 = mean gradient, v0 = mean² + l·variance (bias corrections ≈ 1)"
            )
        else:
            notes.append(f"{plan.target_optimizer.name} state starts from zeros for every l")
    else:
        notes.append("optimizer state (momentum buffer) starts fresh for every l")
    for lv in plan.ls:
        model = copy.deepcopy(plan.model).to(plan.device)
        model.train()
        loss_fn = (
            plan.loss_fn.to(plan.device) if isinstance(plan.loss_fn, nn.Module) else plan.loss_fn
        )
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(plan.seed)
            oracle = ModelOracle(
                model,
                loss_fn,
                plan.train,
                plan.target_batch_size,
                torch.Generator().manual_seed(plan.seed),
            )
            evaluate = ModelEvaluator(
                model,
                loss_fn,
                plan.train,
                plan.fixed_batches,
                mode=plan.mode,
                held_out=plan.held_out,
                held_out_indices=plan.held_out_indices,
                eval_batch_size=min(plan.target_batch_size, 1024),
            )
            try:
                run = run_svag(
                    oracle,
                    plan.target_optimizer,
                    lv,
                    plan.effective_steps,
                    evaluate=evaluate,
                    eval_every=plan.eval_every,
                    schedule=plan.schedule,
                    start_step=plan.start_step,
                    on_step=on_step,
                    moments=moments,
                )
            except torch.cuda.OutOfMemoryError:
                raise BscritError(
                    f"out of memory at batch size {plan.target_batch_size} on {plan.device}",
                    exit_code=ExitCode.RUNTIME,
                ) from None
        runs.append(run)
        del model, oracle, evaluate
    summaries, comparisons = compare_runs(runs, rtol=rtol, z=z, tail=tail)
    verdict = decide(comparisons, plan.ls, plan.target_batch_size)
    warnings = list(plan.warnings)
    for r in runs:
        if r.diverged_at is not None:
            warnings.append(f"l = {r.l} diverged (non-finite test function) at effective step "
                            f"{r.diverged_at:g}")  # fmt: skip
    if plan.ls[0] != 1:
        warnings.append(
            f"the smallest l is {plan.ls[0]}, not 1: the comparison is with SVAG l = "
            f"{plan.ls[0]}, not with the plain optimizer"
        )
    return SvagResult(
        batch_size=plan.batch_size,
        target_batch_size=plan.target_batch_size,
        kappa=plan.kappa,
        rule=plan.rule,
        rule_reference=plan.rule_reference,
        base_optimizer=plan.base_optimizer,
        target_optimizer=plan.target_optimizer,
        ls=plan.ls,
        effective_steps=plan.effective_steps,
        eval_every=plan.eval_every,
        eval_batches=len(plan.fixed_batches),
        eval_examples=len(plan.held_out_indices) if plan.held_out is not None else None,
        seed=plan.seed,
        device=str(plan.device),
        forward_backward=plan.forward_backward(),
        runs=tuple(runs),
        summaries=tuple(summaries),
        comparisons=tuple(comparisons),
        verdict=verdict,
        rtol=rtol,
        z=z,
        tail=tail,
        schedule=plan.schedule,
        start_step=plan.start_step,
        spec=plan.spec,
        checkpoint=plan.checkpoint,
        elapsed_s=time.perf_counter() - t0,
        notes=tuple(notes)
        + (
            "BatchNorm running statistics: updated once per SVAG step, by the first of the two "
            "batches (buffers saved before the second forward pass and restored after it)",
        ),
        warnings=tuple(warnings),
    )
