"""The boundary: every number bscrit is handed, from any source, checked before any work (pure).

Numbers reach bscrit from five sources: the spec (YAML), measurement and run artifacts (JSON),
``series.jsonl`` lines, the command line's options and the Python API's arguments. Each is checked
here, once, against the same rules before it reaches torch, a formula or ``json.dumps``:

- **type**: an integer is an ``int`` (never a ``bool``), a number an ``int`` or a ``float``;
- **range**: integers within int64 (what torch, numpy and every JSON reader bscrit writes for can
  hold), numbers finite (no NaN, no ±inf: JSON has neither) and within their own bounds
  (positive, a fraction, ...);
- **consistency** between fields is each reader's own (:mod:`bscrit.artifacts.checks` for a
  measurement, :mod:`bscrit.artifacts.series` for ``series.jsonl``, the spec's sections, the
  library's entry points), through the same :class:`~bscrit.checker.Checker` or
  :class:`Problems` and with the same messages.

Every problem names its source and key; all of them are reported at once (:class:`Problems`).

Parsing is bounded too (:func:`parse_json`, :func:`yaml_node_problem`): a file's size, its
nesting depth and, for YAML, its aliases and the size of the document they expand to, so a
"billion laughs" spec is refused in milliseconds instead of filling the memory.
"""

from __future__ import annotations

import json
import math
from typing import Any

from bscrit.errors import ArtifactError, UsageError

#: Integers: int64, what torch (seeds, sizes, steps) and numpy hold; Python's ints are unbounded.
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

# -- parsing limits ----------------------------------------------------------------------------
#: A YAML file (a spec, a schedule's stages): a spec is a few hundred bytes, a schedule YAML a
#: few KiB; 1 MiB leaves room for long kwargs lists (class weights) and keeps PyYAML (pure Python,
#: ~1 s a MiB) quick.
MAX_YAML_BYTES = 1 << 20
#: A JSON artifact (a measurement, a run's results): a measurement is ~10 KiB plus ~200 bytes a
#: tensor in ``per_parameter``; 64 MiB holds a model of 300,000 tensors.
MAX_JSON_BYTES = 64 << 20
#: A ``series.jsonl`` (one ~500-byte line a measured step): 64 MiB is ~10⁵ measured steps.
MAX_SERIES_BYTES = 64 << 20
#: Nesting of mappings and lists: bscrit writes at most 6 levels; specs' kwargs a few more.
MAX_DEPTH = 64
#: YAML aliases (``*name``) in one document: a spec uses a handful (``<<: *defaults``).
MAX_YAML_ALIASES = 100
#: Nodes of a YAML document once its aliases are expanded (what a reader that walks it visits):
#: a spec has ~50; billion laughs 10⁹.
MAX_YAML_NODES = 100_000


def short(value: Any) -> str:
    """``repr(value)``, cut to 60 characters (a 4,000-digit integer names itself briefly)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**40:
        digits = int(abs(value).bit_length() * math.log10(2)) + 1  # str() refuses 4,300+ digits
        return f"{'-' if value < 0 else ''}an integer of {digits} digits"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def describe(value: Any) -> str:
    """``'abc' (str)``: the value and its type, for "expected X, got Y" messages."""
    return f"{short(value)} ({type(value).__name__})"


def integer_problem(
    value: Any, *, minimum: int | None = None, maximum: int | None = None, what: str | None = None
) -> str | None:
    """Why ``value`` is not an integer in [``minimum``, ``maximum``] ∩ int64 (None: it is)."""
    lo = INT64_MIN if minimum is None else max(minimum, INT64_MIN)
    hi = INT64_MAX if maximum is None else min(maximum, INT64_MAX)
    if what is None:
        what = {None: "an integer", 0: "a non-negative integer", 1: "a positive integer"}.get(
            minimum, f"an integer >= {minimum}"
        )
    if isinstance(value, bool) or not isinstance(value, int):
        return f"expected {what}, got {describe(value)}"
    if value < lo:
        return f"expected {what}, got {short(value)}"
    if value > hi:
        limit = "int64, ≤ 2⁶³ − 1" if hi == INT64_MAX else f"≤ {hi:,}"
        return f"expected {what} ({limit}), got {short(value)}"
    return None


def as_float(value: Any, strings: bool = False) -> float | None:
    """``value`` as a float: an int or a float (``strings``: a numeric string too, PyYAML reads
    ``1e-3`` as one); None for anything else, a bool included. An int beyond the float range is
    ``±inf`` (so that it is refused as not finite, never an OverflowError)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        try:
            return float(value)
        except OverflowError:
            return math.inf if value > 0 else -math.inf
    if isinstance(value, float):
        return value
    if strings and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def number_problem(
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = True,
    what: str = "a number",
    strings: bool = False,
) -> tuple[float | None, str | None]:
    """``(x, None)``: ``value`` as a finite float within the bounds; ``(None, why)`` otherwise.

    ``low``/``high`` bound it (``low_open``/``high_open``: the bound itself is excluded).
    """
    x = as_float(value, strings)
    if x is None or math.isnan(x):
        return None, f"expected {what}, got {describe(value)}"
    if (
        math.isinf(x)
        or (low is not None and (x < low or (low_open and x == low)))
        or (high is not None and (x > high or (high_open and x == high)))
    ):
        return None, f"expected {what}, got {short(value)}"
    return x, None


