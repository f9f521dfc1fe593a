"""Tiny model and dataset for tests and spec examples (imported by file path from specs)."""

from __future__ import annotations

import torch
from torch import nn


def make_model(width: int = 8, dim: int = 4, classes: int = 3) -> nn.Module:
    """Linear -> BatchNorm1d -> ReLU -> Linear: 4 -> width -> classes."""
    return nn.Sequential(
        nn.Linear(dim, width),
        nn.BatchNorm1d(width),
        nn.ReLU(),
        nn.Linear(width, classes),
    )


def make_dataset(
    n: int = 64, dim: int = 4, classes: int = 3, seed: int = 0
) -> torch.utils.data.TensorDataset:
    """n Gaussian inputs with labels from a fixed random linear teacher (deterministic)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    teacher = torch.randn(dim, classes, generator=g)
    y = (x @ teacher).argmax(dim=1)
    return torch.utils.data.TensorDataset(x, y)


def make_sum_loss() -> nn.Module:
    """A loss with reduction='sum', which bscrit must refuse."""
    return nn.CrossEntropyLoss(reduction="sum")


def make_loss(label_smoothing: float = 0.0) -> nn.Module:
    return nn.CrossEntropyLoss(label_smoothing=label_smoothing)


def broken_factory() -> nn.Module:
    raise ValueError("width must be positive")


NOT_CALLABLE = 3
