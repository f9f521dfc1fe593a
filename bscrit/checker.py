"""Collect every problem of a configuration with its key path, then raise once (pure).

The spec parser reads values through a :class:`Checker`: each getter checks one value, records a
:class:`~bscrit.errors.SpecProblem` ("optimizer.lr: expected a positive number, got -1") when it
is wrong and returns None, so that one :class:`~bscrit.errors.SpecError` can list them all.
:func:`measurement_problems` does the same for a measurement artifact read back from JSON.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from typing import Any

from bscrit.errors import SpecError, SpecProblem, UsageError
from bscrit.optim import registry as optim


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


def read_yaml(text: str, source: str) -> tuple[Any, list[SpecProblem]]:
    """``yaml.safe_load(text)``, and a problem for every key given twice in one mapping.

    PyYAML keeps the last of duplicate keys silently (``batch_size: 32`` then ``batch_size: 64``
    reads as 64); each one is reported here with its key path and the lines it is on. Merge keys
    (``<<: *defaults``) may be overridden, as YAML intends.

    Raises:
        SpecError: a YAML syntax error, with its line and column.
    """
    import yaml

    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        problems = _duplicate_keys(node)
        raw = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        context = getattr(e, "context", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        msg = f"YAML syntax error at {where}: {what}" if where else f"YAML syntax error: {what}"
        if context:
            msg += f" ({context})"
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
    """``value`` as a batch size (an integer ≥ 1), or a :class:`UsageError` naming ``option``.

    The one check of a batch size given to the library (measure, check, scale, svag).
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(
            f"{{{option}}}: expected a positive integer (a batch size), got {value!r}",
            **{option: option},
        )
    return value


# ----------------------------------------------------------------------------------------------
# Measurement artifacts: every value a reader divides by, takes a root of or counts with
# ----------------------------------------------------------------------------------------------

_MAX_PROBLEMS = 10  # listed in one error; the rest are counted


def _number(c: Checker, d: dict, key: str, path: str, *, nullable: bool = False, **kw: Any) -> None:
    """A finite number at ``d[key]`` (``None`` too when ``nullable``), in the range of ``kw``."""
    if key not in d:
        c.add(join(path, key), "missing required key")
    elif not (nullable and d[key] is None):
        c.number(d[key], join(path, key), **kw)


def _numbers(c: Checker, value: Any, path: str, length: int | None, **kw: Any) -> None:
    """A list of ``length`` finite numbers (``nullable`` entries may be None)."""
    nullable = kw.pop("nullable", False)
    if not isinstance(value, list):
        c.add(path, f"expected a list of numbers, got {describe(value)}")
        return
    if length is not None and len(value) != length:
        c.add(path, f"expected {length} numbers, got {len(value)}")
        return
    for i, x in enumerate(value):
        if not (nullable and x is None):
            c.number(x, join(path, i), **kw)


def _integer(c: Checker, d: dict, key: str, path: str, minimum: int | None) -> int | None:
    if key not in d:
        c.add(join(path, key), "missing required key")
        return None
    return c.integer(d[key], join(path, key), minimum=minimum)


def _param_set_problems(c: Checker, value: Any, path: str, groups: int | None) -> None:
    """One parameter set's G, N, NSR, intervals, R, counts and jackknife lists."""
    d = c.mapping(value, path)
    if d is None:
        return
    nonneg = {"low": 0.0, "what": "a non-negative number"}
    for key in ("G", "N"):
        _number(c, d, key, path, what="a finite number")
        _number(c, d, f"{key}_se", path, **nonneg)
        ci_path = join(path, f"{key}_ci95")
        if f"{key}_ci95" not in d:
            c.add(ci_path, "missing required key")
        else:
            n_before = len(c.problems)
            ci = d[f"{key}_ci95"]
            _numbers(c, ci, ci_path, 2, what="a finite number")
            if len(c.problems) == n_before and float(ci[0]) > float(ci[1]):
                c.add(ci_path, f"the lower end {ci[0]} is above the upper end {ci[1]}")
    _number(c, d, "nsr", path, nullable=True, **nonneg)
    if "nsr_ci95" not in d:
        c.add(join(path, "nsr_ci95"), "missing required key")
    else:
        _numbers(c, d["nsr_ci95"], join(path, "nsr_ci95"), 2, nullable=True, **nonneg)
    _number(c, d, "R", path, **nonneg)
    _integer(c, d, "num_params", path, 1)
    _integer(c, d, "num_tensors", path, 1)
    _integer(c, d, "k", path, 2)
    jk_path = join(path, "jackknife")
    jk = _required_mapping(c, d, "jackknife", path)
    if jk is None:
        return
    for key in ("G", "N"):
        if key not in jk:
            c.add(join(jk_path, key), "missing required key")
        else:
            # one leave-one-group-out value per group
            _numbers(c, jk[key], join(jk_path, key), groups, what="a finite number")


