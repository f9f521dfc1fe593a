"""The tensors of a safetensors file as handles that read on demand, whole or by rows of dim 0
(:mod:`bscrit.load.sharded_weights`: each rank of a sharded measurement reads its own rows)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import Tensor


@dataclass(frozen=True)
class Entry:
    """One tensor of a safetensors file, not read yet."""

    path: str
    name: str
    shape: tuple[int, ...]

    def read(self, lo: int | None = None, hi: int | None = None) -> Tensor:
        """The tensor, or its rows ``lo:hi`` only (the rest of the file is not read)."""
        from safetensors import safe_open

        with safe_open(self.path, framework="pt", device="cpu") as f:
            if lo is None or not self.shape:
                return f.get_tensor(self.name)
            return f.get_slice(self.name)[lo:hi]


def entries(path: str | Path) -> dict[str, Entry]:
    """Every tensor of the safetensors file ``path`` as an :class:`Entry` (its header only)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as f:
        return {k: Entry(str(path), k, tuple(f.get_slice(k).get_shape())) for k in f.keys()}
