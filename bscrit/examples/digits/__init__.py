"""A scale-invariant MLP on scikit-learn's digits: model, data and its SGD training loop.

The files under ``examples/digits/`` in the repository are thin wrappers around this package so
that ``bscrit demo`` works from any installation, including a non-editable one.
"""

from bscrit.examples.digits.data import load_tensors, make_dataset
from bscrit.examples.digits.model import make_model, scale_invariant_names

__all__ = ["load_tensors", "make_dataset", "make_model", "scale_invariant_names"]
