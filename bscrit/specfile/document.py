"""The measurement spec: one YAML file -> frozen dataclasses, every problem reported at once.

A spec says which model to build, which checkpoint to load into it, which data and loss to take
gradients of, the batch size B of the run the checkpoint comes from and, optionally, its
optimizer and LR schedule. It is read with ``yaml.safe_load`` only and validated in one pass:
unknown keys (with a "did you mean"), wrong types, missing keys and bad values are all collected
into one :class:`~bscrit.errors.SpecError`, each with its dotted key path (``optimizer.lr``,
``data.transforms[1].name``). No torch import here; :mod:`bscrit.load.factories` turns a spec into
objects. The sections are parsed by :mod:`bscrit.specfile.sections` (``model``, ``checkpoint``,
``data``, ``loss``, ``measure``), :mod:`bscrit.specfile.training` (``optimizer``, ``schedule``) and
:mod:`bscrit.specfile.model` (``model: {hf: folder}``, a Hugging Face folder).

Shorthands: ``model: resnet18`` means ``{name: resnet18}`` and ``model: net.py:make`` means
``{factory: net.py:make}`` (a string with a ``:`` is a factory reference); the same for ``data``
and ``loss``. ``checkpoint: ckpt.pt`` (or a list) means ``{path: ckpt.pt}``. Relative paths
(checkpoint paths, ``file.py:fn`` factories) resolve against the spec file's folder.

Number quirk: YAML 1.1 (PyYAML) reads ``1e-3`` (no dot) as a *string*; float fields accept such
strings when Python's ``float()`` parses them. Booleans are never numbers.

``loss: model`` means the model computes its own mean loss (:mod:`bscrit.engine.objective`);
``micro_batch_size`` (a divisor of ``batch_size``) runs each batch in micro-batches; strings in
the factory kwargs may use ``${spec_dir}`` (:mod:`bscrit.specfile.variables`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bscrit import boundary
from bscrit.checker import Checker, read_yaml
from bscrit.errors import SpecError, SpecProblem, UsageError
from bscrit.optim.registry import OptimizerInfo
from bscrit.specfile.model import ModelSpec, default_checkpoint
from bscrit.specfile.references import user_path
from bscrit.specfile.sections import (
    CheckpointSpec,
    DataSpec,
    LossSpec,
    MeasureSpec,
    parse_checkpoint,
    parse_data,
    parse_loss,
    parse_measure,
    parse_model,
)
from bscrit.specfile.training import ScheduleSpec, parse_optimizer, parse_schedule


@dataclass(frozen=True)
class Spec:
    """A validated spec. Paths are absolute; factories keep their reference string."""

    path: Path  # the spec file (absolute)
    base_dir: Path  # its folder: relative paths resolve against it
    model: ModelSpec
    checkpoint: CheckpointSpec
    data: DataSpec
    eval_data: DataSpec | None
    loss: LossSpec
    batch_size: int
    optimizer: OptimizerInfo | None  # source="spec"
    schedule: ScheduleSpec
    measure: MeasureSpec
    micro_batch_size: int | None = None  # forward/backward in chunks of this many (divides B)


TOP_KEYS = (
    "model",
    "checkpoint",
    "data",
    "eval_data",
    "loss",
    "batch_size",
    "micro_batch_size",
    "optimizer",
    "schedule",
    "measure",
)
REQUIRED_TOP_KEYS = ("model", "data", "loss", "batch_size")


def micro_problem(micro: int, batch_size: int, key: str = "batch_size") -> str:
    """Why ``micro`` cannot split a batch of ``batch_size`` examples into equal micro-batches,
    with the divisors of ``batch_size`` nearest to it below and above."""
    near = near_divisors(batch_size, micro)
    hint = f"; divisors near it: {', '.join(map(str, near))}" if near else ""
    return (
        f"{micro} does not divide {key} = {batch_size} (the micro-batches of one batch must be "
        f"equal{hint})"
    )


#: Divisors are listed for batch sizes up to this (a search of √B steps).
MAX_DIVISOR_SEARCH = 10**12


def near_divisors(n: int, x: int) -> list[int]:
    """The largest divisor of ``n`` below ``x`` and the smallest above it (those that exist;
    none for ``n`` above :data:`MAX_DIVISOR_SEARCH`)."""
    if n > MAX_DIVISOR_SEARCH:
        return []
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    divisors = set(small) | {n // d for d in small}
    below = [d for d in divisors if d < x]
    above = [d for d in divisors if d > x]
    return ([max(below)] if below else []) + ([min(above)] if above else [])


def parse_spec(
    raw: Any,
    source: str,
    base_dir: Path | str,
    *,
    path: Path | str | None = None,
    problems: Sequence[SpecProblem] = (),
) -> Spec:
    """Validate a spec already read from YAML.

    Args:
        raw: the ``yaml.safe_load`` result (must be a mapping).
        source: how to name the spec in errors (usually its path).
        base_dir: the folder relative paths resolve against.
        path: the spec file, stored in ``Spec.path`` (default: ``base_dir / source``).
        problems: found while reading the file (duplicate keys), listed with the others.

    Raises:
        SpecError: listing every problem, each with its dotted key path.
    """
    base_dir = user_path(base_dir).resolve()
    spec_path = Path(path).resolve() if path is not None else (base_dir / source).resolve()
    if raw is None:
        raise SpecError(
            source,
            [
                SpecProblem(
                    "",
                    "the spec is empty; expected a mapping with keys "
                    + ", ".join(REQUIRED_TOP_KEYS),
                )
            ],
        )
    if not isinstance(raw, Mapping):
        raise SpecError(
            source,
            [SpecProblem("", f"expected a mapping at the top level, got {type(raw).__name__}")],
        )
    c = Checker()
    c.problems.extend(problems)
    c.unknown_keys(raw, TOP_KEYS, "")
    for key in REQUIRED_TOP_KEYS:
        if raw.get(key) is None:
            c.add(key, "missing required key")

    model = parse_model(c, raw["model"], base_dir) if raw.get("model") is not None else None
    checkpoint = default_checkpoint(model, parse_checkpoint(c, raw.get("checkpoint"), base_dir))
    data = parse_data(c, raw["data"], "data", base_dir) if raw.get("data") is not None else None
    eval_data = None
    if raw.get("eval_data") is not None:
        eval_data = parse_data(c, raw["eval_data"], "eval_data", base_dir)
    loss = parse_loss(c, raw["loss"], base_dir) if raw.get("loss") is not None else None
    batch_size = None
    if raw.get("batch_size") is not None:
        batch_size = c.integer(raw["batch_size"], "batch_size", minimum=1)
    micro = None
    if raw.get("micro_batch_size") is not None:
        micro = c.integer(raw["micro_batch_size"], "micro_batch_size", minimum=1)
        if micro is not None and batch_size is not None and batch_size % micro:
            c.add("micro_batch_size", micro_problem(micro, batch_size))
    optimizer = parse_optimizer(c, raw.get("optimizer"))
    schedule = parse_schedule(c, raw.get("schedule"))
    measure = parse_measure(c, raw.get("measure"))

    if c.problems:
        raise SpecError(source, c.problems)
    assert model and checkpoint and data and loss and batch_size and schedule and measure
    return Spec(
        path=spec_path,
        base_dir=base_dir,
        model=model,
        checkpoint=checkpoint,
        data=data,
        eval_data=eval_data,
        loss=loss,
        batch_size=batch_size,
        optimizer=optimizer,
        schedule=schedule,
        measure=measure,
        micro_batch_size=micro,
    )


def load_spec(path: str | Path) -> Spec:
    """Read and validate a spec file (``yaml.safe_load`` only).

    Raises:
        SpecError: the file is missing or unreadable, is not valid YAML (with line and column),
            passes a parsing limit of :mod:`bscrit.boundary` (size, depth, aliases), or has any
            problem (all listed, with key paths; a key given twice, with its lines).
    """
    p = user_path(path)
    source = str(path)
    if not p.exists():
        raise SpecError(source, [SpecProblem("", f"file not found: {p}")])
    if not p.is_file():
        raise SpecError(source, [SpecProblem("", f"not a file: {p}")])
    try:
        with open(p, "rb") as f:  # never more than the limit, whatever the file's size
            data = f.read(boundary.MAX_YAML_BYTES + 1)
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(source, [SpecProblem("", f"cannot read {p}: {e}")]) from None
    too_big = boundary.size_problem(p.stat().st_size, boundary.MAX_YAML_BYTES, "spec (YAML)")
    if len(data) > boundary.MAX_YAML_BYTES and too_big:
        raise SpecError(source, [SpecProblem("", f"the file is {too_big}")])
    raw, duplicates = read_yaml(text, source)
    p = p.resolve()
    return parse_spec(raw, source, p.parent, path=p, problems=duplicates)


def resolve_micro_batch_size(spec: Spec, override: int | None, batch_size: int) -> int | None:
    """The micro-batch size (``--micro-batch-size``, else the spec's), checked to divide B."""
    micro = override or spec.micro_batch_size
    if micro is None or batch_size % micro == 0:
        return micro
    if override is not None:
        raise UsageError(
            f"{{micro_batch_size}} {micro_problem(micro, batch_size, 'the batch size B')}",
            micro_batch_size="micro_batch_size",
        )
    problem = micro_problem(micro, batch_size, "--batch-size")
    raise SpecError(str(spec.path), [SpecProblem("micro_batch_size", problem)])
