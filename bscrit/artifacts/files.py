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

from bscrit.errors import ArtifactError, ExitCode


def read_json(path: str | os.PathLike[str], what: str = "bscrit JSON artifact") -> Any:
    """Read a JSON file, turning every failure into an :class:`ArtifactError` naming the file.

    ``what`` names the expected file in the message for a binary file ("not a bscrit
    measurement"): a checkpoint passed where a JSON artifact belongs.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ArtifactError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise ArtifactError(f"{p}: is a folder, expected a JSON file") from None
    except UnicodeDecodeError:
        raise ArtifactError(f"{p}: not a {what} (a binary file; a checkpoint?)") from None
    except OSError as e:
        raise ArtifactError(f"{p}: cannot read ({e.strerror})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ArtifactError(
            f"{p}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})"
        ) from None


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
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode())
        os.replace(tmp, p)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise write_error(p, e) from None
        raise


def dumps(d: dict[str, Any]) -> str:
    return json.dumps(d, indent=2, allow_nan=False) + "\n"


def write_json(path: str | os.PathLike[str], d: dict[str, Any]) -> None:
    write_atomic(path, dumps(d))
