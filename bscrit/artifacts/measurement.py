"""The measurement artifact (``"kind": "bscrit.measurement"``, ``"schema": 1``): the record
``bscrit measure`` returns, its format history, and its JSON and CSV written atomically.

The measurement artifact is what ``predict``, ``check`` and ``scale`` read: it holds the point
estimates *and* the m leave-one-group-out values of G and N for each parameter set, so any later
function of G and N gets an interval without torch. No torch import here; pandas only for CSV,
imported lazily. Its parts are :mod:`bscrit.artifacts.records`; files go through
:mod:`bscrit.artifacts.files`.

JSON cannot hold ``inf``: an unbounded value (NSR when Ĝ ≤ 0, the upper end of an interval with
no upper bound) is written as ``null``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bscrit import __version__, boundary
from bscrit.artifacts.checks import measurement_problems
from bscrit.artifacts.files import dumps, read_json, write_atomic
from bscrit.artifacts.records import CheckpointStats, Equilibrium, ParameterRow, ParamSetStats
from bscrit.errors import ArtifactError, ExitCode
from bscrit.optim.registry import OptimizerInfo
from bscrit.stats.equilibrium import EquilibriumInterval

# Format history of the JSON artifacts (``"kind"``: ``bscrit.measurement``, ``bscrit.svag``).
#
# How the format evolves (decided once, here; :func:`check_schema` follows it):
# - An additive change (a new key, a new optional section such as ``stats.preconditioned`` or
#   ``checkpoints[i].step``) stays under the same schema number. Readers ignore keys they do not
#   know, and read a missing new key as absent (None / its documented default), so an artifact
#   written by an older bscrit still loads and one written by a newer bscrit loads in an older
#   one.
# - A change that removes or renames a key, or changes a key's meaning or unit, bumps SCHEMA and
#   adds an entry to ``_UPGRADES``: a pure function that rewrites an artifact of schema v into
#   schema v + 1. :func:`check_schema` applies them in order, so every schema from 1 to SCHEMA
#   loads; a schema newer than SCHEMA is refused with "upgrade bscrit".
#
# Versions:
# 1 (bscrit 0.1.0): measurement: batch_size, dataset_size, num_batches, groups, seed, device,
#   mode, elapsed_s, checkpoints, optimizer, equilibrium, stats.all / stats.scale_invariant
#   (G, N, NSR with s.e., 95% intervals and the m leave-one-group-out values), per_parameter,
#   warnings, extra; svag: runs, comparisons, verdict.
#   Added under schema 1 (0.2): stats.preconditioned (G, N, NSR of P∇L, with "preconditioner")
#   and stats.preconditioned_reason; prediction: recommended.limited_by.
#   Added under schema 1 (0.3): micro_batch_size (null: each batch in one forward/backward pass).
#   Added under schema 1 (0.2, issue 13): optimizer.lr_current / groups / momentum_decay /
#   lr_decay / decoupled_weight_decay / identified_by, written only when set (optimizer.lr is the
#   base LR, initial_lr where a scheduler stored it); extra.parameters (tensors and parameters
#   measured and left out); scale/predict --json: groups.
#   Added under schema 1 (0.3): checkpoints[i].step, equilibrium_interval (scope, draws, the
#   intervals over the equilibrium per parameter set), extra.sampling, extra.selection.
#   Added under schema 1 (0.3, issue 16): checkpoints[i].examples_seen and
#   checkpoints[i].tokens_seen (training examples / tokens consumed before the checkpoint; null
#   when unknown).
# Every other artifact kind has its own number and history, never this one: ``SVAG_SCHEMA`` in
# bscrit/runs/svag/results.py (``bscrit.svag``; 2, issue 15: the calibrated verdict),
# ``CONFIRM_SCHEMA`` in bscrit/runs/confirm/results.py (``bscrit.confirm``),
# ``SCHEDULE_YAML_SCHEMA`` in bscrit/artifacts/schedule_io.py (the schedule's stage YAML).
SCHEMA = 1
KIND_MEASUREMENT = "bscrit.measurement"
#: ``_UPGRADES[v]`` rewrites a schema-v artifact as schema v + 1 (none yet).
_UPGRADES: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}


@dataclass(frozen=True)
class Measurement:
    """The result of ``bscrit measure``: pooled over checkpoints, with per-checkpoint detail."""

    batch_size: int
    dataset_size: int
    num_batches: int  # k per checkpoint
    groups: int  # m
    seed: int
    device: str
    mode: str  # "train" | "eval"
    elapsed_s: float
    checkpoints: tuple[CheckpointStats, ...]
    all: ParamSetStats  # pooled
    scale_invariant: ParamSetStats | None  # pooled
    equilibrium: Equilibrium | None  # pooled
    equilibrium_note: str  # why equilibrium is null, or how it was computed
    optimizer: OptimizerInfo | None
    per_parameter: tuple[ParameterRow, ...]  # from the first checkpoint
    scale_invariant_fraction: float  # fraction of trainable parameters that are scale-invariant
    spec: str | None = None
    model: str | None = None
    amp: str | None = None
    estimator: str = "batch"  # "batch" | "per-example"
    sampling: str = "independent batches of B distinct examples, uniform without replacement"
    warnings: tuple[str, ...] = ()
    bscrit_version: str = __version__
    extra: dict[str, Any] = field(default_factory=dict)
    #: G_P, N_P of the preconditioned gradient P∇L (docs/theory.md §5), pooled; None with a reason
    preconditioned: ParamSetStats | None = None
    preconditioner: str | None = None  # what P is, in a few words
    preconditioned_reason: str | None = None  # why there is no preconditioned reading
    micro_batch_size: int | None = None  # examples per forward/backward chunk of a batch
    #: what the intervals cover, and those over the equilibrium (docs/theory.md §8)
    equilibrium_interval: EquilibriumInterval | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "kind": KIND_MEASUREMENT,
            "bscrit_version": self.bscrit_version,
            "spec": self.spec,
            "model": self.model,
            "batch_size": self.batch_size,
            "micro_batch_size": self.micro_batch_size,
            "dataset_size": self.dataset_size,
            "num_batches": self.num_batches,
            "groups": self.groups,
            "seed": self.seed,
            "device": self.device,
            "mode": self.mode,
            "amp": self.amp,
            "estimator": self.estimator,
            "sampling": self.sampling,
            "elapsed_s": self.elapsed_s,
            "optimizer": self.optimizer.to_dict() if self.optimizer else None,
            "equilibrium": self.equilibrium.to_dict() if self.equilibrium else None,
            "equilibrium_note": self.equilibrium_note,
            "scale_invariant_fraction": self.scale_invariant_fraction,
            "stats": {
                "all": self.all.to_dict(),
                "scale_invariant": (
                    self.scale_invariant.to_dict() if self.scale_invariant else None
                ),
                "preconditioned": (
                    self.preconditioned.to_dict() | {"preconditioner": self.preconditioner}
                    if self.preconditioned
                    else None
                ),
                "preconditioned_reason": self.preconditioned_reason,
            },
            "equilibrium_interval": (
                self.equilibrium_interval.to_dict() if self.equilibrium_interval else None
            ),
            "checkpoints": [c.to_dict() for c in self.checkpoints],
            "per_parameter": [r.to_dict() for r in self.per_parameter],
            "warnings": list(self.warnings),
            "extra": self.extra,
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the JSON artifact ``bscrit measure --out`` writes (atomically), and the
        per-parameter CSV beside it (``m.params.csv``); returns the JSON's path."""
        return write_measurement(self, path)[0]

    @staticmethod
    def from_dict(d: dict[str, Any], source: str = "<dict>") -> Measurement:
        """Read an artifact; every impossible value is an :class:`ArtifactError` naming its key.

        Raises:
            ArtifactError: not a measurement, an unknown schema, or a missing, mistyped or
                impossible value (``batch_size: 0``, a NaN G, a jackknife list of the wrong
                length), each problem listed with its key path (``stats.all.jackknife.G``).
        """
        d = check_schema(d, KIND_MEASUREMENT, source)
        problems = measurement_problems(d)
        if problems:
            if len(problems) == 1:
                listed = f": {problems[0]}"
            else:
                listed = f", {len(problems)} problems:\n" + "\n".join(f"  - {p}" for p in problems)
            if any(p.message == "missing required key" for p in problems):
                listed += "\n(expected the JSON written by `bscrit measure --out`)"
            raise ArtifactError(f"{source}: malformed measurement artifact{listed}")
        try:
            st = d["stats"]
            return Measurement(
                batch_size=int(d["batch_size"]),
                dataset_size=int(d["dataset_size"]),
                num_batches=int(d["num_batches"]),
                groups=int(d["groups"]),
                seed=int(d["seed"]),
                device=str(d["device"]),
                mode=str(d["mode"]),
                elapsed_s=float(d["elapsed_s"]),
                checkpoints=tuple(CheckpointStats.from_dict(c) for c in d["checkpoints"]),
                all=ParamSetStats.from_dict(st["all"]),
                scale_invariant=(
                    ParamSetStats.from_dict(st["scale_invariant"])
                    if st.get("scale_invariant")
                    else None
                ),
                equilibrium=(
                    Equilibrium.from_dict(d["equilibrium"]) if d.get("equilibrium") else None
                ),
                equilibrium_note=str(d.get("equilibrium_note", "")),
                optimizer=OptimizerInfo.from_dict(d["optimizer"]) if d.get("optimizer") else None,
                per_parameter=tuple(ParameterRow.from_dict(r) for r in d["per_parameter"]),
                scale_invariant_fraction=float(d["scale_invariant_fraction"]),
                spec=d.get("spec"),
                model=d.get("model"),
                amp=d.get("amp"),
                estimator=str(d.get("estimator", "batch")),
                sampling=str(d.get("sampling", "")),
                warnings=tuple(str(w) for w in d.get("warnings", [])),
                bscrit_version=str(d.get("bscrit_version", "?")),
                extra=dict(d.get("extra") or {}),
                preconditioned=(
                    ParamSetStats.from_dict(st["preconditioned"])
                    if st.get("preconditioned")
                    else None
                ),
                preconditioner=(st.get("preconditioned") or {}).get("preconditioner"),
                preconditioned_reason=st.get("preconditioned_reason"),
                micro_batch_size=int(d["micro_batch_size"]) if d.get("micro_batch_size") else None,
                equilibrium_interval=(
                    EquilibriumInterval.from_dict(d["equilibrium_interval"])
                    if d.get("equilibrium_interval")
                    else None
                ),
            )
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise ArtifactError(
                f"{source}: malformed measurement artifact ({type(e).__name__}: {e}); "
                "expected the JSON written by `bscrit measure --out`"
            ) from None


