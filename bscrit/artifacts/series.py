"""``series.jsonl``, the lines the training callbacks append, read within bounds and checked before
any is used (pure: no torch).

One JSON object a line (:data:`bscrit.integrations.recorder.SERIES_KEYS`). :func:`read_lines`
reads the file within :data:`~bscrit.boundary.MAX_SERIES_BYTES`, parses each line with
:func:`bscrit.boundary.parse_json` (depth, finite numbers, int64) and checks every line's values
(:func:`line_problems`: types, ranges, and what its fields say of each other) and the lines'
order (:func:`order_problems`: steps strictly increasing, examples seen never decreasing), every
problem named by file, line and key, all at once. ``bscrit schedule``
(:func:`bscrit.artifacts.schedule_io.read_series`) and the recorder's
:func:`~bscrit.integrations.recorder.read_series` both read through it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from bscrit import boundary
from bscrit.artifacts.checks import REL_TOLERANCE, optimizer_problems
from bscrit.artifacts.files import read_text
from bscrit.artifacts.jsonvalues import none_to_inf
from bscrit.checker import Checker
from bscrit.errors import ArtifactError

_MAX_PROBLEMS = 10  # listed in one error; the rest are counted

#: Optional integer keys of a line (null: unknown), and optional numbers (null: unbounded or
#: undefined) with their lower bound.
_COUNTS = ("examples_seen", "tokens_seen")
_NUMBERS = {"G": None, "N": None, "nsr": 0.0, "b_star": 0.0, "seconds": 0.0,
            "equilibrium_residual": None}  # fmt: skip
_PAIRS = {"b_star_ci95": 0.0, "nsr_ci95": 0.0, "G_ci95": None, "N_ci95": None}


def _pair(c: Checker, value: Any, key: str, low: float | None) -> tuple[float, float] | None:
    """``[lo, hi]`` (numbers or null), in order; null reads as unbounded (−inf / +inf)."""
    if not (isinstance(value, list) and len(value) == 2):
        c.add(key, f"expected [low, high] (numbers or null), got {boundary.describe(value)}")
        return None
    n_before = len(c.problems)
    bounds: dict[str, Any] = {"what": "a number or null"}
    if low is not None:
        bounds |= {"low": low, "what": "a non-negative number or null"}
    for i, x in enumerate(value):
        if x is not None:
            c.number(x, f"{key}[{i}]", **bounds)
    if len(c.problems) > n_before:
        return None
    lo = -math.inf if value[0] is None and low is None else none_to_inf(value[0])
    hi = none_to_inf(value[1])
    if lo > hi:
        c.add(key, f"the lower end {value[0]} is above the upper end {value[1]}")
        return None
    return lo, hi


def _outside(x: float, lo: float, hi: float) -> bool:
    def off(a: float, b: float) -> bool:
        if math.isinf(a) or math.isinf(b):
            return a != b
        return abs(a - b) > REL_TOLERANCE * max(abs(a), abs(b), 1e-300)

    return (x < lo and off(x, lo)) or (x > hi and off(x, hi))


def line_problems(d: Any) -> list[str]:
    """Why one line is not a series record: ``"key 'step': expected ..."`` for each bad value,
    then what its fields say of each other (B* and NSR inside their intervals, NSR = N/G within
    rounding). Keys absent from the line are not required here (the callers say which are)."""
    if not isinstance(d, dict):
        return [f"expected a JSON object, got {type(d).__name__}"]
    c = Checker(numeric_strings=False)  # JSON: a number is a number
    if "step" in d:
        c.integer(d["step"], "step", minimum=0)
    if "batch_size" in d:
        c.integer(d["batch_size"], "batch_size", minimum=1)
    for key in _COUNTS:
        if d.get(key) is not None:
            c.integer(d[key], key, minimum=0)
    for key, low in _NUMBERS.items():
        if d.get(key) is not None:
            kw = {"what": "a number"} if low is None else {"low": low, "what": "a number ≥ 0"}
            c.number(d[key], key, **kw)
    pairs = {k: _pair(c, d[k], k, low) for k, low in _PAIRS.items() if k in d}
    optimizer_problems(c, d.get("optimizer"), "optimizer")  # free mode's record; null: unknown
    if not c.problems:
        _consistency(c, d, pairs)
    return [f"key '{p.key}': {p.message}" for p in c.problems]


def _consistency(c: Checker, d: dict, pairs: dict[str, tuple[float, float] | None]) -> None:
    for key in ("b_star", "nsr", "G", "N"):
        ci = pairs.get(f"{key}_ci95")
        if ci is None or key not in d:
            continue
        x = none_to_inf(d[key]) if key in ("b_star", "nsr") else d[key]
        if x is not None and _outside(x, *ci):
            shown = "null (unbounded)" if d[key] is None else d[key]
            c.add(f"{key}_ci95", f"{key} = {shown} is outside its own interval {d[key + '_ci95']}")
    g, n, nsr = d.get("G"), d.get("N"), d.get("nsr", 0)
    if g is None or n is None or "nsr" not in d:
        return
    if g <= 0 and nsr is not None:
        c.add("nsr", f"{nsr} with G = {g} ≤ 0: expected null (unbounded)")
    elif g > 0 and n > 0 and math.isfinite(n / g) and _outside(none_to_inf(nsr), n / g, n / g):
        c.add("nsr", f"{'null' if nsr is None else nsr} but N/G = {n / g:g}")


def order_problems(lines: list[tuple[str, dict]]) -> list[str]:
    """Lines out of order: a step repeated or decreasing, examples seen decreasing."""
    out = []
    prev: tuple[str, dict] | None = None
    for where, d in lines:
        if prev is not None:
            pw, p = prev
            if d["step"] <= p["step"]:
                how = "repeats" if d["step"] == p["step"] else "is before"
                out.append(
                    f"{where}: key 'step': {d['step']} {how} step {p['step']} of {pw} (one line "
                    "a measured step, in training order; a resumed run may have recorded a step "
                    "again: keep one)"
                )
            a, b = p.get("examples_seen"), d.get("examples_seen")
            if a is not None and b is not None and b < a:
                out.append(
                    f"{where}: key 'examples_seen': {b} is less than {a} of {pw} (examples seen "
                    "never decrease along a run)"
                )
        prev = (where, d)
    return out


def read_lines(
    path: str | os.PathLike[str], required: tuple[str, ...] = ()
) -> list[tuple[str, dict]]:
    """``(where, line)`` for each non-blank line (``where`` is ``file:line``), every line and
    their order checked first; ``required`` keys must be on every line.

    Raises:
        ArtifactError: unreadable, too large, a line that is not JSON, or any problem of
            :func:`line_problems` / :func:`order_problems` (all listed, naming file, line, key).
    """
    p = Path(path)
    text = read_text(p, "series.jsonl", boundary.MAX_SERIES_BYTES)
    lines: list[tuple[str, dict]] = []
    problems: list[str] = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{p}:{i}"
        d = boundary.parse_json(line, where, "series line")
        missing = [k for k in required if isinstance(d, dict) and k not in d]
        if missing:
            problems.append(f"{where}: missing key(s) {', '.join(missing)}")
        problems += [f"{where}: {x}" for x in line_problems(d)]
        if not problems and isinstance(d, dict):
            lines.append((where, d))
        if len(problems) >= _MAX_PROBLEMS:
            break
    if not problems:
        problems = order_problems([(w, d) for w, d in lines if "step" in d])
    if problems:
        if len(problems) == 1:
            raise ArtifactError(problems[0])
        listed = "\n".join(f"  - {x}" for x in problems[:_MAX_PROBLEMS])
        raise ArtifactError(f"{p}: {len(problems)} problems in its lines:\n{listed}")
    if not lines:
        raise ArtifactError(f"{p}: no series lines (expected one JSON object a line)")
    return lines
