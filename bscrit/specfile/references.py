"""Factory references and paths in a spec: ``file.py:fn`` or ``pkg.module:fn``, and paths that
resolve against the spec file's folder (pure: no torch, nothing imported)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bscrit.checker import Checker


def is_file_ref(module_part: str) -> bool:
    """True for ``path/to/file.py`` (a file), False for ``pkg.module`` (an importable module)."""
    return module_part.endswith(".py") or "/" in module_part or "\\" in module_part


def split_ref(ref: str) -> tuple[str, str] | None:
    """``"a/b.py:fn"`` -> ``("a/b.py", "fn")``; ``None`` when it is not of the form ``X:name``."""
    if ":" not in ref:
        return None
    module_part, _, attr = ref.rpartition(":")
    module_part, attr = module_part.strip(), attr.strip()
    if not module_part or not attr or not all(p.isidentifier() for p in attr.split(".")):
        return None
    return module_part, attr


def check_factory(c: Checker, value: Any, path: str, base_dir: Path) -> str | None:
    """Validate a factory reference; make a relative ``file.py`` part absolute."""
    ref = c.string(value, path, 'a factory reference "file.py:fn" or "pkg.module:fn"')
    if ref is None:
        return None
    if "\0" in ref:
        c.add(path, "a factory reference cannot hold a NUL character (\\0)")
        return None
    parts = split_ref(ref)
    if parts is None:
        c.add(path, f'expected "file.py:fn" or "pkg.module:fn", got {ref!r}')
        return None
    module_part, attr = parts
    if is_file_ref(module_part):
        file = user_path(module_part)
        if not file.is_absolute():
            file = base_dir / file
        file = file.resolve()
        if not file.is_file():
            c.add(path, f"file not found: {file}")
            return None
        return f"{file}:{attr}"
    return ref


def user_path(value: str | Path) -> Path:
    """``Path(value).expanduser()``, or ``value`` as it is when ``~name`` names no user (the
    file is then not found, said as such, instead of a RuntimeError)."""
    try:
        return Path(value).expanduser()
    except RuntimeError:
        return Path(value)


def resolve_path(value: str, base_dir: Path) -> Path:
    p = user_path(value)
    return (p if p.is_absolute() else base_dir / p).resolve()
