"""``bscrit schedule``'s inputs and other outputs: measurement files or a ``series.jsonl`` in,
Megatron-LM's ``--step-batch-size-schedule`` string and the stage YAML out (pure: no torch).

``series.jsonl`` is what the training callbacks append, one JSON object a line: ``{"step",
"examples_seen", "G", "N", "nsr", "b_star", "b_star_ci95", ..., "batch_size"}``. A line is read
through its measurement JSON when there is one (a ``"measurement"`` key naming it relative to the
series, or ``step-NNNNNNN.json`` beside the series, as the callbacks write it): then its numbers
are exactly ``bscrit predict``'s and the stages get scaled hyperparameters. Otherwise the line's
own B* and interval are used (no optimizer known: stages without hyperparameters).

Megatron-LM (PR 4411) takes ``--step-batch-size-schedule "0:768 250B:1536 ..."``: entries
``THRESHOLD:GLOBAL_BATCH``, the first threshold 0, suffixes K/M/B/T = 10³/10⁶/10⁹/10¹²;
thresholds are consumed samples, or tokens when ``--seq-length`` is set (tokens ÷ sequence
length = samples). We write a suffix only where it divides exactly.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from bscrit.artifacts.jsonvalues import none_to_inf
from bscrit.artifacts.measurement import check_schema, load_measurement
from bscrit.errors import ArtifactError, UsageError
from bscrit.theory.formulas import DEFAULT_C2
from bscrit.theory.schedule import (
    KIND_SCHEDULE,
    Schedule,
    SchedulePoint,
    Stage,
    heuristic_reasons,
    point_from_measurement,
)

#: ``series.jsonl`` keys a line must have (the callbacks' series, docs/schedule.md).
SERIES_KEYS = ("step", "b_star", "b_star_ci95", "batch_size")

#: Format number of the ``--out`` YAML (:func:`schedule_yaml_dict`), its own: independent of the
#: measurement artifact's (:data:`bscrit.artifacts.measurement.SCHEMA`) and of ``schedule
#: --json``'s (:data:`bscrit.theory.schedule.SCHEMA`), so bumping either does not re-version the
#: files training loops read. The rule is the measurement's (additive changes keep the number;
#: any other bumps it with an entry in ``_YAML_UPGRADES``).
#: 1 (0.3): kind, schema, clock, base_batch_size, optimizer, c2, stages (start_examples,
#: start_step, batch_size, hyperparameters).
SCHEDULE_YAML_SCHEMA = 1
#: ``_YAML_UPGRADES[v]`` rewrites a schema-v schedule YAML as schema v + 1 (none yet).
_YAML_UPGRADES: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}


def _series_point(d: Any, where: str, folder: Path, c2: float) -> SchedulePoint:
    """One ``series.jsonl`` line: its measurement JSON when there is one (``"measurement"``, or
    ``step-NNNNNNN.json`` beside the series), else the line's own numbers."""
    if not isinstance(d, dict):
        raise ArtifactError(f"{where}: expected a JSON object, got {type(d).__name__}")
    step = d.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ArtifactError(f"{where}: key 'step': expected an integer ≥ 0, got {step!r}")
    ex = d.get("examples_seen")
    if ex is not None and (isinstance(ex, bool) or not isinstance(ex, int) or ex < 0):
        raise ArtifactError(f"{where}: key 'examples_seen': expected an integer ≥ 0 or null")
    named = d.get("measurement")
    mpath = folder / named if isinstance(named, str) else folder / f"step-{step:07d}.json"
    if mpath.is_file():
        pt = point_from_measurement(str(mpath), load_measurement(mpath), c2)
        return replace(pt, step=step, examples_seen=ex if ex is not None else pt.examples_seen)
    missing = [k for k in SERIES_KEYS if k not in d]
    if missing:
        raise ArtifactError(
            f"{where}: missing key(s) {', '.join(missing)} (expected a line of the callbacks' "
            "series.jsonl)"
        )
    b = d["batch_size"]
    ci = d["b_star_ci95"]
    if isinstance(b, bool) or not isinstance(b, int) or b < 1:
        raise ArtifactError(f"{where}: key 'batch_size': expected an integer ≥ 1, got {b!r}")
    if not (isinstance(ci, list) and len(ci) == 2 and all(_num_or_null(x) for x in ci)):
        raise ArtifactError(f"{where}: key 'b_star_ci95': expected [low, high] (numbers or null)")
    if not _num_or_null(d["b_star"]):
        raise ArtifactError(f"{where}: key 'b_star': expected a number or null")
    lo = none_to_inf(ci[0])
    nsr_ci = d.get("nsr_ci95") if isinstance(d.get("nsr_ci95"), list) else [None, None]
    rho = d.get("equilibrium_residual")
    rho = float(rho) if _num_or_null(rho) and rho is not None else None
    reasons = heuristic_reasons(step, rho, None)
    return SchedulePoint(
        source=where,
        step=step,
        examples_seen=ex if ex is not None else step * b,
        tokens_seen=d.get("tokens_seen") if isinstance(d.get("tokens_seen"), int) else None,
        batch_size=b,
        dataset_size=0,
        nsr=none_to_inf(d.get("nsr")),
        nsr_ci95=tuple(none_to_inf(x) for x in nsr_ci[:2]),  # type: ignore[arg-type]
        b_star=none_to_inf(d["b_star"]),
        b_star_ci95=(lo, none_to_inf(ci[1])),
        top=lo,
        limited_by="b_star" if math.isfinite(lo) else None,
        interval_scope="checkpoint",
        equilibrium_residual=rho,
        heuristic=bool(reasons),
        heuristic_reasons=reasons,
    )


