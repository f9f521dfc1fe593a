"""A tiny float64 regression problem and its exact gradient statistics, shared by the tests.

With n = 48–64 examples the per-example gradients over the whole dataset give the truth:
G = ‖∇L‖², T₁ = (1/n) Σ ‖∇ℓᵢ − ∇L‖² and N^B = T₁ (n − B)/(B (n − 1)) (docs/theory.md §1).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset


def mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the batch (a mean, as the estimators assume)."""
    return ((out.squeeze(-1) - y) ** 2).mean()


def tiny_problem(n: int = 48, seed: int = 0) -> tuple[nn.Module, TensorDataset]:
    """A 3 → 4 → 1 tanh MLP in float64 and n noisy examples of a sine of a linear feature."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g, dtype=torch.float64)
    y = torch.sin(x @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64))
    y = y + 0.3 * torch.randn(n, generator=g, dtype=torch.float64)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    return model, TensorDataset(x, y)


def truth(model: nn.Module, ds: TensorDataset, b: int) -> tuple[float, float, float]:
    """Exact (G, T₁, N^B) from every per-example gradient of the dataset."""
    x, y = ds.tensors
    ps = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for xi, yi in zip(x, y):
        grads = torch.autograd.grad(mse(model(xi[None]), yi[None]), ps)
        rows.append(torch.cat([t.reshape(-1) for t in grads]))
    per = torch.stack(rows)
    mean = per.mean(0)
    n = len(x)
    t1 = float(((per - mean) ** 2).sum(1).mean())
    return float(mean @ mean), t1, t1 * (n - b) / (b * (n - 1))