def _required_mapping(c: Checker, d: dict, key: str, path: str) -> dict | None:
    """``d[key]`` as a mapping, or None with the problem recorded (missing, or not a mapping)."""
    if key not in d:
        c.add(join(path, key), "missing required key")
        return None
    return c.mapping(d[key], join(path, key))


def _stats_problems(c: Checker, d: dict, path: str, groups: int | None) -> None:
    """``stats.all`` (required) and ``stats.scale_invariant`` (null when there is none)."""
    st_path = join(path, "stats")
    st = _required_mapping(c, d, "stats", path)
    if st is None:
        return
    if st.get("all") is None:
        c.add(join(st_path, "all"), "missing required key")
    else:
        _param_set_problems(c, st["all"], join(st_path, "all"), groups)
    if st.get("scale_invariant") is not None:
        _param_set_problems(c, st["scale_invariant"], join(st_path, "scale_invariant"), groups)
    if st.get("preconditioned") is not None:  # added in 0.2 (optional under schema 1)
        _param_set_problems(c, st["preconditioned"], join(st_path, "preconditioned"), groups)


def _equilibrium_problems(c: Checker, value: Any, path: str) -> None:
    if value is None:
        return
    d = c.mapping(value, path)
    if d is None:
        return
    for key in ("lr", "weight_decay", "R", "G", "N", "lhs", "rhs", "residual"):
        _number(c, d, key, path, what="a finite number")


def _optimizer_problems(c: Checker, value: Any, path: str) -> None:
    if value is None:
        return
    d = c.mapping(value, path)
    if d is None:
        return
    if "name" not in d:
        c.add(join(path, "name"), "missing required key")
    else:
        c.choice(d["name"], join(path, "name"), optim.NAMES)
    # lr 0 is a real state (the end of a cosine schedule): scaling it is refused later
    _number(c, d, "lr", path, low=0.0, what="a non-negative number")
    if d.get("lr_current") is not None:
        c.number(d["lr_current"], join(path, "lr_current"), low=0.0, what="a non-negative number")
    for key in ("momentum", "weight_decay", "eps", "alpha", "nesterov", *optim.HYPERPARAMETERS):
        if key != "lr" and d.get(key) is not None:
            why = optim.check_value(key, d[key])
            if why:
                c.add(join(path, key), why)
    groups = d.get("groups")
    if groups is not None and not isinstance(groups, list):
        c.add(join(path, "groups"), f"expected a list of param groups, got {describe(groups)}")
    for i, g in enumerate(groups if isinstance(groups, list) else []):
        g = c.mapping(g, join(join(path, "groups"), i))
        values = g.get("values") if g is not None else None
        if g is not None and not isinstance(values, dict):
            c.add(join(join(path, "groups"), i), "expected its values (a mapping)")
        for key, x in (values or {}).items():
            why = optim.check_value(key, x) if key in optim.HYPERPARAMETERS else None
            if why and not (key == "lr" and x == 0):
                c.add(join(join(join(path, "groups"), i), "values"), f"{key}: {why}")
    betas = d.get("betas")
    if betas is not None:
        if not isinstance(betas, list) or len(betas) != 2:
            c.add(
                join(path, "betas"), f"expected two numbers [beta1, beta2], got {describe(betas)}"
            )
        else:
            for i, key in enumerate(("beta1", "beta2")):
                why = optim.check_value(key, betas[i])
                if why:
                    c.add(join(join(path, "betas"), i), why)


