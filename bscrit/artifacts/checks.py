"""Every missing, mistyped, impossible or inconsistent value of a measurement artifact, with its
key path (pure: no torch).

:func:`measurement_problems` reads a measurement's JSON through a :class:`~bscrit.checker.Checker`
(types and ranges: :mod:`bscrit.boundary`) and checks what its fields say of each other: an
interval's ends in order and around its point, NSR = N/G within rounding, a jackknife value per
group, n ≥ B, k ≥ 2m. ``Measurement.save`` runs the same checks before it writes, so the API
never writes a file its own reader refuses.
"""

from __future__ import annotations

import math
from typing import Any

from bscrit.artifacts.jsonvalues import none_to_inf
from bscrit.checker import Checker, describe, join
from bscrit.errors import SpecProblem
from bscrit.optim import registry as optim

# ----------------------------------------------------------------------------------------------
# Measurement artifacts: every value a reader divides by, takes a root of or counts with
# ----------------------------------------------------------------------------------------------

_MAX_PROBLEMS = 10  # listed in one error; the rest are counted
#: "Beyond rounding": a stored value may differ from what its other fields give by this much,
#: relative (bscrit writes every float exactly; a hand-edited file may round to 6 digits).
REL_TOLERANCE = 1e-6


def _param_set_problems(c: Checker, value: Any, path: str, groups: int | None) -> None:
    """One parameter set's G, N, NSR, intervals, R, counts and jackknife lists, and what they say
    of each other (:func:`_param_set_consistency`)."""
    d = c.mapping(value, path)
    if d is None:
        return
    n_before = len(c.problems)
    _param_set_values(c, d, path, groups)
    if len(c.problems) == n_before:
        _param_set_consistency(c, d, path)


def _param_set_values(c: Checker, d: dict, path: str, groups: int | None) -> None:
    nonneg = {"low": 0.0, "what": "a non-negative number"}
    for key in ("G", "N"):
        c.number_at(d, key, path, what="a finite number")
        c.number_at(d, f"{key}_se", path, **nonneg)
        ci_path = join(path, f"{key}_ci95")
        if f"{key}_ci95" not in d:
            c.add(ci_path, "missing required key")
        else:
            c.numbers(d[f"{key}_ci95"], ci_path, 2, what="a finite number")
    c.number_at(d, "nsr", path, nullable=True, **nonneg)
    if "nsr_ci95" not in d:
        c.add(join(path, "nsr_ci95"), "missing required key")
    else:
        c.numbers(d["nsr_ci95"], join(path, "nsr_ci95"), 2, nullable=True, **nonneg)
    c.number_at(d, "R", path, **nonneg)
    c.integer_at(d, "num_params", path, 1)
    c.integer_at(d, "num_tensors", path, 1)
    c.integer_at(d, "k", path, 2)
    jk_path = join(path, "jackknife")
    jk = c.mapping_at(d, "jackknife", path)
    if jk is None:
        return
    for key in ("G", "N"):
        if key not in jk:
            c.add(join(jk_path, key), "missing required key")
        else:
            # one leave-one-group-out value per group
            c.numbers(jk[key], join(jk_path, key), groups, what="a finite number")


def _off(x: float, ref: float) -> bool:
    """``x`` differs from ``ref`` beyond rounding (:data:`REL_TOLERANCE`; inf equals inf)."""
    if math.isinf(x) or math.isinf(ref):
        return x != ref
    return abs(x - ref) > REL_TOLERANCE * max(abs(x), abs(ref), 1e-300)


def _interval_problem(x: float, lo: float, hi: float, what: str) -> str | None:
    """Why ``[lo, hi]`` is not an interval around ``x`` (None: it is, within rounding)."""
    if lo > hi and _off(lo, hi):
        return f"the lower end {lo:g} is above the upper end {hi:g}"
    if (x < lo and _off(x, lo)) or (x > hi and _off(x, hi)):
        return f"{what} = {x:g} is outside its own interval [{lo:g}, {hi:g}]"
    return None