# ----------------------------------------------------------------------------------------------
# Format check and upgrade
# ----------------------------------------------------------------------------------------------


def check_schema(
    d: Any,
    kind: str,
    source: str,
    *,
    schema: int | None = None,
    upgrades: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """Validate ``d`` as an artifact of ``kind`` and bring it to the current schema.

    Follows the format history above: every schema from 1 to ``schema`` (:data:`SCHEMA`, or a
    kind's own, e.g. ``bscrit.svag``'s) is accepted (older ones are upgraded step by step with
    ``upgrades``, default ``_UPGRADES``), a newer one is refused.

    Returns:
        The artifact as a dict of the current schema.

    Raises:
        ArtifactError: not a JSON object, another kind, or an unknown schema.
    """
    schema = SCHEMA if schema is None else schema
    if not isinstance(d, dict):
        raise ArtifactError(
            f"{source}: not a {kind} artifact (expected a JSON object, got {type(d).__name__})"
        )
    if d.get("kind") != kind:
        raise ArtifactError(f"{source}: key 'kind' is {d.get('kind')!r}, expected {kind!r}")
    version = d.get("schema")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ArtifactError(
            f"{source}: key 'schema' is {version!r}; this bscrit reads schema 1 to {schema}"
        )
    if version > schema:
        raise ArtifactError(
            f"{source}: key 'schema' is {version}, newer than this bscrit reads ({schema}); "
            "upgrade bscrit"
        )
    steps = _UPGRADES if upgrades is None else upgrades
    while version < schema:
        d = steps[version](d)
        version += 1
        d["schema"] = version
    return d


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------


def load_measurement(path: str | os.PathLike[str]) -> Measurement:
    """Read and validate a measurement artifact written by ``bscrit measure``."""
    d = read_json(path, "bscrit measurement", malformed="measurement artifact")
    return Measurement.from_dict(d, source=str(path))


def per_parameter_csv(rows: Sequence[ParameterRow]) -> str:
    """The per-tensor table as CSV text (pandas)."""
    import pandas as pd

    df = pd.DataFrame(
        [
            {
                "name": r.name,
                "shape": "x".join(str(s) for s in r.shape),
                "numel": r.numel,
                "G": r.G,
                "N": r.N,
                "nsr": (r.N / r.G) if r.G > 0 else math.inf,
                "R": r.R,
                "scale_invariant": r.scale_invariant,
                "invariance_ratio": r.invariance_ratio,
            }
            for r in rows
        ]
    )
    return df.to_csv(index=False)


def csv_path_for(json_path: str | os.PathLike[str]) -> Path:
    """``m.json`` → ``m.params.csv`` beside it."""
    p = Path(json_path)
    return p.with_name(p.stem + ".params.csv")


def measurement_text(m: Measurement, where: str = "the measurement") -> str:
    """The JSON text of ``m``, after the checks :func:`load_measurement` makes: what bscrit
    writes, it reads back (a NaN, an int beyond int64 or an NSR that is not N/G is refused here,
    before any file is written).

    Raises:
        ArtifactError: naming each value the reader would refuse, with its key path (exit 3: the
            work is done but its record is not valid).
    """
    try:
        d = m.to_dict()
    except (TypeError, ValueError, AttributeError, OverflowError) as e:  # a field of a wrong type
        raise ArtifactError(
            f"{where} cannot be written: a field is not what a Measurement holds "
            f"({type(e).__name__}: {e})",
            exit_code=ExitCode.RUNTIME,
        ) from None
    problems = [*boundary.json_value_problems(d), *map(str, measurement_problems(d))]
    if not problems:
        try:
            return dumps(d)
        except (TypeError, ValueError) as e:  # a value of `extra` JSON cannot hold
            problems = [f"not JSON ({e})"]
    listed = "\n".join(f"  - {p}" for p in problems)
    raise ArtifactError(
        f"{where} cannot be written: its reader would refuse it:\n{listed}",
        exit_code=ExitCode.RUNTIME,
    )


def write_measurement(m: Measurement, path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write the JSON artifact and the per-parameter CSV beside it, both atomically, after the
    reader's checks (:func:`measurement_text`): nothing is written when one fails."""
    text = measurement_text(m, str(path))
    csv_text = per_parameter_csv(m.per_parameter)
    write_atomic(path, text)
    csv_p = csv_path_for(path)
    try:
        write_atomic(csv_p, csv_text)
    except ArtifactError as e:
        raise ArtifactError(f"{e.message} (wrote {path})", exit_code=e.exit_code) from None
    return Path(path), csv_p