class Problems:
    """Every problem of a set of arguments (the command line's options, the Python API's), each
    named by its key, raised at once as one :class:`~bscrit.errors.UsageError`.

    Keys are written as ``{key}`` placeholders: the message names ``lr`` to a library user and
    ``--lr`` on the command line (:meth:`~bscrit.errors.BscritError.for_cli`).
    """

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, key: str, message: str) -> None:
        self.items.append((key, message))

    def integer(
        self,
        key: str,
        value: Any,
        *,
        minimum: int | None = None,
        maximum: int | None = None,
        what: str | None = None,
    ) -> int | None:
        """``value`` (None: not given, no problem) as an int64 within the bounds."""
        if value is None:
            return None
        why = integer_problem(value, minimum=minimum, maximum=maximum, what=what)
        if why:
            self.add(key, why)
            return None
        return value

    def number(self, key: str, value: Any, **bounds: Any) -> float | None:
        """``value`` (None: not given, no problem) as a finite float within ``bounds``
        (:func:`number_problem`'s)."""
        if value is None:
            return None
        x, why = number_problem(value, **bounds)
        if why:
            self.add(key, why)
        return x

    def error(self, where: str = "") -> UsageError | None:
        """The one error listing every problem (None when there is none)."""
        if not self.items:
            return None
        keys = {k: k for k, _ in self.items if k.isidentifier()}
        lines = [f"{{{k}}}: {m}" if k in keys else (f"{k}: {m}" if k else m) for k, m in self.items]
        head = f"{where}: " if where else ""
        if len(lines) == 1:
            return UsageError(head + lines[0], **keys)
        listed = "\n".join(f"  - {line}" for line in lines)
        return UsageError(f"{head}{len(lines)} problems:\n{listed}", **keys)

    def raise_any(self, where: str = "") -> None:
        """Raise :meth:`error` when there is a problem."""
        e = self.error(where)
        if e is not None:
            raise e


# ----------------------------------------------------------------------------------------------
# Bounded parsing
# ----------------------------------------------------------------------------------------------


def size_problem(size: int, limit: int, what: str) -> str | None:
    """``"…is 80 MiB, more than the 64 MiB a measurement JSON may be"`` (None: within)."""
    if size <= limit:
        return None
    return f"{_bytes(size)}, more than the {_bytes(limit)} a {what} may be"


def _bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} bytes"