def _param_set_consistency(c: Checker, d: dict, path: str) -> None:
    """What one set's fields say of each other: each interval in order and around its point, and
    NSR = N/G (null when G ≤ 0: unbounded) within rounding."""
    g, n = float(d["G"]), float(d["N"])
    for key, x in (("G", g), ("N", n)):
        lo, hi = (float(v) for v in d[f"{key}_ci95"])
        why = _interval_problem(x, lo, hi, key)
        if why:
            c.add(join(path, f"{key}_ci95"), why)
    nsr = none_to_inf(d["nsr"])
    lo, hi = (none_to_inf(v) for v in d["nsr_ci95"])
    why = _interval_problem(nsr, lo, hi, "nsr")
    if why:
        c.add(join(path, "nsr_ci95"), why)
    if g <= 0 and math.isfinite(nsr):
        c.add(join(path, "nsr"), f"{nsr:g} with G = {g:g} ≤ 0: expected null (unbounded)")
    elif g > 0 and n > 0 and math.isfinite(n / g) and _off(nsr, n / g):
        shown = "null (unbounded)" if d["nsr"] is None else d["nsr"]
        c.add(join(path, "nsr"), f"{shown} but N/G = {n:g}/{g:g} = {n / g:g}")


def _stats_problems(c: Checker, d: dict, path: str, groups: int | None) -> None:
    """``stats.all`` (required) and ``stats.scale_invariant`` (null when there is none)."""
    st_path = join(path, "stats")
    st = c.mapping_at(d, "stats", path)
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
        c.number_at(d, key, path, what="a finite number")


def optimizer_problems(c: Checker, value: Any, path: str) -> None:
    if value is None:
        return
    d = c.mapping(value, path)
    if d is None:
        return
    c.choice_at(d, "name", path, optim.NAMES)
    # lr 0 is a real state (the end of a cosine schedule): scaling it is refused later
    c.number_at(d, "lr", path, low=0.0, what="a non-negative number")
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


def _checkpoints_problems(c: Checker, ckpts: Any, groups: int | None) -> None:
    """Each checkpoint's path, step and examples seen (int64, optional), and its stats."""
    if not isinstance(ckpts, list) or not ckpts:
        c.add("checkpoints", f"expected a non-empty list, got {describe(ckpts)}")
        return
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


def _per_parameter_problems(c: Checker, rows: Any) -> None:
    """Each per-tensor row: name, shape, numel, G, N, R (finite), invariance ratio (optional)."""
    if not isinstance(rows, list):
        c.add("per_parameter", f"expected a list, got {describe(rows)}")
        return
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
            for j, size in enumerate(shape):
                c.integer(size, join(join(path, "shape"), j), minimum=0)
        c.integer_at(r, "numel", path, 0)
        for key in ("G", "N", "R"):
            c.number_at(r, key, path, what="a finite number")
        if r.get("invariance_ratio") is not None:  # optional; null: not measured
            c.number(r["invariance_ratio"], join(path, "invariance_ratio"))


_SCOPES = ("checkpoint", "checkpoints", "equilibrium")


def _equilibrium_interval_problems(c: Checker, value: Any, path: str) -> None:
    """``equilibrium_interval`` (optional): its scope, counts, τ, steps and each set's G, N and
    NSR with their intervals (null ends: unbounded)."""
    if value is None:
        return
    d = c.mapping(value, path)
    if d is None:
        return
    c.choice_at(d, "scope", path, _SCOPES)
    points = c.integer_at(d, "checkpoints", path, 1)
    draws = c.integer_at(d, "draws", path, 1)
    if points is not None and draws is not None and draws > points:
        c.add(join(path, "draws"), f"{draws} draws from {points} checkpoints")
    if d.get("relaxation_steps") is not None:
        c.number(d["relaxation_steps"], join(path, "relaxation_steps"), low=0.0, low_open=True,
                 what="a positive number")  # fmt: skip
    steps = d.get("steps", [])
    if not isinstance(steps, list):
        c.add(join(path, "steps"), f"expected a list of steps, got {describe(steps)}")
    else:
        for i, st in enumerate(steps):
            if st is not None:
                c.integer(st, join(join(path, "steps"), i), minimum=0)
    sets = c.mapping_at(d, "sets", path)
    for name, st in (sets or {}).items():
        sp = join(join(path, "sets"), str(name))
        sd = c.mapping(st, sp)
        if sd is None:
            continue
        for key in ("G", "N"):
            e = c.mapping_at(sd, key, sp)
            if e is not None:
                c.number_at(e, "value", join(sp, key), what="a finite number")
                c.number_at(e, "se", join(sp, key), nullable=True, low=0.0,
                        what="a non-negative number")  # fmt: skip
                if "ci95" not in e:
                    c.add(join(join(sp, key), "ci95"), "missing required key")
                else:
                    c.numbers(e["ci95"], join(join(sp, key), "ci95"), 2, nullable=True)
        c.number_at(sd, "nsr", sp, nullable=True, low=0.0, what="a non-negative number")
        if "nsr_ci95" not in sd:
            c.add(join(sp, "nsr_ci95"), "missing required key")
        else:
            c.numbers(sd["nsr_ci95"], join(sp, "nsr_ci95"), 2, nullable=True, low=0.0,
                     what="a non-negative number")  # fmt: skip
        if sd.get("spread") is not None:
            c.number(sd["spread"], join(sp, "spread"))


