"""Regenerate ``tiny.pt``: a tiny checkpoint of ``tiny.make_model()`` with an SGD state.

Run from anywhere: ``python tests/assets/make_assets.py``. The file is a few KB; tests that need
other layouts build them in a tmp folder from :func:`save_checkpoint`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import tiny  # noqa: E402


def save_checkpoint(path: Path, *, seed: int = 0) -> Path:
    """Train ``tiny.make_model()`` for 3 SGD steps and save ``{model, optimizer, step}``."""
    torch.manual_seed(seed)
    model = tiny.make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    x, y = tiny.make_dataset().tensors
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[:16]), y[:16]).backward()
        opt.step()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": 3}, path)
    return path


if __name__ == "__main__":
    out = save_checkpoint(HERE / "tiny.pt")
    print(f"wrote {out} ({out.stat().st_size} bytes)")
