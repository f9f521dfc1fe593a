"""Callbacks that measure the gradient noise during training (docs/api.md).

- :mod:`bscrit.integrations.lightning`: ``BscritCallback`` for Lightning (``bscrit[lightning]``);
- :mod:`bscrit.integrations.transformers`: ``BscritCallback`` for the Hugging Face ``Trainer``
  (``bscrit[hf]``);
- :mod:`bscrit.integrations.recorder`: what both do at a measured step (no framework import).

Nothing is imported here: each callback module imports its framework, and only that one.
"""
