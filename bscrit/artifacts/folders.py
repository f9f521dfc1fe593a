"""An artifact's folder (``svag --out``, ``confirm --out``) written file by file, each atomically,
and the artifact read back from the folder or the file itself (the ``--plot`` figures are
:func:`bscrit.report.figure.save_figure`). Pure."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from bscrit.artifacts.files import write_atomic
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
