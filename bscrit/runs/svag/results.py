"""SVAG trajectories and the verdict, as a versioned artifact (pure: no torch).

SVAG here is the *Stochastic Variance Amplified Gradient* of Li, Malladi & Arora [LMA21 §4]
(and its adaptive version [MLPA22 §6]), not Balles & Hennig's "stochastic variance-adapted
gradient" (the M-SVAG optimiser), which shares the acronym.

:mod:`bscrit.runs.svag.run` runs the optimizer once per SVAG parameter l and records test functions at
equal *effective steps* (SVAG steps / l). This module holds what those runs produce
(:class:`SvagRun`, :class:`SvagResult`), reads them with the calibrated verdict of
:mod:`bscrit.runs.svag.verdict` (:func:`svag_verdict`: SGD against its SDE as C-closeness of [LMA21]
Def. 5.1) and writes ``svag.json`` (``"schema": 2``, ``"kind": "bscrit.runs.svag"``) and
``trajectories.csv`` atomically.

Format history of ``svag.json`` (the rule at the top of :mod:`bscrit.artifacts.measurement`):
1 (0.1): ``summaries``, ``comparisons``, ``thresholds`` {rtol, z, tail}; ``verdict`` {code, text,
  reference_l, high_ls, metrics, failing} from pairwise agreement within rtol.
2 (issue 15): the calibrated verdict; ``summaries``, ``comparisons`` and ``thresholds`` are gone;
  ``verdict`` holds the ratios SGD/SDE with 95% intervals, C, the SDE estimates (extrapolated or
  largest l), the tail window and its statistics; ``relaxation_steps`` at top level. A schema-1
  file is upgraded by recomputing the verdict from its trajectories (C² = 2, τ from its target
  optimizer).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bscrit import __version__
from bscrit.artifacts.measurement import (
    OptimizerInfo,
    check_schema,
    dumps,
    finite_or_none,
    read_json,
)
from bscrit.errors import ArtifactError
from bscrit.optim import registry as optim
from bscrit.runs.svag.verdict import DECISION_METRICS, Verdict, VerdictConfig, decide
from bscrit.stats.equilibrium import relaxation_steps as _relaxation_steps

KIND_SVAG = "bscrit.runs.svag"
#: Schema of ``svag.json`` (its own history: module docstring).
SVAG_SCHEMA = 2

#: Test functions that decide the verdict (when present).
VERDICT_METRICS: tuple[str, ...] = DECISION_METRICS
#: Display order and labels of every test function bscrit records.
METRIC_LABELS: dict[str, str] = {
    "train_loss": "train loss",
    "train_acc": "train acc",
    "eval_loss": "held-out loss",
    "eval_acc": "held-out acc",
    "G": "G = ‖∇L‖²",
    "N": "N = Tr Σ at B'",
    "norm_sq": "‖x‖²",
}


def _none_to_nan(x: float | None) -> float:
    return math.nan if x is None else float(x)


# ----------------------------------------------------------------------------------------------
# One run
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SvagRun:
    """One SVAG run with parameter l, from the checkpoint, at the target batch size.

    Attributes:
        l: SVAG parameter (1 = the plain optimizer).
        optimizer: the hyperparameters actually used (target ones after the SVAG rule of §6).
        steps: SVAG steps taken, l × effective steps (fewer if it diverged).
        effective_steps: the evaluation points, in effective steps (SVAG steps / l).
        values: test function → its value at each evaluation point (NaN when not finite).
        diverged_at: effective step at which a non-finite value first appeared, or None.
        elapsed_s: wall time of the run, evaluation included.
    """

    l: int  # noqa: E741
    optimizer: OptimizerInfo
    steps: int
    effective_steps: tuple[float, ...]
    values: dict[str, tuple[float, ...]]
    diverged_at: float | None = None
    elapsed_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "l": self.l,
            "optimizer": self.optimizer.to_dict(),
            "steps": self.steps,
            "diverged_at": self.diverged_at,
            "elapsed_s": self.elapsed_s,
            "effective_steps": list(self.effective_steps),
            "values": {k: [finite_or_none(v) for v in vs] for k, vs in self.values.items()},
        }

    @staticmethod
    def from_dict(d: dict[str, Any]) -> SvagRun:
        return SvagRun(
            l=int(d["l"]),
            optimizer=OptimizerInfo.from_dict(d["optimizer"]),
            steps=int(d["steps"]),
            effective_steps=tuple(float(e) for e in d["effective_steps"]),
            values={k: tuple(_none_to_nan(v) for v in vs) for k, vs in d["values"].items()},
            diverged_at=None if d.get("diverged_at") is None else float(d["diverged_at"]),
            elapsed_s=float(d.get("elapsed_s", 0.0)),
        )


# ----------------------------------------------------------------------------------------------
# The artifact
# ----------------------------------------------------------------------------------------------


def svag_verdict(
    runs: Sequence[SvagRun],
    target_optimizer: OptimizerInfo,
    target_batch_size: int,
    config: VerdictConfig | None = None,
    eval_batches: int | None = None,
) -> tuple[Verdict, float | None]:
    """The calibrated verdict of the runs (:func:`bscrit.runs.svag.verdict.decide`) and τ at B'.

    τ = 1/(2η'λ) of the *target* optimizer (l = 1) in steps at B' = effective steps
    (:func:`bscrit.stats.equilibrium.relaxation_steps`); the words name the optimizer and its rule.
    """
    tau, note = _relaxation_steps(target_optimizer)
    d = optim.REGISTRY.get(target_optimizer.name.lower())
    verdict = decide(
        runs,
        tau,
        config=config,
        relaxation_note=note,
        target_batch_size=target_batch_size,
        run_name=d.torch_class if d is not None else target_optimizer.name,
        rule=f"{d.rule} scaling rule" if d is not None else "scaling rule",
        eval_batches=eval_batches,
    )
    return verdict, tau


def _upgrade_1_to_2(d: dict[str, Any]) -> dict[str, Any]:
    """Schema 1 → 2: drop the pairwise comparisons and recompute the verdict from the runs."""
    d = {k: v for k, v in d.items() if k not in ("summaries", "comparisons", "thresholds")}
    runs = [SvagRun.from_dict(r) for r in d["runs"]]
    verdict, tau = svag_verdict(
        runs, OptimizerInfo.from_dict(d["target_optimizer"]), int(d["target_batch_size"]),
        eval_batches=int(d["eval_batches"]),
    )  # fmt: skip
    d["verdict"] = verdict.to_dict()
    d["relaxation_steps"] = tau
    d.setdefault("notes", []).append("upgraded from schema 1: verdict recomputed (C² = 2)")
    return d


_SVAG_UPGRADES = {1: _upgrade_1_to_2}


@dataclass(frozen=True)
class SvagResult:
    """Everything ``bscrit svag`` produced: setup, cost, runs and the calibrated verdict."""

    batch_size: int  # B of the run the checkpoint comes from
    target_batch_size: int  # B'
    kappa: float
    rule: str  # "linear" | "square-root" | "given" (all hyperparameters from the command line)
    rule_reference: str
    base_optimizer: OptimizerInfo | None
    target_optimizer: OptimizerInfo
    ls: tuple[int, ...]
    effective_steps: int
    eval_every: int
    eval_batches: int
    eval_examples: int | None
    seed: int
    device: str
    forward_backward: dict[int, int]  # l -> forward-backward passes (training + evaluation)
    runs: tuple[SvagRun, ...]
    verdict: Verdict
    relaxation_steps: float | None = None  # τ = 1/(2η'λ) at B', in effective steps
    sizing: str = ""  # how the run length was chosen
    schedule: dict[str, Any] = field(default_factory=dict)
    start_step: float = 0.0
    spec: str | None = None
    checkpoint: str | None = None
    elapsed_s: float = 0.0
    notes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    bscrit_version: str = __version__

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SVAG_SCHEMA,
            "kind": KIND_SVAG,
            "bscrit_version": self.bscrit_version,
            "method": "SVAG, Stochastic Variance Amplified Gradient [LMA21 §4; MLPA22 §6]",
            "spec": self.spec,
            "checkpoint": self.checkpoint,
            "device": self.device,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "target_batch_size": self.target_batch_size,
            "kappa": self.kappa,
            "rule": self.rule,
            "rule_reference": self.rule_reference,
            "optimizer": self.base_optimizer.to_dict() if self.base_optimizer else None,
            "target_optimizer": self.target_optimizer.to_dict(),
            "schedule": self.schedule,
            "start_step": self.start_step,
            "ls": list(self.ls),
            "effective_steps": self.effective_steps,
            "relaxation_steps": finite_or_none(self.relaxation_steps),
            "sizing": self.sizing,
            "eval_every": self.eval_every,
            "eval_batches": self.eval_batches,
            "eval_examples": self.eval_examples,
            "cost": {
                "forward_backward_passes": {str(k): v for k, v in self.forward_backward.items()},
                "total": sum(self.forward_backward.values()),
            },
            "verdict": self.verdict.to_dict(),
            "runs": [r.to_dict() for r in self.runs],
            "elapsed_s": self.elapsed_s,
            "notes": list(self.notes),
            "warnings": list(self.warnings),
        }

    @staticmethod
    def from_dict(d: dict[str, Any], source: str = "<dict>") -> SvagResult:
        try:
            d = check_schema(d, KIND_SVAG, source, schema=SVAG_SCHEMA, upgrades=_SVAG_UPGRADES)
            tau = d.get("relaxation_steps")
            return SvagResult(
                batch_size=int(d["batch_size"]),
                target_batch_size=int(d["target_batch_size"]),
                kappa=float(d["kappa"]),
                rule=str(d["rule"]),
                rule_reference=str(d["rule_reference"]),
                base_optimizer=(
                    OptimizerInfo.from_dict(d["optimizer"]) if d.get("optimizer") else None
                ),
                target_optimizer=OptimizerInfo.from_dict(d["target_optimizer"]),
                ls=tuple(int(x) for x in d["ls"]),
                effective_steps=int(d["effective_steps"]),
                eval_every=int(d["eval_every"]),
                eval_batches=int(d["eval_batches"]),
                eval_examples=None if d.get("eval_examples") is None else int(d["eval_examples"]),
                seed=int(d["seed"]),
                device=str(d["device"]),
                forward_backward={
                    int(k): int(v) for k, v in d["cost"]["forward_backward_passes"].items()
                },
                runs=tuple(SvagRun.from_dict(r) for r in d["runs"]),
                verdict=Verdict.from_dict(d["verdict"]),
                relaxation_steps=None if tau is None else float(tau),
                sizing=str(d.get("sizing", "")),
                schedule=dict(d.get("schedule") or {}),
                start_step=float(d.get("start_step", 0.0)),
                spec=d.get("spec"),
                checkpoint=d.get("checkpoint"),
                elapsed_s=float(d.get("elapsed_s", 0.0)),
                notes=tuple(str(n) for n in d.get("notes", [])),
                warnings=tuple(str(w) for w in d.get("warnings", [])),
                bscrit_version=str(d.get("bscrit_version", "?")),
            )
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise ArtifactError(
                f"{source}: malformed SVAG artifact ({type(e).__name__}: {e}); "
                "expected the svag.json written by `bscrit svag --out`"
            ) from None

    def metrics(self) -> list[str]:
        """The test functions every run recorded, in display order."""
        present = [m for m in METRIC_LABELS if all(m in r.values for r in self.runs)]
        extra = [
            m
            for m in (self.runs[0].values if self.runs else {})
            if m not in present and all(m in r.values for r in self.runs)
        ]
        return present + extra


def trajectories_csv(result: SvagResult) -> str:
    """One row per (l, evaluation point): ``l, step, effective_step, <test functions>``.

    Non-finite values are written as empty cells."""
    metrics = result.metrics()
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["l", "step", "effective_step", *metrics])
    for run in result.runs:
        for i, e in enumerate(run.effective_steps):
            row: list[Any] = [run.l, round(e * run.l), repr(float(e))]
            for m in metrics:
                v = run.values[m][i]
                row.append(repr(float(v)) if math.isfinite(v) else "")
            w.writerow(row)
    return buf.getvalue()


def svag_paths(out_dir: str | Path) -> tuple[Path, Path]:
    """The two files :func:`write_svag` writes into ``out_dir``."""
    return Path(out_dir) / "svag.json", Path(out_dir) / "trajectories.csv"


def write_svag(result: SvagResult, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``svag.json`` and ``trajectories.csv`` into ``out_dir`` (created), atomically."""
    from bscrit.artifacts.folders import write_folder

    files = [("svag.json", dumps(result.to_dict())), ("trajectories.csv", trajectories_csv(result))]
    j, c = write_folder(out_dir, files)
    return j, c


def load_svag(path: str | Path) -> SvagResult:
    """Read an ``svag.json`` (or the folder holding it) written by ``bscrit svag --out``."""
    from bscrit.artifacts.folders import file_in

    p = file_in(path, "svag.json")
    return SvagResult.from_dict(read_json(p), source=str(p))
