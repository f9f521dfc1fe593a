"""Spec factory for the digits example: sklearn's load_digits (code in bscrit.examples.digits)."""

from bscrit.examples.digits.data import load_tensors, make_dataset

__all__ = ["load_tensors", "make_dataset"]