def _num_or_null(x: Any) -> bool:
    return x is None or (isinstance(x, int | float) and not isinstance(x, bool) and x == x)


def read_series(path: str | os.PathLike[str], c2: float = DEFAULT_C2) -> list[SchedulePoint]:
    """The points of a ``series.jsonl`` (one JSON object a line; blank lines skipped).

    Raises:
        ArtifactError: unreadable, or a line that is not a series record (naming file and line).
    """
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ArtifactError(f"{p}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{p}: cannot read ({getattr(e, 'strerror', None) or e})") from None
    out = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError as e:
            raise ArtifactError(f"{p}:{i}: not valid JSON ({e.msg})") from None
        out.append(_series_point(d, f"{p}:{i}", p.parent, c2))
    if not out:
        raise ArtifactError(f"{p}: no series lines (expected one JSON object a line)")
    return out


def load_points(
    paths: Sequence[str | os.PathLike[str]], c2: float = DEFAULT_C2
) -> list[SchedulePoint]:
    """Points from measurement JSON files, or from one ``series.jsonl`` (a ``.jsonl`` name).

    Raises:
        UsageError: no file, or a series mixed with other files.
        ArtifactError: a file that is not a measurement / series, naming it.
    """
    if not paths:
        raise UsageError("schedule needs measurement JSON files or one series.jsonl")
    series = [p for p in paths if str(p).endswith(".jsonl")]
    if series:
        if len(paths) > 1:
            raise UsageError(
                f"give one series.jsonl alone, or measurement JSON files; got {series[0]} "
                f"among {len(paths)} files"
            )
        return read_series(series[0], c2)
    return [point_from_measurement(str(p), load_measurement(p), c2) for p in paths]


# ----------------------------------------------------------------------------------------------
# Other forms: Megatron-LM's --step-batch-size-schedule, the YAML the callbacks read
# ----------------------------------------------------------------------------------------------

_SUFFIXES = (("T", 10**12), ("B", 10**9), ("M", 10**6), ("K", 10**3))


def _threshold(x: int) -> str:
    """``250000000000`` → ``"250B"``: the largest suffix that divides exactly, else the integer."""
    for suffix, unit in _SUFFIXES:
        if x and x % unit == 0:
            return f"{x // unit}{suffix}"
    return str(x)


def megatron_schedule(s: Schedule, seq_length: int | None = None) -> str:
    """The stages as Megatron-LM's ``--step-batch-size-schedule`` value: ``"0:768 250B:1536"``.

    Each entry is ``THRESHOLD:GLOBAL_BATCH``, the first threshold 0; thresholds are consumed
    samples (examples seen), or tokens when ``seq_length`` is given (tokens = examples ×
    sequence length, which Megatron divides back by ``--seq-length``) or the points recorded
    tokens seen. Suffixes K/M/B/T (10³…10¹²) only where exact.

    Raises:
        UsageError: a stage after the first has no examples seen.
    """
    per = float(seq_length) if seq_length is not None else s.tokens_per_example
    parts = []
    for st in s.stages:
        if st.start_examples is None:
            raise UsageError(
                f"the stage from step {st.start_step} has no examples seen: Megatron's schedule "
                "counts samples or tokens (measure with {examples_seen})",
                examples_seen="examples_seen",
            )
        x = st.start_examples if per is None else round(st.start_examples * per)
        parts.append(f"{_threshold(int(x))}:{st.batch_size}")
    return " ".join(parts)


