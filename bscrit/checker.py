"""Collect every problem of a configuration with its key path, then raise once (pure).

The spec parser reads values through a :class:`Checker`: each getter checks one value, records a
:class:`~bscrit.errors.SpecProblem` ("optimizer.lr: expected a positive number, got -1") when it
is wrong and returns None, so that one :class:`~bscrit.errors.SpecError` can list them all.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from typing import Any

from .errors import SpecProblem, UsageError


def describe(value: Any) -> str:
    """``'abc' (str)``: the value and its type, for "expected X, got Y" messages."""
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


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

    def __init__(self) -> None:
        self.problems: list[SpecProblem] = []

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
        if what is None:
            what = {None: "an integer", 0: "a non-negative integer", 1: "a positive integer"}.get(
                minimum, f"an integer >= {minimum}"
            )
        if isinstance(value, bool) or not isinstance(value, int):
            self.add(path, f"expected {what}, got {describe(value)}")
            return None
        if minimum is not None and value < minimum:
            self.add(path, f"expected {what}, got {value}")
            return None
        return value

    def number(
        self,
        value: Any,
        path: str,
        *,
        low: float | None = None,
        high: float | None = None,
        low_open: bool = False,
        high_open: bool = True,
        what: str = "a number",
    ) -> float | None:
        x: float | None = None
        if isinstance(value, bool):
            x = None
        elif isinstance(value, (int, float)):
            x = float(value)
        elif isinstance(value, str):  # PyYAML reads 1e-3 as a string
            try:
                x = float(value)
            except ValueError:
                x = None
        if x is None or math.isnan(x):
            self.add(path, f"expected {what}, got {describe(value)}")
            return None
        if (
            (low is not None and (x < low or (low_open and x == low)))
            or (high is not None and (x > high or (high_open and x == high)))
            or math.isinf(x)
        ):
            self.add(path, f"expected {what}, got {value!r}")
            return None
        return x

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


def check_batch_size(value: object, option: str = "batch_size") -> int:
    """``value`` as a batch size (an integer ≥ 1), or a :class:`UsageError` naming ``option``.

    The one check of a batch size given to the library (measure, check, scale, svag).
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(
            f"{{{option}}}: expected a positive integer (a batch size), got {value!r}",
            **{option: option},
        )
    return value
