"""Brute-force reference for G and N on small in-memory data sets (independent of bscrit).

Two references (docs/theory.md §1–2):

1. :func:`batch_noise` — **train mode** (BatchNorm uses the statistics of each batch, as during
   training). With BatchNorm the batch loss ``L_γ`` is *not* a mean of per-example losses (the
   examples of a batch interact through the batch statistics), so per-example gradients do not
   define N. The reference therefore computes k batch gradients directly, all at once with
   ``torch.func.vmap(grad(...))`` over a stack of batches (each batch: B distinct examples drawn
   uniformly, batches independent), and applies the unbiased estimators in float64::

       N̂ = (Q − ‖S‖²/k) / (k − 1),    Ĝ = ‖S/k‖² − N̂/k          (docs/theory.md §2)

   with a delete-one-group jackknife (m groups) for standard errors. On these data sets k can be
   made large (thousands of batches in seconds), so this is a precise, simple reference.
2. :func:`exact_eval_noise` — **eval mode** (BatchNorm with its running statistics: the loss is
   then a mean of per-example losses). Exact values from all n per-example gradients::

       G = ‖∇L‖²,   T₁ = (1/n) Σᵢ ‖∇ℓᵢ − ∇L‖²,   N^B = T₁ (n − B) / (B (n − 1))

   ([SDBD21] eq. 22). A cross-check for ``bscrit measure --mode eval``.

Both report the quantities for *all* trainable parameters and for the scale-invariant subset
(weights that feed a BatchNorm directly; [LMA21] Lemma E.7).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, replace_all_batch_norm_modules_, vmap

__all__ = [
    "NoiseEstimate",
    "batch_noise",
    "exact_eval_noise",
    "scale_invariant_names",
    "sample_rows",
]


@dataclass(frozen=True)
class NoiseEstimate:
    """G, N^B and NSR = N/G of one parameter set at one checkpoint, with jackknife SEs."""

    G: float
    N: float
    nsr: float
    G_se: float
    N_se: float
    nsr_se: float
    R: float  # ‖x‖² of the parameter set
    num_params: int
    batch_size: int
    num_batches: int

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def scale_invariant_names(model: nn.Module) -> list[str]:
    """Trainable weights of ``nn.Linear`` modules directly followed by a BatchNorm (Sequential)."""
    names: list[str] = []
    mods = list(model.named_children())
    for (name, mod), (_, nxt) in zip(mods, mods[1:], strict=False):
        if (
            isinstance(mod, nn.Linear)
            and isinstance(nxt, nn.modules.batchnorm._BatchNorm)
            and mod.weight.requires_grad
        ):
            names.append(f"{name}.weight")
    return names


def sample_rows(n: int, batch_size: int, num_batches: int, seed: int) -> torch.Tensor:
    """``num_batches × B`` indices: each row B distinct examples, rows independent."""
    gen = torch.Generator().manual_seed(seed)
    rows = torch.empty(num_batches, batch_size, dtype=torch.long)
    for i in range(0, num_batches, 256):
        c = min(256, num_batches - i)
        rows[i : i + c] = torch.rand(c, n, generator=gen).argsort(dim=1)[:, :batch_size]
    return rows


def _estimate(
    s_groups: torch.Tensor, q_groups: torch.Tensor, counts: torch.Tensor
) -> tuple[float, float]:
    """(Ĝ, N̂) from group sums S_j [m, P], Q_j [m], k_j [m] (float64)."""
    k = float(counts.sum())
    s = s_groups.sum(0)
    q = float(q_groups.sum())
    ss = float(s @ s)
    n_hat = (q - ss / k) / (k - 1)
    g_hat = ss / k**2 - n_hat / k
    return g_hat, n_hat


def _jackknife(
    s_groups: torch.Tensor, q_groups: torch.Tensor, counts: torch.Tensor
) -> tuple[float, float, float, float, float, float]:
    g, n = _estimate(s_groups, q_groups, counts)
    m = s_groups.shape[0]
    loo = []
    for j in range(m):
        keep = [i for i in range(m) if i != j]
        gj, nj = _estimate(s_groups[keep], q_groups[keep], counts[keep])
        loo.append((gj, nj, nj / gj if gj > 0 else math.inf))
    nsr = n / g if g > 0 else math.inf

    def se(vals: Sequence[float]) -> float:
        if any(not math.isfinite(v) for v in vals):
            return math.inf
        mean = sum(vals) / m
        return math.sqrt((m - 1) / m * sum((v - mean) ** 2 for v in vals))

    return g, n, nsr, se([t[0] for t in loo]), se([t[1] for t in loo]), se([t[2] for t in loo])


def _param_sets(model: nn.Module) -> dict[str, list[str]]:
    trainable = [nm for nm, p in model.named_parameters() if p.requires_grad]
    return {"all": trainable, "scale_invariant": scale_invariant_names(model)}


def batch_noise(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    num_batches: int = 2000,
    groups: int = 10,
    seed: int = 0,
    max_rows: int = 65536,
) -> dict[str, NoiseEstimate]:
    """Train-mode G and N^B of ``model`` at its current weights from k independent batches.

    Args:
        model: the network (not modified; a copy gets BatchNorm without running statistics, i.e.
            batch statistics only, which is what train mode uses).
        x, y: the whole training set in memory (n examples).
        batch_size: B.
        num_batches: k (≥ 2·groups).
        groups: m, jackknife groups.
        seed: seeds the batch indices.
        max_rows: at most this many examples per vmap chunk (memory).

    Returns:
        ``{"all": NoiseEstimate, "scale_invariant": NoiseEstimate}`` (cross-entropy loss, the
        batch mean, without the weight-decay term).
    """
    n = len(y)
    if batch_size > n:
        raise ValueError(f"batch size {batch_size} > n = {n}")
    m = copy.deepcopy(model)
    replace_all_batch_norm_modules_(m)
    m.train()
    sets = _param_sets(m)
    params = {nm: p.detach() for nm, p in m.named_parameters() if p.requires_grad}
    frozen = {nm: p.detach() for nm, p in m.named_parameters() if not p.requires_grad}
    buffers = {nm: b for nm, b in m.named_buffers()}

    def loss(p: dict[str, torch.Tensor], xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        out = functional_call(m, ({**p, **frozen}, buffers), (xb,))
        return F.cross_entropy(out, yb)

    per_batch_grad = vmap(grad(loss), in_dims=(None, 0, 0), randomness="different")
    rows = sample_rows(n, batch_size, num_batches, seed)
    counts = torch.tensor(
        [len(c) for c in torch.arange(num_batches).chunk(groups)], dtype=torch.float64
    )
    bounds = torch.cat([torch.zeros(1), counts.cumsum(0)]).long().tolist()
    acc = {
        key: (
            torch.zeros(groups, sum(params[nm].numel() for nm in names), dtype=torch.float64),
            torch.zeros(groups, dtype=torch.float64),
        )
        for key, names in sets.items()
    }
    chunk = max(1, max_rows // batch_size)
    for j in range(groups):
        for i in range(bounds[j], bounds[j + 1], chunk):
            r = rows[i : min(i + chunk, bounds[j + 1])]
            grads = per_batch_grad(params, x[r], y[r])
            for key, names in sets.items():
                if not names:
                    continue
                flat = torch.cat([grads[nm].reshape(len(r), -1) for nm in names], 1).double()
                acc[key][0][j] += flat.sum(0)
                acc[key][1][j] += flat.pow(2).sum()
    out: dict[str, NoiseEstimate] = {}
    for key, names in sets.items():
        r_sq = float(sum(params[nm].double().pow(2).sum() for nm in names)) if names else 0.0
        if not names:
            nan = math.nan
            out[key] = NoiseEstimate(nan, nan, nan, nan, nan, nan, 0.0, 0, batch_size, num_batches)
            continue
        g, nn_, nsr, g_se, n_se, nsr_se = _jackknife(acc[key][0], acc[key][1], counts)
        out[key] = NoiseEstimate(
            G=g,
            N=nn_,
            nsr=nsr,
            G_se=g_se,
            N_se=n_se,
            nsr_se=nsr_se,
            R=r_sq,
            num_params=int(acc[key][0].shape[1]),
            batch_size=batch_size,
            num_batches=num_batches,
        )
    return out


def exact_eval_noise(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int
) -> dict[str, dict[str, float]]:
    """Exact eval-mode G, T₁, N^B (batches without replacement) from all per-example gradients.

    Returns:
        ``{"all": {...}, "scale_invariant": {...}}`` with keys G, T1, N, nsr, R.
    """
    m = copy.deepcopy(model).eval()
    sets = _param_sets(m)
    params = {nm: p.detach() for nm, p in m.named_parameters() if p.requires_grad}
    frozen = {nm: p.detach() for nm, p in m.named_parameters() if not p.requires_grad}
    buffers = {nm: b for nm, b in m.named_buffers()}

    def loss(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        out = functional_call(m, ({**p, **frozen}, buffers), (xi.unsqueeze(0),))
        return F.cross_entropy(out, yi.unsqueeze(0))

    grads = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    n = len(y)
    res: dict[str, dict[str, float]] = {}
    for key, names in sets.items():
        if not names:
            continue
        flat = torch.cat([grads[nm].reshape(n, -1) for nm in names], 1).double()
        mean = flat.mean(0)
        g = float(mean @ mean)
        t1 = float((flat - mean).pow(2).sum(1).mean())
        nb = t1 * (n - batch_size) / (batch_size * (n - 1))
        r_sq = float(sum(params[nm].double().pow(2).sum() for nm in names))
        res[key] = dict(G=g, T1=t1, N=nb, nsr=nb / g if g > 0 else math.inf, R=r_sq)
    return res
