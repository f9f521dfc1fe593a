"""``bscrit schedule``'s inputs and other outputs: measurement files or a ``series.jsonl`` in,
Megatron-LM's ``--step-batch-size-schedule`` string and the stage YAML out (pure: no torch).

``series.jsonl`` is what the training callbacks append, one JSON object a line: ``{"step",
"examples_seen", "G", "N", "nsr", "b_star", "b_star_ci95", ..., "batch_size"}``. A line is read
through its measurement JSON when there is one (a ``"measurement"`` key naming it relative to the
series, or ``step-NNNNNNN.json`` beside the series, as the callbacks write it): then its numbers
are exactly ``bscrit predict``'s and the stages get scaled hyperparameters. Otherwise the line's
own B* and interval are used, with the line's ``optimizer`` when it records one (free mode's
lines do): stages without hyperparameters when it does not.

Megatron-LM (PR 4411) takes ``--step-batch-size-schedule "0:768 250B:1536 ..."``: entries
``THRESHOLD:GLOBAL_BATCH``, the first threshold 0, suffixes K/M/B/T = 10³/10⁶/10⁹/10¹²;
thresholds are consumed samples, or tokens when ``--seq-length`` is set (tokens ÷ sequence
length = samples). We write a suffix only where it divides exactly.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from bscrit import boundary
from bscrit.artifacts.jsonvalues import none_to_inf
from bscrit.artifacts.measurement import check_schema, load_measurement
from bscrit.artifacts.series import read_lines
from bscrit.errors import ArtifactError, UsageError
from bscrit.optim.registry import OptimizerInfo
from bscrit.theory.formulas import DEFAULT_C2, check_c2
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
#: start_step, batch_size, hyperparameters); at_switch (additive): what to do with the optimizer
#: state at a switch (:func:`switch_state`).
SCHEDULE_YAML_SCHEMA = 1
#: ``_YAML_UPGRADES[v]`` rewrites a schema-v schedule YAML as schema v + 1 (none yet).
_YAML_UPGRADES: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}


def _series_point(d: dict[str, Any], where: str, folder: Path, c2: float) -> SchedulePoint:
    """One ``series.jsonl`` line, already checked (:func:`bscrit.artifacts.series.read_lines`):
    its measurement JSON when there is one (``"measurement"``, or ``step-NNNNNNN.json`` beside
    the series), else the line's own numbers."""
    step, ex = d["step"], d.get("examples_seen")
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
    b, ci = d["batch_size"], d["b_star_ci95"]
    lo = none_to_inf(ci[0])
    nsr_ci = d.get("nsr_ci95") or [None, None]
    rho = d.get("equilibrium_residual")
    opt = d.get("optimizer")  # a free-mode line's record of the live optimizer (checked)
    reasons = heuristic_reasons(step, rho, None)
    return SchedulePoint(
        source=where,
        step=step,
        examples_seen=ex if ex is not None else step * b,
        tokens_seen=d.get("tokens_seen"),
        batch_size=b,
        dataset_size=0,
        nsr=none_to_inf(d.get("nsr")),
        nsr_ci95=(none_to_inf(nsr_ci[0]), none_to_inf(nsr_ci[1])),
        b_star=none_to_inf(d["b_star"]),
        b_star_ci95=(lo, none_to_inf(ci[1])),
        top=lo,
        limited_by="b_star" if math.isfinite(lo) else None,
        interval_scope="checkpoint",
        equilibrium_residual=None if rho is None else float(rho),
        heuristic=bool(reasons),
        heuristic_reasons=reasons,
        optimizer=OptimizerInfo.from_dict(opt) if isinstance(opt, dict) else None,
    )


def read_series(path: str | os.PathLike[str], c2: float = DEFAULT_C2) -> list[SchedulePoint]:
    """The points of a ``series.jsonl`` (one JSON object a line; blank lines skipped), every line
    checked before any is used (:func:`bscrit.artifacts.series.read_lines`: bounded parsing,
    values, B* inside its interval, steps increasing).

    Raises:
        ArtifactError: unreadable, or a line that is not a series record (naming file and line).
    """
    check_c2(c2)
    lines = read_lines(path, required=("step",))
    folder = Path(path).parent
    return [_series_point(d, where, folder, c2) for where, d in lines]


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
    if seq_length is not None:
        why = boundary.integer_problem(seq_length, minimum=1)
        if why:
            raise UsageError(f"{{seq_length}}: {why}", seq_length="seq_length")
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
        if x > boundary.INT64_MAX:
            raise UsageError(
                f"the stage from step {st.start_step} starts at {x:.3g} tokens, more than int64 "
                "holds (Megatron counts them in int64): check {seq_length}",
                seq_length="seq_length",
            )
        parts.append(f"{_threshold(int(x))}:{st.batch_size}")
    return " ".join(parts)


