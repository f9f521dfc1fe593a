"""``${...}`` variables in the spec's factory kwargs: ``${spec_dir}``, the spec file's folder.

Relative paths in ``checkpoint.path`` and in ``file.py:fn`` factory references resolve against
the spec's folder, but a factory's own kwargs are handed over as written, so a relative path in
them would resolve against the working directory of whoever runs bscrit. ``${spec_dir}`` makes
such a path independent of it::

    data:
      factory: data.py:make_dataset
      kwargs: {path: "${spec_dir}/tokens.pt"}

Every string in ``model.kwargs``, ``data.kwargs``, ``eval_data.kwargs`` and ``loss.kwargs``
(nested lists and mappings included) has ``${spec_dir}`` replaced by the absolute folder of the
spec file, without a trailing slash. Any other ``${name}`` is a spec problem naming the key; ``$$``
is a literal ``$`` (so ``$${spec_dir}`` stays ``${spec_dir}``). No torch import here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bscrit.checker import Checker
from bscrit.checker import join as _join

#: The variables a spec's kwargs may use.
VARIABLES = ("spec_dir",)
_TOKEN = re.compile(r"\$\$|\$\{([^}]*)\}")


def expand_string(c: Checker, text: str, path: str, values: Mapping[str, str]) -> str:
    """``text`` with every ``${name}`` replaced by ``values[name]`` (``$$`` → ``$``); an unknown
    name is added to ``c`` as a problem at ``path``."""

    def replace(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1).strip()
        if name in values:
            return values[name]
        known = ", ".join("${" + v + "}" for v in values)
        c.add(path, f"unknown variable ${{{m.group(1)}}} in {text!r}; known: {known}")
        return m.group(0)

    return _TOKEN.sub(replace, text) if "$" in text else text


def expand_kwargs(c: Checker, kwargs: dict, path: str, base_dir: Path) -> dict:
    """``kwargs`` with ``${spec_dir}`` (``base_dir``) substituted in every string, nested ones
    included; ``path`` is the kwargs' key path (``"data.kwargs"``) for the problems."""
    values = {"spec_dir": str(Path(base_dir))}

    def walk(value: Any, where: str) -> Any:
        if isinstance(value, str):
            return expand_string(c, value, where, values)
        if isinstance(value, list):
            return [walk(v, _join(where, i)) for i, v in enumerate(value)]
        if isinstance(value, Mapping):
            return {
                k: walk(v, _join(where, k) if isinstance(k, str) else where)
                for k, v in value.items()
            }
        return value

    return {k: walk(v, _join(path, k)) for k, v in kwargs.items()}
