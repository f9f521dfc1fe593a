"""Spec factory for the digits example: the scale-invariant MLP (code in bscrit.examples.digits)."""

from bscrit.examples.digits.model import make_model, scale_invariant_names

__all__ = ["make_model", "scale_invariant_names"]