def switch_state(opt: OptimizerInfo | None) -> dict[str, str]:
    """What to do with the optimizer's state at each stage switch from B to B' = κB, as
    ``{"second_moment", "first_moment", "why"}`` in ASCII (the YAML's and ``--json``'s
    ``at_switch``).

    [MLPA22] Thms 4.2/4.5 approximate Adam/RMSprop by an SDE whose state is (θ, m, u = v/σ²),
    Thm 5.3 compares runs whose states agree, and the gradient noise σ² ∝ 1/B: at B' = κB the same
    u is v/κ, and m, an average of the gradient, is kept. Exact only where the noise dominates v
    (v ≈ σ²); where the mean gradient dominates it, v/κ under-estimates it. SGD's momentum buffer
    averages the gradient and is kept. ``bscrit confirm``'s branch point does the same
    (:mod:`bscrit.runs.confirm.run`).
    """
    from bscrit.optim import registry as optim

    why = (
        "[MLPA22] Thms 4.2/4.5 track u = v/sigma^2 with sigma^2 proportional to 1/B, so the "
        "run continues at B' = kappa*B from v/kappa (Thm 5.3 compares runs with equal states); "
        "exact only where the gradient noise dominates v"
    )
    name = opt.name if opt is not None else None
    moment = optim.REGISTRY[name].second_moment if name in optim.REGISTRY else None
    if moment is not None:
        return {"second_moment": f"divide by kappa = new/old batch size ({moment})",
                "first_moment": "keep", "why": why}  # fmt: skip
    if name is None:
        return {"second_moment": "divide by kappa = new/old batch size, if the optimizer keeps "
                "one (Adam's exp_avg_sq, RMSprop's square_avg)", "first_moment": "keep",
                "why": why}  # fmt: skip
    return {"second_moment": f"none ({name} keeps no second moment)",
            "first_moment": "keep (a momentum buffer averages the gradient)",
            "why": why}  # fmt: skip


def switch_state_line(opt: OptimizerInfo | None) -> str:
    """:func:`switch_state` in one sentence, for the printed output and the YAML's comment."""
    d = switch_state(opt)
    if d["second_moment"].startswith("none"):
        return f"at each switch keep the optimizer state ({d['second_moment'][6:-1]})"
    return (
        f"at each switch B -> kappa*B: second moment v: {d['second_moment']}; first moment m: "
        f"keep ([MLPA22]: u = v/sigma^2 with sigma^2 ~ 1/B; exact where the noise dominates v)"
    )


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
        "at_switch": switch_state(s.optimizer),
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
        UsageError: not a schedule, a schema this bscrit does not read, a stage without an int64
            batch size / start or with a hyperparameter that is not a finite number, or stages
            out of order (every problem, naming ``stages.i``).
    """
    if not isinstance(d, dict) or d.get("kind") != KIND_SCHEDULE:
        raise UsageError(f"{source}: not a bscrit schedule (expected kind: {KIND_SCHEDULE})")
    d = _check_yaml_schema(d, source)
    raw = d.get("stages")
    if not isinstance(raw, list) or not raw:
        raise UsageError(f"{source}: key 'stages': expected a non-empty list")
    problems = [
        f"key 'stages.{i}': {why}" for i, st in enumerate(raw) for why in _stage_problems(st)
    ]
    starts = [(st["start_examples"], st["start_step"]) for st in raw if not problems]
    problems += [
        f"key 'stages.{i}': starts before stage {i - 1} (start_examples and start_step never "
        "decrease)"
        for i in range(1, len(starts))
        if starts[i][0] < starts[i - 1][0] or starts[i][1] < starts[i - 1][1]
    ]
    if problems:
        raise UsageError(f"{source}: " + "; ".join(problems[:10]))
    return [
        Stage(st["start_step"], st["start_examples"], None, st["batch_size"], None,
              dict(st["hyperparameters"]) if isinstance(st.get("hyperparameters"), dict) else None)
        for st in raw
    ]  # fmt: skip


def _stage_problems(st: Any) -> list[str]:
    """Why one stage of the YAML cannot be used: its starts (int64 ≥ 0), its batch size (≥ 1),
    its hyperparameters (finite numbers, or true/false)."""
    if not isinstance(st, dict):
        return [f"expected a mapping with start_examples, start_step, batch_size, got {st!r:.40}"]
    out = []
    for key, low in (("start_examples", 0), ("start_step", 0), ("batch_size", 1)):
        why = boundary.integer_problem(st.get(key), minimum=low)
        if why:
            out.append(f"{key}: {why}")
    hp = st.get("hyperparameters")
    if hp is not None and not isinstance(hp, dict):
        out.append(f"hyperparameters: expected a mapping, got {boundary.describe(hp)}")
    for key, v in (hp if isinstance(hp, dict) else {}).items():
        if not isinstance(v, bool) and boundary.number_problem(v)[1]:
            out.append(f"hyperparameters.{key}: expected a finite number, got {boundary.short(v)}")
    return out


def load_stages(path: str | os.PathLike[str]) -> list[Stage]:
    """The stages of a schedule YAML file (``bscrit schedule --out``), read within the YAML
    limits of :mod:`bscrit.boundary` (size, depth, aliases) with ``yaml.safe_load``.

    Raises:
        UsageError: unreadable, not YAML, past a limit, or not a schedule (naming the file).
    """
    from bscrit.checker import read_yaml
    from bscrit.errors import SpecError

    p = Path(path)
    try:
        with open(p, "rb") as f:
            data = f.read(boundary.MAX_YAML_BYTES + 1)
        raw, _ = read_yaml(data.decode("utf-8"), str(p), what="schedule YAML")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{p}: cannot read ({getattr(e, 'strerror', None) or e})") from None
    except SpecError as e:
        raise UsageError(f"{p}: " + "; ".join(str(x) for x in e.problems)) from None
    return stages_from_yaml_dict(raw, str(p))


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
        f"# {switch_state_line(s.optimizer)}.\n"
    )
    return head + yaml.safe_dump(schedule_yaml_dict(s), sort_keys=False)
