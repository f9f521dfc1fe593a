"""Output files: refused before the work when they could not be written, written after it.

A measurement or a SVAG run can take hours; a path that cannot be written (a folder, a read-only
disk, a full disk) is refused before any work (:func:`check_output_path`), and a write that still
fails afterwards prints the results on stdout as JSON so that nothing is lost
(:func:`write_outputs`). The files themselves are written atomically by
:func:`bscrit.artifacts.measurement.write_atomic`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bscrit.errors import ArtifactError, BscritError, ExitCode, UsageError

#: Less free space than this on the disk of an output path is refused before any work.
MIN_FREE_BYTES = 1 << 20


def check_output_path(
    path: str | os.PathLike[str], *, folder: bool = False, key: str = "out"
) -> Path:
    """Refuse, before any work, an output path that could not be written at the end.

    A file path (``folder=False``) must not end in ``/``, be an existing folder or a device; a
    folder path must not be an existing file. The nearest existing folder on the way must accept
    a new file (a probe file is created and removed: read-only folders and file systems are
    caught) and its disk must have at least :data:`MIN_FREE_BYTES` free. Raises
    :class:`UsageError` naming the option (``key``) and the path; nothing is created.
    """
    raw = os.fspath(path)
    p, base = Path(raw), Path(raw) if folder else Path(raw).parent

    def refuse(problem: str) -> UsageError:
        return UsageError(f"{{{key}}} {raw}: {problem}", **{key: key})

    if not folder and raw.endswith(("/", os.sep)):
        raise refuse("ends in '/', expected a file name")
    try:
        if folder and p.exists() and not p.is_dir():
            raise refuse("exists and is not a folder")
        if not folder and p.is_dir():
            raise refuse("is an existing folder, expected a file name")
        if not folder and p.exists() and not p.is_file():
            raise refuse("exists and is not a regular file")
        while not base.exists() and base != base.parent:
            base = base.parent
        if not base.is_dir():
            raise refuse(f"cannot create a folder under the file {base}")
        fd, probe = tempfile.mkstemp(prefix=".bscrit-probe.", dir=base)
        os.close(fd)
        os.unlink(probe)
        free = shutil.disk_usage(base).free
    except OSError as e:
        raise refuse(f"cannot write in {base} ({e.strerror or e})") from None
    if free < MIN_FREE_BYTES:
        raise refuse(f"the disk holding {base} is full ({free} bytes free)")
    return p


def write_outputs(
    result: Callable[[], dict[str, Any]], jobs: list[tuple[Callable[[], object], list[Path]]]
) -> str:
    """Run the writes that follow the work and return the "wrote ..." line (naming the files it
    overwrote). A write that fails prints the results on stdout as JSON, so nothing is lost, and
    exits 3; an interrupt says which files were complete."""
    old = [str(p) for _, paths in jobs for p in paths if p.exists()]
    written: list[str] = []
    try:
        for write, paths in jobs:
            write()
            written += [str(p) for p in paths]
    except BscritError as e:
        from bscrit import report

        report.print_json(result())
        done = f" (wrote {', '.join(written)})" if written else ""
        raise ArtifactError(
            f"{e.template}{done}; the results are printed on stdout as JSON",
            exit_code=ExitCode.RUNTIME, **e.options,
        ) from None  # fmt: skip
    except KeyboardInterrupt as e:
        e.written = written  # type: ignore[attr-defined]
        raise
    names = ", ".join(written[:-1]) + " and " + written[-1] if len(written) > 1 else written[0]
    return f"wrote {names}" + (f" (overwrote the existing {', '.join(old)})" if old else "")
