"""Typed results and their versioned JSON artifacts (``"schema": 1``), written atomically.

The measurement artifact is what ``predict``, ``check`` and ``scale`` read: it holds the point
estimates *and* the m leave-one-group-out values of G and N for each parameter set, so any later
function of G and N gets an interval without torch. No torch import here; pandas only for CSV,
imported lazily.

JSON cannot hold ``inf``: an unbounded value (NSR when Ĝ ≤ 0, the upper end of an interval with
no upper bound) is written as ``null``.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bscrit import __version__
from bscrit.checker import measurement_problems
from bscrit.errors import ArtifactError, ExitCode
from bscrit.optim.registry import OptimizerInfo
from bscrit.stats.equilibrium import EquilibriumInterval
from bscrit.stats.estimators import Estimate, NoiseStats, noise_stats_from_jackknife

# Format history of the JSON artifacts (``"kind"``: ``bscrit.measurement``, ``bscrit.runs.svag``).
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
# The svag artifact (``bscrit.runs.svag``) has its own number, ``SVAG_SCHEMA`` in
# bscrit/svag/results.py, with its own history there (2, issue 15: the calibrated verdict).
SCHEMA = 1
KIND_MEASUREMENT = "bscrit.measurement"
#: ``_UPGRADES[v]`` rewrites a schema-v artifact as schema v + 1 (none yet).
_UPGRADES: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}


def finite_or_none(x: float | None) -> float | None:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return None
    return float(x)


def estimate_dict(e: Estimate) -> dict[str, Any]:
    """JSON form of an :class:`~bscrit.stats.estimators.Estimate` (inf → None)."""
    return {
        "value": finite_or_none(e.value),
        "se": finite_or_none(e.se),
        "ci95": [finite_or_none(e.ci95[0]), finite_or_none(e.ci95[1])],
    }


def _none_to_inf(x: float | None) -> float:
    return math.inf if x is None else float(x)


# ----------------------------------------------------------------------------------------------
# Dataclasses
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParamSetStats:
    """G, N, NSR (with 95% intervals and the jackknife values) and R of one parameter set."""

    G: float
    G_se: float
    G_ci95: tuple[float, float]
    N: float
    N_se: float
    N_ci95: tuple[float, float]
    nsr: float  # inf when Ĝ <= 0
    nsr_ci95: tuple[float, float]  # hi may be inf
    R: float  # ‖x‖² of the set's weights
    num_params: int
    num_tensors: int
    jackknife_G: tuple[float, ...]
    jackknife_N: tuple[float, ...]
    k: int

    @property
    def signal_detected(self) -> bool:
        return self.G_ci95[0] > 0

    def noise_stats(self) -> NoiseStats:
        """Rebuild the :class:`~bscrit.stats.estimators.NoiseStats` (intervals from the jackknife)."""
        return noise_stats_from_jackknife(
            self.G, self.N, self.jackknife_G, self.jackknife_N, self.k
        )

    @staticmethod
    def from_noise_stats(
        s: NoiseStats, *, R: float, num_params: int, num_tensors: int
    ) -> ParamSetStats:
        return ParamSetStats(
            G=s.G.value,
            G_se=s.G.se,
            G_ci95=s.G.ci95,
            N=s.N.value,
            N_se=s.N.se,
            N_ci95=s.N.ci95,
            nsr=s.nsr,
            nsr_ci95=s.nsr_ci95,
            R=R,
            num_params=num_params,
            num_tensors=num_tensors,
            jackknife_G=s.jackknife_G,
            jackknife_N=s.jackknife_N,
            k=s.k,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "G": self.G,
            "G_se": self.G_se,
            "G_ci95": list(self.G_ci95),
            "N": self.N,
            "N_se": self.N_se,
            "N_ci95": list(self.N_ci95),
            "nsr": finite_or_none(self.nsr),
            "nsr_ci95": [finite_or_none(self.nsr_ci95[0]), finite_or_none(self.nsr_ci95[1])],
            "signal_detected": self.signal_detected,
            "R": self.R,
            "num_params": self.num_params,
            "num_tensors": self.num_tensors,
            "k": self.k,
            "jackknife": {"G": list(self.jackknife_G), "N": list(self.jackknife_N)},
        }

    @staticmethod
    def from_dict(d: dict[str, Any]) -> ParamSetStats:
        jk = d["jackknife"]
        return ParamSetStats(
            G=float(d["G"]),
            G_se=float(d["G_se"]),
            G_ci95=(float(d["G_ci95"][0]), float(d["G_ci95"][1])),
            N=float(d["N"]),
            N_se=float(d["N_se"]),
            N_ci95=(float(d["N_ci95"][0]), float(d["N_ci95"][1])),
            nsr=_none_to_inf(d["nsr"]),
            nsr_ci95=(_none_to_inf(d["nsr_ci95"][0]), _none_to_inf(d["nsr_ci95"][1])),
            R=float(d["R"]),
            num_params=int(d["num_params"]),
            num_tensors=int(d["num_tensors"]),
            jackknife_G=tuple(float(x) for x in jk["G"]),
            jackknife_N=tuple(float(x) for x in jk["N"]),
            k=int(d["k"]),
        )


@dataclass(frozen=True)
class Equilibrium:
    """[LMA21] eq. (11) on the scale-invariant part: (2 − ηλ) λ R = η (G + N).

    ``residual`` ρ = (2 − ηλ) λ R / (η (G + N)) − 1; |ρ| large means "not at equilibrium".
    """

    lr: float
    weight_decay: float
    R: float
    G: float
    N: float
    lhs: float
    rhs: float
    residual: float
    param_set: str  # "scale_invariant" | "all"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Equilibrium:
        return Equilibrium(**{k: (v if k == "param_set" else float(v)) for k, v in d.items()})


@dataclass(frozen=True)
class ParameterRow:
    """Per-tensor breakdown (no intervals: one row per trainable tensor)."""

    name: str
    shape: tuple[int, ...]
    numel: int
    G: float
    N: float
    R: float
    scale_invariant: bool
    invariance_ratio: float  # Σ|⟨W, g⟩| / Σ‖W‖‖g‖ (docs/theory.md §3); ~0: scale-invariant

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        d["invariance_ratio"] = finite_or_none(self.invariance_ratio)
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> ParameterRow:
        ir = d.get("invariance_ratio")
        return ParameterRow(
            name=str(d["name"]),
            shape=tuple(int(s) for s in d["shape"]),
            numel=int(d["numel"]),
            G=float(d["G"]),
            N=float(d["N"]),
            R=float(d["R"]),
            scale_invariant=bool(d["scale_invariant"]),
            invariance_ratio=math.nan if ir is None else float(ir),
        )


@dataclass(frozen=True)
class CheckpointStats:
    """One checkpoint's measurement (before pooling)."""

    path: str
    all: ParamSetStats
    scale_invariant: ParamSetStats | None
    equilibrium: Equilibrium | None
    elapsed_s: float
    step: int | None = None  # the training step saved with it (or after it, when sampled)
    examples_seen: int | None = None  # training examples consumed before it (null: unknown)
    tokens_seen: int | None = None  # training tokens consumed before it (HF Trainer; null: unknown)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "step": self.step,
            "examples_seen": self.examples_seen,
            "tokens_seen": self.tokens_seen,
            "elapsed_s": self.elapsed_s,
            "stats": {
                "all": self.all.to_dict(),
                "scale_invariant": (
                    self.scale_invariant.to_dict() if self.scale_invariant else None
                ),
            },
            "equilibrium": self.equilibrium.to_dict() if self.equilibrium else None,
        }

    @staticmethod
    def from_dict(d: dict[str, Any]) -> CheckpointStats:
        st = d["stats"]
        return CheckpointStats(
            path=str(d["path"]),
            all=ParamSetStats.from_dict(st["all"]),
            scale_invariant=(
                ParamSetStats.from_dict(st["scale_invariant"])
                if st.get("scale_invariant")
                else None
            ),
            equilibrium=Equilibrium.from_dict(d["equilibrium"]) if d.get("equilibrium") else None,
            elapsed_s=float(d.get("elapsed_s", 0.0)),
            step=None if d.get("step") is None else int(d["step"]),
            examples_seen=None if d.get("examples_seen") is None else int(d["examples_seen"]),
            tokens_seen=None if d.get("tokens_seen") is None else int(d["tokens_seen"]),
        )


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
# I/O
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
    kind's own, e.g. ``bscrit.runs.svag``'s) is accepted (older ones are upgraded step by step with
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


def read_json(path: str | os.PathLike[str], what: str = "bscrit JSON artifact") -> Any:
    """Read a JSON file, turning every failure into an :class:`ArtifactError` naming the file.

    ``what`` names the expected file in the message for a binary file ("not a bscrit
    measurement"): a checkpoint passed where a JSON artifact belongs.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ArtifactError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise ArtifactError(f"{p}: is a folder, expected a JSON file") from None
    except UnicodeDecodeError:
        raise ArtifactError(f"{p}: not a {what} (a binary file; a checkpoint?)") from None
    except OSError as e:
        raise ArtifactError(f"{p}: cannot read ({e.strerror})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ArtifactError(
            f"{p}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})"
        ) from None


def load_measurement(path: str | os.PathLike[str]) -> Measurement:
    """Read and validate a measurement artifact written by ``bscrit measure``."""
    return Measurement.from_dict(read_json(path, "bscrit measurement"), source=str(path))


def write_error(path: str | os.PathLike[str], e: OSError) -> ArtifactError:
    """A write that failed after the work (disk full, folder removed): exit 3, naming the path."""
    return ArtifactError(f"cannot write {path} ({e.strerror or e})", exit_code=ExitCode.RUNTIME)


def _file_mode() -> int:
    """0o666 less the user's umask: what ``open()`` would give a new file."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically (temp file in the same folder, then rename).

    An interrupted or failed run never leaves a half-written file behind. The file gets the
    user's umask (a temp file is created 0600). An OS error is raised as :func:`write_error`.
    """
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    except OSError as e:
        raise write_error(p, e) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode())
        os.replace(tmp, p)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise write_error(p, e) from None
        raise


def dumps(d: dict[str, Any]) -> str:
    return json.dumps(d, indent=2, allow_nan=False) + "\n"


def write_json(path: str | os.PathLike[str], d: dict[str, Any]) -> None:
    write_atomic(path, dumps(d))


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


def write_measurement(m: Measurement, path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write the JSON artifact and the per-parameter CSV beside it, both atomically."""
    text = dumps(m.to_dict())
    csv_text = per_parameter_csv(m.per_parameter)
    write_atomic(path, text)
    csv_p = csv_path_for(path)
    try:
        write_atomic(csv_p, csv_text)
    except ArtifactError as e:
        raise ArtifactError(f"{e.message} (wrote {path})", exit_code=e.exit_code) from None
    return Path(path), csv_p
