"""scikit-learn's ``load_digits`` (1797 8×8 images) as in-memory tensors, deterministically split.

Features are scaled to [0, 1] (pixel values are 0..16) and then standardised per feature with the
*training* split's mean and standard deviation (constant features keep std 1). Works offline: the
data ship with scikit-learn.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import TensorDataset

__all__ = ["make_dataset", "load_tensors"]


def load_tensors(
    split: str = "train", test_size: int = 297, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(x float32 [n, 64], y int64 [n])`` of one split (see :func:`make_dataset`)."""
    from sklearn.datasets import load_digits

    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    x, y = load_digits(return_X_y=True)
    n = len(y)
    if not 0 < test_size < n:
        raise ValueError(f"test_size must be in (0, {n}), got {test_size}")
    perm = np.random.RandomState(seed).permutation(n)
    train_idx, test_idx = perm[: n - test_size], perm[n - test_size :]
    x = x.astype(np.float64) / 16.0
    mean = x[train_idx].mean(axis=0)
    std = x[train_idx].std(axis=0)
    std[std < 1e-8] = 1.0
    idx = train_idx if split == "train" else test_idx
    xs = (x[idx] - mean) / std
    return torch.tensor(xs, dtype=torch.float32), torch.tensor(y[idx], dtype=torch.int64)


def make_dataset(split: str = "train", test_size: int = 297, seed: int = 0) -> TensorDataset:
    """The digits data set: 1500 train / 297 test examples by default (deterministic split).

    Args:
        split: ``"train"`` or ``"test"``.
        test_size: number of held-out examples.
        seed: seed of the split permutation.

    Returns:
        ``TensorDataset(x, y)`` with float32 standardised features and int64 labels.
    """
    return TensorDataset(*load_tensors(split, test_size, seed))