def measurement_problems(d: dict[str, Any]) -> list[SpecProblem]:
    """Every missing, mistyped or impossible value of a measurement artifact, with its key path.

    The values that later code divides by, takes roots of or counts with are checked against what
    ``bscrit measure`` can write: B ≥ 1, n ≥ B, m ≥ 2 groups, k ≥ 2m batches, one jackknife
    value per group, finite G and N (NSR and interval ends may be null: unbounded), and so on.
    """
    c = Checker(numeric_strings=False)  # JSON: a number is a number
    batch_size = c.integer_at(d, "batch_size", "", 1)
    dataset_size = c.integer_at(d, "dataset_size", "", 1)
    if batch_size is not None and dataset_size is not None and dataset_size < batch_size:
        c.add(
            "dataset_size",
            f"{dataset_size} is smaller than batch_size = {batch_size} (a batch holds "
            "batch_size distinct examples)",
        )
    groups = c.integer_at(d, "groups", "", 2)
    num_batches = c.integer_at(d, "num_batches", "", 2)
    if groups is not None and num_batches is not None and num_batches < 2 * groups:
        c.add("num_batches", f"expected at least 2 * groups = {2 * groups}, got {num_batches}")
    c.integer_at(d, "seed", "", None)
    micro = d.get("micro_batch_size")  # optional; null: each batch in one pass
    if micro is not None and c.integer(micro, "micro_batch_size", minimum=1) is not None:
        if batch_size is not None and batch_size % micro:
            c.add("micro_batch_size", f"{micro} does not divide batch_size = {batch_size}")
    warnings = d.get("warnings")
    if warnings is not None and not (
        isinstance(warnings, list) and all(isinstance(w, str) for w in warnings)
    ):
        c.add("warnings", f"expected a list of strings, got {describe(warnings)}")
    if d.get("extra") is not None:
        c.mapping(d["extra"], "extra")
    for key in ("device", "mode"):
        if key not in d:
            c.add(key, "missing required key")
        elif not isinstance(d[key], str):
            c.add(key, f"expected a string, got {describe(d[key])}")
    if d.get("estimator") is not None:
        c.choice(d["estimator"], "estimator", ("batch", "per-example"))
    c.number_at(d, "elapsed_s", "", low=0.0, what="a non-negative number")
    c.number_at(d, "scale_invariant_fraction", "", low=0.0, high=1.0, high_open=False,
        what="a fraction in [0, 1]",
    )  # fmt: skip
    _stats_problems(c, d, "", groups)
    _equilibrium_problems(c, d.get("equilibrium"), "equilibrium")
    optimizer_problems(c, d.get("optimizer"), "optimizer")
    _checkpoints_problems(c, d.get("checkpoints"), groups)
    _per_parameter_problems(c, d.get("per_parameter"))
    _equilibrium_interval_problems(c, d.get("equilibrium_interval"), "equilibrium_interval")
    problems = c.problems
    if len(problems) > _MAX_PROBLEMS:
        more = len(problems) - _MAX_PROBLEMS
        problems = problems[:_MAX_PROBLEMS] + [SpecProblem("", f"... and {more} more")]
    return problems
