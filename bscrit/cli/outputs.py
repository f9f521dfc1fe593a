"""Output files: refused before the work when they could not be written or would replace one of
the command's inputs, written after it.

A measurement or a SVAG run can take hours; a path that cannot be written (a folder, a read-only
disk, a full disk) is refused before any work (:func:`check_output_path`), and so is a path that
is, links followed, one of the files the command reads (:class:`Inputs`: ``--out ckpt.pt`` would
replace the checkpoint with the result). A write that still fails afterwards prints the results
on stdout as JSON so that nothing is lost (:func:`write_outputs`). The files themselves are
written atomically (:func:`bscrit.artifacts.files.write_atomic`: a temporary file created
exclusively beside the target, then renamed over it; a link there is replaced, never followed).
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bscrit.errors import ArtifactError, BscritError, ExitCode, UsageError
from bscrit.specfile.references import user_path

if TYPE_CHECKING:
    from bscrit.specfile.document import Spec

#: Less free space than this on the disk of an output path is refused before any work.
MIN_FREE_BYTES = 1 << 20
#: Most files an input folder (a checkpoint folder, a glob) contributes to :class:`Inputs`.
MAX_INPUT_FILES = 10_000
_GLOB = re.compile(r"[*?\[]")
PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class Inputs:
    """The files a command reads, each with what it is (``"the checkpoint"``): an output path
    that is one of them, links followed (``Path.resolve``) or the same file under another name
    (a hard link: ``os.path.samefile``), is refused before any work (:meth:`refuse`)."""

    files: tuple[tuple[Path, str], ...] = ()

    @staticmethod
    def of(*groups: tuple[str, Iterable[PathLike | None]]) -> Inputs:
        """``(what, paths)`` pairs: files; folders (a checkpoint folder: every file in it; a
        folder of checkpoints: its checkpoint files and checkpoint folders) and globs, expanded
        as ``-c`` expands them (at most :data:`MAX_INPUT_FILES` each). Missing paths are kept
        (the command reports them)."""
        found: dict[Path, str] = {}
        for what, paths in groups:
            for p in paths:
                if p is None:
                    continue
                for f, name in _expand(p, what):
                    found.setdefault(f, name)
        return Inputs(tuple(found.items()))

    def __add__(self, other: Inputs) -> Inputs:
        seen = dict(self.files)
        return Inputs(self.files + tuple((f, n) for f, n in other.files if f not in seen))

    def find(self, path: PathLike) -> tuple[Path, str, str] | None:
        """The input ``path`` would replace: its resolved path, what it is and how ``path``
        reaches it (``"is"``, ``"resolves to ..., which is"``, ``"is a hard link to"``); None
        when it is none of them."""
        target, raw = _resolved(path), os.fspath(path)
        for f, what in self.files:
            if target == f:
                same = user_path(raw).absolute() == f
                how = "is" if same else f"resolves to {f}, which is"
                return f, what, how
        try:
            st = os.stat(path)  # links followed: a hard link or a bind mount of an input
        except (OSError, ValueError):
            return None
        for f, what in self.files:
            try:
                if os.path.samestat(st, os.stat(f)):
                    return f, what, f"is the same file as {f} (a hard link), which is"
            except (OSError, ValueError):
                continue
        return None

    def refuse(self, path: PathLike, key: str = "out") -> None:
        """Raise :class:`UsageError` (exit 2) naming both paths when ``path`` is an input."""
        hit = self.find(path)
        if hit is None:
            return
        _, what, how = hit
        raise UsageError(
            f"{{{key}}} {os.fspath(path)} {how} {what}, an input of this command: writing the "
            "result there would replace it; choose another path",
            **{key: key},
        )


def _resolved(path: PathLike) -> Path:
    try:
        return Path(path).expanduser().resolve()
    except (OSError, RuntimeError, ValueError):  # a link loop, a NUL byte: compared as given
        return Path(path).absolute()


def _expand(arg: PathLike, what: str) -> Iterator[tuple[Path, str]]:
    """The files one input path names, resolved, each with what it is."""
    from bscrit.load.selection import SUFFIXES, is_checkpoint_folder

    raw = os.fspath(arg)
    p = user_path(raw)  # ~nouser: kept as it is (the loader says it is not found)
    matches = [p]
    if not p.exists() and _GLOB.search(raw):
        matches = [Path(x) for x in sorted(glob.glob(str(p)))[:MAX_INPUT_FILES]]
    for m in matches:
        if not m.is_dir():
            yield _resolved(m), f"{what} {m}"
        elif is_checkpoint_folder(m):
            yield from _walk(m, what)
        else:
            try:
                entries = sorted(m.iterdir())[:MAX_INPUT_FILES]
            except OSError:
                continue
            for e in entries:
                if e.is_file() and e.suffix in SUFFIXES:
                    yield _resolved(e), f"{what} {e}"
                elif e.is_dir() and is_checkpoint_folder(e):
                    yield from _walk(e, what)


def _walk(folder: Path, what: str) -> Iterator[tuple[Path, str]]:
    """Every file of a checkpoint folder (links not followed into other folders)."""
    count = 0
    for root, _, names in os.walk(folder):
        for name in names:
            count += 1
            if count > MAX_INPUT_FILES:
                return
            yield _resolved(Path(root) / name), f"a file of {what} {folder}"


def spec_inputs(spec: Spec) -> Inputs:
    """What a loaded spec makes a command read: the spec, its checkpoint paths, its model's
    Hugging Face folder, the files of its factories (``net.py:make``) and the existing files its
    kwargs name (``{path: data.npz}``)."""
    from bscrit.specfile.references import is_file_ref, split_ref

    factories: list[Path] = []
    named: list[Path] = []
    sections = (spec.model, spec.data, spec.eval_data, spec.loss)
    for section in sections:
        ref = getattr(section, "factory", None)
        parts = split_ref(ref) if isinstance(ref, str) else None
        if parts is not None and is_file_ref(parts[0]):
            factories.append(Path(parts[0]))
        for v in _strings(getattr(section, "kwargs", None) or {}):
            named += [c for c in (Path(v), spec.base_dir / v) if len(v) < 4096 and _is_file(c)]
    hf = getattr(spec.model, "hf", None)
    return Inputs.of(
        ("the spec", [spec.path]),
        ("the checkpoint", spec.checkpoint.paths),
        ("the model folder", [hf]),
        ("the factory file", factories),
        ("the file the spec names", named),
    )


def _is_file(p: Path) -> bool:
    try:
        return p.expanduser().is_file()
    except (OSError, ValueError, RuntimeError):  # a NUL byte, no home folder
        return False


def _strings(value: Any, depth: int = 0) -> Iterator[str]:
    """The strings inside kwargs (lists and mappings, a few levels deep)."""
    if isinstance(value, str):
        yield value
    elif depth < 3 and isinstance(value, Mapping):
        for v in value.values():
            yield from _strings(v, depth + 1)
    elif depth < 3 and isinstance(value, list | tuple):
        for v in value[:100]:
            yield from _strings(v, depth + 1)


def spec_file_inputs(spec: PathLike) -> Inputs:
    """:func:`spec_inputs` of the spec at ``spec`` when it loads, else the spec file alone (the
    command reports what is wrong with it)."""
    from bscrit.specfile.document import load_spec

    try:
        return spec_inputs(load_spec(spec))
    except (BscritError, OSError, ValueError):
        return Inputs.of(("the spec", [spec]))


def distinct_outputs(paths: Sequence[tuple[PathLike, str]]) -> None:
    """Refuse two outputs that are one file (``--plot`` naming a file of ``--out``), before any
    work."""
    seen: dict[Path, str] = {}
    for p, key in paths:
        r = _resolved(p)
        if r in seen and seen[r] != key:
            raise UsageError(
                f"{{{key}}} {os.fspath(p)} is also the file of {{{seen[r]}}}: one would replace "
                "the other; choose another path",
                **{key: key, seen[r]: seen[r]},
            )
        seen.setdefault(r, key)


def check_output_path(
    path: PathLike, *, folder: bool = False, key: str = "out", inputs: Inputs | None = None
) -> Path:
    """Refuse, before any work, an output path that could not be written at the end, or that
    is one of ``inputs`` (:meth:`Inputs.refuse`).

    A file path (``folder=False``) must not end in ``/``, be an existing folder or a device; a
    folder path must not be an existing file. The nearest existing folder on the way must accept
    a new file (a probe file is created and removed: read-only folders and file systems are
    caught) and its disk must have at least :data:`MIN_FREE_BYTES` free. Raises
    :class:`UsageError` naming the option (``key``) and the path; nothing is created.
    """
    raw = os.fspath(path)
    p, base = Path(raw), Path(raw) if folder else Path(raw).parent
    if inputs is not None:
        inputs.refuse(raw, key)

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
