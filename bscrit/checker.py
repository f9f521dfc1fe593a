"""Collect every problem of a configuration with its key path, then raise once (pure).

The spec parser reads values through a :class:`Checker`: each getter checks one value, records a
:class:`~bscrit.errors.SpecProblem` ("optimizer.lr: expected a positive number, got -1") when it
is wrong and returns None, so that one :class:`~bscrit.errors.SpecError` can list them all.
:func:`bscrit.artifacts.checks.measurement_problems` does the same for a measurement artifact
read back from JSON. Numbers are checked by :mod:`bscrit.boundary` (int64, finite).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from bscrit import boundary
from bscrit.boundary import describe
from bscrit.errors import SpecError, SpecProblem, UsageError


def join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def did_you_mean(word: str, choices: tuple[str, ...] | list[str]) -> str:
    """`` (did you mean 'lr'?)`` when a close match exists, else ``''``."""
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class Checker:
    """Collects :class:`SpecProblem` s; the getters return ``None`` (or a default) on a problem."""

    def __init__(self, numeric_strings: bool = True) -> None:
        self.problems: list[SpecProblem] = []
        #: a numeric string is a number (YAML: PyYAML reads ``1e-3`` as one; never in JSON)
        self.numeric_strings = numeric_strings

    def add(self, key: str, message: str) -> None:
        self.problems.append(SpecProblem(key, message))

    # -- structure --------------------------------------------------------------------------

    def mapping(self, value: Any, path: str) -> dict | None:
        if isinstance(value, Mapping):
            return dict(value)
        self.add(path, f"expected a mapping, got {describe(value)}")
        return None

    def unknown_keys(self, d: Mapping, allowed: tuple[str, ...], path: str) -> None:
        for key in d:
            if key not in allowed:
                hint = did_you_mean(str(key), allowed)
                if not hint:
                    hint = f" (expected one of: {', '.join(allowed)})"
                self.add(join(path, str(key)), f"unknown key{hint}")

    def kwargs(self, d: Mapping, path: str) -> dict:
        value = d.get("kwargs")
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.add(join(path, "kwargs"), f"expected a mapping, got {describe(value)}")
            return {}
        bad = [k for k in value if not isinstance(k, str)]
        for k in bad:
            self.add(join(path, "kwargs"), f"keyword names must be strings, got {describe(k)}")
        return dict(value)

    # -- scalars ----------------------------------------------------------------------------

    def string(self, value: Any, path: str, what: str = "a string") -> str | None:
        if isinstance(value, str) and value.strip():
            return value.strip()
        self.add(path, f"expected {what}, got {describe(value)}")
        return None

    def integer(
        self, value: Any, path: str, *, minimum: int | None = None, what: str | None = None
    ) -> int | None:
        """An int64 ≥ ``minimum`` (:func:`bscrit.boundary.integer_problem`)."""
        why = boundary.integer_problem(value, minimum=minimum, what=what)
        if why:
            self.add(path, why)
            return None
        return value

    def number(self, value: Any, path: str, **bounds: Any) -> float | None:
        """A finite number within ``bounds`` (:func:`bscrit.boundary.number_problem`'s: ``low``,
        ``high``, ``low_open``, ``high_open``, ``what``); a numeric string too when
        :attr:`numeric_strings` (PyYAML reads ``1e-3`` as a string)."""
        x, why = boundary.number_problem(value, strings=self.numeric_strings, **bounds)
        if why:
            self.add(path, why)
        return x

    def number_at(
        self, d: Mapping, key: str, path: str, *, nullable: bool = False, **bounds: Any
    ) -> None:
        """A finite number at ``d[key]`` (``None`` too when ``nullable``), within ``bounds``."""
        if key not in d:
            self.add(join(path, key), "missing required key")
        elif not (nullable and d[key] is None):
            self.number(d[key], join(path, key), **bounds)

    def numbers(self, value: Any, path: str, length: int | None, **bounds: Any) -> None:
        """A list of ``length`` finite numbers (``nullable=True``: entries may be None)."""
        nullable = bounds.pop("nullable", False)
        if not isinstance(value, list):
            self.add(path, f"expected a list of numbers, got {describe(value)}")
            return
        if length is not None and len(value) != length:
            self.add(path, f"expected {length} numbers, got {len(value)}")
            return
        for i, x in enumerate(value):
            if not (nullable and x is None):
                self.number(x, join(path, i), **bounds)

    def integer_at(self, d: Mapping, key: str, path: str, minimum: int | None) -> int | None:
        """An integer at ``d[key]`` (required), at least ``minimum``."""
        if key not in d:
            self.add(join(path, key), "missing required key")
            return None
        return self.integer(d[key], join(path, key), minimum=minimum)

    def choice_at(self, d: Mapping, key: str, path: str, choices: tuple[str, ...]) -> str | None:
        """One of ``choices`` at ``d[key]`` (required)."""
        if key not in d:
            self.add(join(path, key), "missing required key")
            return None
        return self.choice(d[key], join(path, key), choices)

    def mapping_at(self, d: Mapping, key: str, path: str) -> dict | None:
        """``d[key]`` as a mapping, or None with the problem recorded (missing, not a mapping)."""
        if key not in d:
            self.add(join(path, key), "missing required key")
            return None
        return self.mapping(d[key], join(path, key))

    def boolean(self, value: Any, path: str) -> bool | None:
        if isinstance(value, bool):
            return value
        self.add(path, f"expected true or false, got {describe(value)}")
        return None

    def choice(self, value: Any, path: str, choices: tuple[str, ...]) -> str | None:
        if not isinstance(value, str):
            self.add(path, f"expected one of {', '.join(choices)}, got {describe(value)}")
            return None
        v = value.strip().lower()
        if v not in choices:
            hint = did_you_mean(v, choices)
            self.add(path, f"unknown value {value!r}; expected one of {', '.join(choices)}{hint}")
            return None
        return v


def read_yaml(text: str, source: str, what: str = "spec (YAML)") -> tuple[Any, list[SpecProblem]]:
    """``yaml.safe_load(text)`` within bounds, and a problem for every key given twice.

    Bounded (:mod:`bscrit.boundary`): at most :data:`~bscrit.boundary.MAX_YAML_BYTES`, nesting
    :data:`~bscrit.boundary.MAX_DEPTH`, :data:`~bscrit.boundary.MAX_YAML_ALIASES` aliases and
    :data:`~bscrit.boundary.MAX_YAML_NODES` values once they are expanded, checked on the composed
    nodes before any object is built (a "billion laughs" document is refused at once).

    PyYAML keeps the last of duplicate keys silently (``batch_size: 32`` then ``batch_size: 64``
    reads as 64); each one is reported here with its key path and the lines it is on. Merge keys
    (``<<: *defaults``) may be overridden, as YAML intends.

    Raises:
        SpecError: a YAML syntax error (with its line and column), or a limit passed.
    """
    import yaml

    too_big = boundary.size_problem(len(text.encode("utf-8", "surrogatepass")),
                                    boundary.MAX_YAML_BYTES, what)  # fmt: skip
    if too_big:
        raise SpecError(source, [SpecProblem("", f"the file is {too_big}")])
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        refused = boundary.yaml_node_problem(node)
        if refused:
            raise SpecError(source, [SpecProblem("", f"refused: {refused}")])
        problems = _duplicate_keys(node)
        raw = loader.construct_document(node) if node is not None else None
    except RecursionError:
        msg = f"refused: nested deeper than {boundary.MAX_DEPTH} levels"
        raise SpecError(source, [SpecProblem("", msg)]) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        context = getattr(e, "context", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        msg = f"YAML syntax error at {where}: {what}" if where else f"YAML syntax error: {what}"
        if context:
            msg += f" ({context})"
        raise SpecError(source, [SpecProblem("", msg)]) from None
    except ValueError as e:  # an integer of more than 4,300 digits
        msg = f"refused: a value bscrit cannot read ({e})"
        raise SpecError(source, [SpecProblem("", msg)]) from None
    finally:
        loader.dispose()
    return raw, problems


def _duplicate_keys(root: Any) -> list[SpecProblem]:
    """Walk the composed YAML nodes: keys given more than once in a mapping, with their lines."""
    import yaml

    found: list[tuple[int, SpecProblem]] = []  # (first line, problem): reported in file order
    seen: set[int] = set()  # an anchor's node is reached again through each alias

    def visit(node: Any, path: str) -> None:
        if node is None or id(node) in seen:
            return
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                visit(item, join(path, i))
        elif isinstance(node, yaml.MappingNode):
            marks: dict[tuple[str, str], list[Any]] = {}
            for key, value in node.value:
                if key.tag == "tag:yaml.org,2002:merge" or not isinstance(key, yaml.ScalarNode):
                    visit(value, path)
                    continue
                marks.setdefault((key.tag, key.value), []).append(key.start_mark)
                visit(value, join(path, key.value))
            for (_, name), at in marks.items():
                if len(at) > 1:
                    found.append((at[0].line, SpecProblem(join(path, name), _twice(at))))

    visit(root, "")
    return [p for _, p in sorted(found, key=lambda x: x[0])]


def _twice(marks: list[Any]) -> str:
    """``duplicate key: given twice, on lines 9 and 16 ...`` (columns when on one line)."""
    lines = [m.line + 1 for m in marks]
    if len(set(lines)) == len(lines):
        places = [str(n) for n in lines]
        where = "lines " + ", ".join(places[:-1]) + f" and {places[-1]}"
    else:
        places = [f"{m.line + 1}:{m.column + 1}" for m in marks]
        where = "line:column " + ", ".join(places[:-1]) + f" and {places[-1]}"
    times = "twice" if len(marks) == 2 else f"{len(marks)} times"
    return f"duplicate key: given {times}, on {where} (YAML would keep only the last); keep one"


def check_batch_size(value: object, option: str = "batch_size") -> int:
    """``value`` as a batch size (an integer ≥ 1, within int64), or a :class:`UsageError` naming
    ``option``.

    The one check of a batch size given to the library (measure, check, scale, svag).
    """
    why = boundary.integer_problem(value, minimum=1, what="a positive integer (a batch size)")
    if why:
        raise UsageError(f"{{{option}}}: {why}", **{option: option})
    return value  # type: ignore[return-value]
