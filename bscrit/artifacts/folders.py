"""Output files written atomically: an artifact's folder (``svag --out``, ``confirm --out``) file by
file, the artifact read back from the folder or the file itself, and a matplotlib figure (the
``--plot`` of svag, confirm, schedule). Pure: the figure is handed in."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bscrit.artifacts.measurement import write_atomic, write_error
from bscrit.errors import ArtifactError


def write_folder(
    out_dir: str | os.PathLike[str], files: Sequence[tuple[str, str]]
) -> tuple[Path, ...]:
    """Write each ``(name, text)`` into ``out_dir`` (created), each file atomically; the folders
    of ``svag --out`` and ``confirm --out``. A file standing where the folder goes is refused."""
    d = Path(out_dir)
    if d.exists() and not d.is_dir():
        raise ArtifactError(f"{{out}} {d}: exists and is not a folder", out="out")
    paths = tuple(d / name for name, _ in files)
    for path, (_, text) in zip(paths, files, strict=True):
        write_atomic(path, text)
    return paths


def file_in(path: str | os.PathLike[str], name: str) -> Path:
    """``path`` itself, or ``path/name`` when ``path`` is a folder (an artifact or its folder)."""
    p = Path(path)
    return p / name if p.is_dir() else p


def save_figure(fig: Any, path: str | os.PathLike[str]) -> None:
    """Save a matplotlib figure as a PNG atomically (a temporary file, then a rename), then close
    it; a write failure (disk full, folder gone) raises the exit-3 error naming the file."""
    import matplotlib.pyplot as plt

    p = os.fspath(path)
    d = os.path.dirname(os.path.abspath(p))
    tmp = os.path.join(d, f".{os.path.basename(p)}.tmp.png")
    try:
        os.makedirs(d, exist_ok=True)
        fig.savefig(tmp, dpi=120)
        os.replace(tmp, p)
    except OSError as e:
        raise write_error(p, e) from None
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