def measurement_problems(d: dict[str, Any]) -> list[SpecProblem]:
    """Every missing, mistyped or impossible value of a measurement artifact, with its key path.

    The values that later code divides by, takes roots of or counts with are checked against what
    ``bscrit measure`` can write: B ≥ 1, n ≥ B, m ≥ 2 groups, k ≥ 2m batches, one jackknife
    value per group, finite G and N (NSR and interval ends may be null: unbounded), and so on.
    """
    c = Checker()
    batch_size = _integer(c, d, "batch_size", "", 1)
    dataset_size = _integer(c, d, "dataset_size", "", 1)
    if batch_size is not None and dataset_size is not None and dataset_size < batch_size:
        c.add(
            "dataset_size",
            f"{dataset_size} is smaller than batch_size = {batch_size} (a batch holds "
            "batch_size distinct examples)",
        )
    groups = _integer(c, d, "groups", "", 2)
    num_batches = _integer(c, d, "num_batches", "", 2)
    if groups is not None and num_batches is not None and num_batches < 2 * groups:
        c.add("num_batches", f"expected at least 2 * groups = {2 * groups}, got {num_batches}")
    _integer(c, d, "seed", "", None)
    for key in ("device", "mode"):
        if key not in d:
            c.add(key, "missing required key")
        elif not isinstance(d[key], str):
            c.add(key, f"expected a string, got {describe(d[key])}")
    if d.get("estimator") is not None:
        c.choice(d["estimator"], "estimator", ("batch", "per-example"))
    _number(c, d, "elapsed_s", "", low=0.0, what="a non-negative number")
    _number(
        c, d, "scale_invariant_fraction", "", low=0.0, high=1.0, high_open=False,
        what="a fraction in [0, 1]",
    )  # fmt: skip
    _stats_problems(c, d, "", groups)
    _equilibrium_problems(c, d.get("equilibrium"), "equilibrium")
    _optimizer_problems(c, d.get("optimizer"), "optimizer")
    ckpts = d.get("checkpoints")
    if not isinstance(ckpts, list) or not ckpts:
        c.add("checkpoints", f"expected a non-empty list, got {describe(ckpts)}")
    else:
        for i, ck in enumerate(ckpts):
            path = join("checkpoints", i)
            ckd = c.mapping(ck, path)
            if ckd is None:
                continue
            if not isinstance(ckd.get("path"), str):
                c.add(join(path, "path"), f"expected a string, got {describe(ckd.get('path'))}")
            if ckd.get("elapsed_s") is not None:
                c.number(ckd["elapsed_s"], join(path, "elapsed_s"), low=0.0)
            for key in ("step", "examples_seen", "tokens_seen"):  # optional; null: unknown
                if ckd.get(key) is not None:
                    c.integer(ckd[key], join(path, key), minimum=0)
            _stats_problems(c, ckd, path, groups)
            _equilibrium_problems(c, ckd.get("equilibrium"), join(path, "equilibrium"))
    rows = d.get("per_parameter")
    if not isinstance(rows, list):
        c.add("per_parameter", f"expected a list, got {describe(rows)}")
    else:
        for i, row in enumerate(rows):
            path = join("per_parameter", i)
            r = c.mapping(row, path)
            if r is None:
                continue
            if "name" not in r:
                c.add(join(path, "name"), "missing required key")
            shape = r.get("shape")
            if not isinstance(shape, list):
                c.add(join(path, "shape"), f"expected a list of sizes, got {describe(shape)}")
            else:
                for j, s in enumerate(shape):
                    c.integer(s, join(join(path, "shape"), j), minimum=0)
            _integer(c, r, "numel", path, 0)
            for key in ("G", "N", "R"):
                _number(c, r, key, path, what="a finite number")
            if r.get("invariance_ratio") is not None:  # optional; null: not measured
                c.number(r["invariance_ratio"], join(path, "invariance_ratio"))
    problems = c.problems
    if len(problems) > _MAX_PROBLEMS:
        more = len(problems) - _MAX_PROBLEMS
        problems = problems[:_MAX_PROBLEMS] + [SpecProblem("", f"... and {more} more")]
    return problems
