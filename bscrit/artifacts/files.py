"""Files written atomically and JSON read with one clear error per failure (pure: no torch).

Every artifact bscrit writes goes through :func:`write_atomic` (a temporary file in the same
folder, then a rename), so an interrupted run never leaves half a file; :func:`read_json` turns
every way a JSON file can fail to load into an :class:`~bscrit.errors.ArtifactError` naming it.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from bscrit import boundary
from bscrit.errors import ArtifactError, ExitCode


def read_text(path: str | os.PathLike[str], what: str, limit: int) -> str:
    """A file's UTF-8 text, at most ``limit`` bytes (:mod:`bscrit.boundary`'s limits), every
    failure an :class:`ArtifactError` naming the file; ``what`` names the expected file ("bscrit
    measurement") for a binary one (a checkpoint passed where JSON belongs)."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            data = f.read(limit + 1)  # never more than the limit, whatever the file's size
    except FileNotFoundError:
        raise ArtifactError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise ArtifactError(f"{p}: is a folder, expected a JSON file") from None
    except OSError as e:
        raise ArtifactError(f"{p}: cannot read ({e.strerror})") from None
    if len(data) > limit:
        size = max(len(data), p.stat().st_size)
        raise ArtifactError(f"{p}: {boundary.size_problem(size, limit, what)}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ArtifactError(f"{p}: not a {what} (a binary file; a checkpoint?)") from None


def read_json(
    path: str | os.PathLike[str], what: str = "bscrit JSON artifact", malformed: str = ""
) -> Any:
    """Read a JSON file, turning every failure into an :class:`ArtifactError` naming the file.

    Bounded (:func:`bscrit.boundary.parse_json`): at most :data:`~bscrit.boundary.MAX_JSON_BYTES`,
    nesting :data:`~bscrit.boundary.MAX_DEPTH`, finite numbers and int64 integers only (each bad
    value named by its key path). ``what`` names the expected file in the message for a binary
    file ("not a bscrit measurement"): a checkpoint passed where a JSON artifact belongs;
    ``malformed`` ("measurement artifact") how a bad value's message names it.
    """
    text = read_text(path, what, boundary.MAX_JSON_BYTES)
    return boundary.parse_json(text, str(Path(path)), what, malformed)


def write_error(path: str | os.PathLike[str], e: OSError) -> ArtifactError:
    """A write that failed after the work (disk full, folder removed): exit 3, naming the path."""
    return ArtifactError(f"cannot write {path} ({e.strerror or e})", exit_code=ExitCode.RUNTIME)


def _file_mode() -> int:
    """0o666 less the user's umask: what ``open()`` would give a new file."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically (temp file in the same folder, then rename).

    An interrupted or failed run never leaves a half-written file behind. The file gets the
    user's umask (a temp file is created 0600). An OS error is raised as :func:`write_error`.
    """
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    except OSError as e:
        raise write_error(p, e) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), _file_mode())  # the file, not a link swapped in for its name
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise write_error(p, e) from None
        raise


def append_line(path: str | os.PathLike[str], line: str) -> None:
    """Append ``line`` and a newline to ``path`` (created 0666 less the umask, with its folder),
    refusing to follow a link planted at ``path`` (``O_NOFOLLOW``): ``series.jsonl``. An OS
    error is raised as :func:`write_error`."""
    p = Path(path)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(p, flags, 0o666)
        with os.fdopen(fd, "a", encoding="utf-8") as f:
            f.write(line + "\n")
    except OSError as e:
        raise write_error(p, e) from None


def dumps(d: dict[str, Any]) -> str:
    return json.dumps(d, indent=2, allow_nan=False) + "\n"


def write_json(path: str | os.PathLike[str], d: dict[str, Any]) -> None:
    write_atomic(path, dumps(d))
