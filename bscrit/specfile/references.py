"""Factory references and paths in a spec: ``file.py:fn`` or ``pkg.module:fn``, and paths that
resolve against the spec file's folder (pure: no torch, nothing imported)."""

from __future__ import annotations

import ast
import difflib
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
        missing = missing_name(file, attr.split(".")[0])
        if missing is not None:
            c.add(path, missing)
        return f"{file}:{attr}"
    return ref


#: A factory file longer than this is not read before the import (its names are checked then).
MAX_FACTORY_FILE_BYTES = 4 * 2**20


def _stored(node: ast.AST) -> set[str]:
    """The names ``node`` assigns to."""
    return {
        t.id for t in ast.walk(node) if isinstance(t, ast.Name) and isinstance(t.ctx, ast.Store)
    }


def _top_level_names(tree: ast.Module) -> set[str] | None:
    """The names a module binds at its top level (defs, classes, assignments, imports, and
    those bound under ``if``/``try``/``with``); None when it may bind others (``import *``, a
    module ``__getattr__``, ``globals()``, ``exec``, ``sys.modules`` used)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and any(a.name == "*" for a in node.names):
            return None
        if isinstance(node, ast.Name) and node.id in ("globals", "vars", "exec"):
            return None
        if isinstance(node, ast.Attribute) and node.attr == "modules":  # sys.modules[...] = x
            return None
    body = list(tree.body)
    while body:
        node = body.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.If | ast.Try | ast.With | ast.For | ast.While):
            for field in ("body", "orelse", "finalbody", "handlers"):
                body.extend(getattr(node, field, []))
            heads = [*getattr(node, "items", []), getattr(node, "target", None)]
            for h in heads:  # with ... as x, for x in ...
                names.update(_stored(h) if h is not None else ())
        elif isinstance(node, ast.ExceptHandler):
            body.extend(node.body)
            names.update([node.name] if node.name else [])
        else:  # assignments of every form, walrus included
            names.update(_stored(node))
    return None if "__getattr__" in names else names


def missing_name(file: Path, name: str) -> str | None:
    """Why ``file`` cannot provide ``name`` (it does not bind it at its top level, or does not
    parse), read without running it; None when it does, or when that cannot be told without
    the import (:func:`bscrit.load.factories.resolve_callable` checks again then)."""
    try:
        if file.stat().st_size > MAX_FACTORY_FILE_BYTES:
            return None
        tree = ast.parse(file.read_bytes(), str(file))
    except SyntaxError as e:
        return f"cannot import {file}: SyntaxError: {e.msg} (line {e.lineno})"
    except (OSError, ValueError):
        return None  # unreadable, NUL bytes: the import says why
    names = _top_level_names(tree)
    if names is None or name in names:
        return None
    close = difflib.get_close_matches(name, sorted(n for n in names if n[:1] != "_"), n=3)
    hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
    return f"{file} has no attribute {name!r}{hint}"


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