def schedule_yaml_dict(s: Schedule) -> dict[str, Any]:
    """What ``--out S.yaml`` holds: the stages a training loop or callback switches between.

    ``stages`` in order, each ``{start_examples, start_step, batch_size, hyperparameters}``;
    switch to a stage once ``start_examples`` training examples have been consumed
    (:func:`stage_at`); ``start_step`` is the measured run's step, for reference.
    """
    return {
        "kind": KIND_SCHEDULE,
        "schema": SCHEDULE_YAML_SCHEMA,
        "clock": "examples_seen",
        "base_batch_size": s.base_batch_size,
        "optimizer": s.optimizer.name if s.optimizer is not None else None,
        "c2": s.c2,
        "stages": [
            {
                "start_examples": st.start_examples,
                "start_step": st.start_step,
                "batch_size": st.batch_size,
                "hyperparameters": st.hyperparameters,
            }
            for st in s.stages
        ],
    }


def stages_from_yaml_dict(d: Any, source: str = "<yaml>") -> list[Stage]:
    """Read the stages of :func:`schedule_yaml_dict` back (for a training loop or a callback).

    The YAML's ``schema`` is checked against :data:`SCHEDULE_YAML_SCHEMA` (older ones upgraded,
    newer ones refused); a hand-written file without one is read as schema 1.

    Raises:
        UsageError: not a schedule, a schema this bscrit does not read, or a stage without an
            integer batch size / start.
    """
    if not isinstance(d, dict) or d.get("kind") != KIND_SCHEDULE:
        raise UsageError(f"{source}: not a bscrit schedule (expected kind: {KIND_SCHEDULE})")
    d = _check_yaml_schema(d, source)
    raw = d.get("stages")
    if not isinstance(raw, list) or not raw:
        raise UsageError(f"{source}: key 'stages': expected a non-empty list")
    out = []
    for i, st in enumerate(raw):
        ok = isinstance(st, dict) and all(
            isinstance(st.get(k), int) and not isinstance(st.get(k), bool) and st[k] >= 0
            for k in ("start_examples", "start_step", "batch_size")
        )
        if not ok or st["batch_size"] < 1:
            raise UsageError(
                f"{source}: key 'stages.{i}': expected start_examples, start_step (integers ≥ 0) "
                "and batch_size (≥ 1)"
            )
        hp = st.get("hyperparameters")
        out.append(Stage(st["start_step"], st["start_examples"], None, st["batch_size"], None,
                         dict(hp) if isinstance(hp, dict) else None))  # fmt: skip
    return out


def _check_yaml_schema(d: dict[str, Any], source: str) -> dict[str, Any]:
    """``d`` brought to :data:`SCHEDULE_YAML_SCHEMA` with the YAML's own upgrades (never the
    measurement's); a :class:`UsageError` for a schema this bscrit does not read."""
    if "schema" not in d:  # hand-written stages: the first format
        d = {**d, "schema": 1}
    try:
        return check_schema(
            d, KIND_SCHEDULE, source, schema=SCHEDULE_YAML_SCHEMA, upgrades=_YAML_UPGRADES
        )
    except ArtifactError as e:
        raise UsageError(e.message) from None


def schedule_yaml_text(s: Schedule) -> str:
    """The ``--out`` YAML (:func:`schedule_yaml_dict`) with a comment saying how to read it."""
    import yaml

    head = (
        "# bscrit batch-size schedule: switch to a stage once start_examples training examples\n"
        "# have been consumed; hyperparameters are the base optimizer scaled to that batch size\n"
        "# (bscrit.artifacts.schedule_io.stages_from_yaml_dict reads it back).\n"
    )
    return head + yaml.safe_dump(schedule_yaml_dict(s), sort_keys=False)
