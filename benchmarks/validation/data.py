"""Real data sets available offline, as in-memory tensors (and ``TensorDataset`` spec factories).

- **MNIST-1D** (Greydanus 2020, the ``mnist1d`` package): 40-dim 1D signals, 10 classes, generated
  locally and deterministically (seed 42 of the package: 4000 train / 1000 test). Harder than
  digits: an MLP reaches ~30-40% test error, so the 20%-relative failure criterion of [LMA21]
  Fig. 3 is meaningful.
- **digits** (scikit-learn ``load_digits``): 1797 8×8 images, 1500 train / 297 test (the same split
  and preprocessing as ``examples/digits/data.py``).
"""

from __future__ import annotations

import functools
import random

import numpy as np
import torch
from torch.utils.data import TensorDataset

__all__ = [
    "DATASETS",
    "load_tensors",
    "make_digits_dataset",
    "make_mnist1d_dataset",
]

DATASETS = ("mnist1d", "digits")


def _check_split(split: str) -> None:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")


@functools.cache
def _mnist1d_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from mnist1d.data import get_dataset_args, make_dataset

    # make_dataset reseeds Python's and NumPy's global RNGs: restore them afterwards.
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        d = make_dataset(get_dataset_args())  # generated locally, no download
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return d["x"], d["y"], d["x_test"], d["y_test"]


@functools.cache
def _digits_arrays(test_size: int = 297, seed: int = 0) -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    n = len(y)
    perm = np.random.RandomState(seed).permutation(n)
    tr, te = perm[: n - test_size], perm[n - test_size :]
    x = x.astype(np.float64) / 16.0
    mean, std = x[tr].mean(axis=0), x[tr].std(axis=0)
    std[std < 1e-8] = 1.0
    x = (x - mean) / std
    return x[tr], y[tr], x[te], y[te]


def load_tensors(name: str, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """``(x float32 [n, d], y int64 [n])`` of data set ``name`` ("mnist1d" or "digits")."""
    _check_split(split)
    if name == "mnist1d":
        arrays = _mnist1d_arrays()
    elif name == "digits":
        arrays = _digits_arrays()
    else:
        raise ValueError(f"unknown data set {name!r}; expected one of {DATASETS}")
    x, y = arrays[:2] if split == "train" else arrays[2:]
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.int64)


def make_mnist1d_dataset(split: str = "train") -> TensorDataset:
    """MNIST-1D (4000 train / 1000 test, 40 features, already standardised by the package)."""
    return TensorDataset(*load_tensors("mnist1d", split))


def make_digits_dataset(split: str = "train") -> TensorDataset:
    """scikit-learn digits (1500 train / 297 test, 64 features standardised with train stats)."""
    return TensorDataset(*load_tensors("digits", split))