def _join(path: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def json_value_problems(value: Any, limit: int = 10) -> list[str]:
    """Values no JSON bscrit writes holds, with their key paths: nesting deeper than
    :data:`MAX_DEPTH`, NaN or ±inf (``NaN``, ``Infinity``, ``1e999``: bscrit writes ``null``),
    integers outside int64. At most ``limit`` (the walk stops there)."""
    out: list[str] = []
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    while stack and len(out) < limit:
        v, path, depth = stack.pop()
        where = path or "the top level"
        if isinstance(v, dict | list | tuple):
            if depth >= MAX_DEPTH:
                out.append(f"{where}: nested deeper than {MAX_DEPTH} levels")
                continue
            items = v.items() if isinstance(v, dict) else enumerate(v)
            stack.extend((x, _join(path, k), depth + 1) for k, x in reversed(list(items)))
        elif isinstance(v, float) and not math.isfinite(v):
            out.append(f"{where}: {v!r} is not a JSON number (bscrit writes null for unbounded)")
        elif isinstance(v, int) and not isinstance(v, bool) and not INT64_MIN <= v <= INT64_MAX:
            out.append(f"{where}: {short(v)} is outside int64")
    return out


def parse_json(text: str, source: str, what: str = "JSON file", malformed: str = "") -> Any:
    """``json.loads(text)`` within the limits: size (:data:`MAX_JSON_BYTES`), depth
    (:data:`MAX_DEPTH`), finite numbers and int64 integers (:func:`json_value_problems`; those
    problems are said "malformed ``malformed``" when it is given: "measurement artifact").

    Raises:
        ArtifactError: naming ``source`` and, for a bad value, its key path.
    """
    why = size_problem(len(text.encode("utf-8", "surrogatepass")), MAX_JSON_BYTES, what)
    if why:
        raise ArtifactError(f"{source}: {why}")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ArtifactError(
            f"{source}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})"
        ) from None
    except RecursionError:
        raise ArtifactError(f"{source}: nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as e:  # an integer of more than 4,300 digits
        raise ArtifactError(f"{source}: not a number bscrit reads ({e})") from None
    problems = json_value_problems(value)
    if problems:
        head = f"{source}: malformed {malformed}" if malformed else f"{source}"
        if len(problems) == 1:
            raise ArtifactError(f"{head}: {problems[0]}")
        listed = "\n".join(f"  - {p}" for p in problems)
        raise ArtifactError(f"{head}, {len(problems)} problems:\n{listed}")
    return value


def yaml_node_problem(root: Any) -> str | None:
    """Why a composed YAML document (PyYAML nodes) is refused before it is constructed: more than
    :data:`MAX_YAML_ALIASES` aliases, more than :data:`MAX_YAML_NODES` nodes once the aliases
    are expanded, nesting deeper than :data:`MAX_DEPTH`, or an alias inside itself (None: fine).

    The expanded size is counted per distinct node (memoised), so this takes time in the
    document's size, not in its expansion.
    """
    expanded: dict[int, int] = {}  # node id -> nodes once expanded
    refs: dict[int, int] = {}  # node id -> times it is reached (more than once: an alias)
    active: set[int] = set()
    depth_of: dict[int, int] = {}  # node id -> depth of its subtree

    def children(node: Any) -> list[Any]:
        v = node.value
        if not isinstance(v, list):
            return []
        return [x for pair in v for x in (pair if isinstance(pair, tuple) else (pair,))]

    # iterative post-order walk: (node, children visited?)
    stack: list[tuple[Any, bool]] = [(root, False)] if root is not None else []
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            kids = children(node)
            expanded[key] = min(1 + sum(expanded[id(k)] for k in kids), MAX_YAML_NODES + 1)
            depth_of[key] = 1 + max((depth_of[id(k)] for k in kids), default=0)
            active.discard(key)
            if depth_of[key] > MAX_DEPTH:
                return f"nested deeper than {MAX_DEPTH} levels"
            continue
        refs[key] = refs.get(key, 0) + 1
        if key in active:
            return "an alias refers to the node that holds it (a recursive document)"
        if key in expanded:
            continue
        active.add(key)
        stack.append((node, True))
        stack.extend((k, False) for k in children(node))
    aliases = sum(n - 1 for n in refs.values())
    if aliases > MAX_YAML_ALIASES:
        return f"{aliases} aliases, more than the {MAX_YAML_ALIASES} a bscrit YAML file may use"
    total = expanded.get(id(root), 0)
    if total > MAX_YAML_NODES:
        return (
            f"more than {MAX_YAML_NODES:,} values once its aliases are expanded (a 'billion "
            "laughs' document?)"
        )
    return None
