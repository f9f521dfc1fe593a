"""SVAG trajectories and the verdict, as a versioned artifact (pure: no torch).

SVAG here is the *Stochastic Variance Amplified Gradient* of Li, Malladi & Arora [LMA21 §4]
(and its adaptive version [MLPA22 §6]), not Balles & Hennig's "stochastic variance-adapted
gradient" (the M-SVAG optimiser), which shares the acronym.

:mod:`bscrit.runs.svag.run` runs the optimizer once per SVAG parameter l and records test functions
at equal *effective steps* (SVAG steps / l). This module holds what those runs produce
(:class:`SvagRun`, :class:`SvagResult`), reads them with the calibrated verdict of
:mod:`bscrit.runs.svag.verdict` (:func:`svag_verdict`: SGD against its SDE as C-closeness of [LMA21]
Def. 5.1) and writes ``svag.json`` (``"schema": 2``, ``"kind": "bscrit.svag"``) and
``trajectories.csv`` atomically (:data:`SVAG_ARTIFACT`).

Format history of ``svag.json``, its own (the rule at the top of
:mod:`bscrit.artifacts.measurement`):
1 (0.1): ``summaries``, ``comparisons``, ``thresholds`` {rtol, z, tail}; ``verdict`` {code, text,
  reference_l, high_ls, metrics, failing} from pairwise agreement within rtol.
2 (issue 15): the calibrated verdict; ``summaries``, ``comparisons`` and ``thresholds`` are gone;
  ``verdict`` holds the ratios SGD/SDE with 95% intervals, C, the SDE estimates (extrapolated or
  largest l), the tail window and its statistics; ``relaxation_steps`` at top level. A schema-1
  file is upgraded by recomputing the verdict from its trajectories (C² = 2, τ from its target
  optimizer).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bscrit.artifacts.jsonvalues import finite_or_none
from bscrit.optim import registry as optim
from bscrit.optim.registry import OptimizerInfo
from bscrit.runs.common.artifact import (
    RunArtifact,
    csv_table,
    values_from_json,
    values_to_json,
)
from bscrit.runs.common.result import RunResult
from bscrit.runs.svag.verdict import DECISION_METRICS, Verdict, VerdictConfig, decide
from bscrit.stats.equilibrium import relaxation_steps as _relaxation_steps

__all__ = ["KIND_SVAG", "SVAG_ARTIFACT", "SVAG_SCHEMA", "SvagResult", "SvagRun",
           "load_svag", "svag_paths", "svag_verdict", "trajectories_csv", "write_svag"]  # fmt: skip

KIND_SVAG = "bscrit.svag"
#: Schema of ``svag.json`` (its own history: module docstring).
SVAG_SCHEMA = 2

#: Test functions that decide the verdict (when present).
VERDICT_METRICS: tuple[str, ...] = DECISION_METRICS


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
            "values": values_to_json(self.values),
        }

    @staticmethod
    def from_dict(d: dict[str, Any]) -> SvagRun:
        return SvagRun(
            l=int(d["l"]),
            optimizer=OptimizerInfo.from_dict(d["optimizer"]),
            steps=int(d["steps"]),
            effective_steps=tuple(float(e) for e in d["effective_steps"]),
            values=values_from_json(d["values"]),
            diverged_at=None if d.get("diverged_at") is None else float(d["diverged_at"]),
            elapsed_s=float(d.get("elapsed_s", 0.0)),
        )


# ----------------------------------------------------------------------------------------------
# The verdict and the artifact
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
    if target_optimizer.name.lower() == "sgd" and target_optimizer.momentum > 0:
        verdict = dataclasses.replace(verdict, text=(
            f"{verdict.text} A heuristic reading for momentum SGD (μ = "
            f"{target_optimizer.momentum:g}): [LMA21]'s SDE and SVAG are for plain SGD, and SVAG "
            "keeps the momentum unchanged."))  # fmt: skip
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


@dataclass(frozen=True, kw_only=True)
class SvagResult(RunResult):
    """Everything ``bscrit svag`` produced: setup, cost, runs and the calibrated verdict.

    ``forward_backward``: l → forward-backward passes (training + evaluation); ``rule`` is
    "given" when every hyperparameter came from the command line (no base optimizer)."""

    ls: tuple[int, ...]
    effective_steps: int
    eval_every: int
    seed: int
    runs: tuple[SvagRun, ...]
    verdict: Verdict
    relaxation_steps: float | None = None  # τ = 1/(2η'λ) at B', in effective steps
    sizing: str = ""  # how the run length was chosen

    def curves(self) -> list[Mapping[str, Sequence[float]]]:
        return [r.values for r in self.runs]

    def to_dict(self) -> dict[str, Any]:
        method = "SVAG, Stochastic Variance Amplified Gradient [LMA21 §4; MLPA22 §6]"
        return {
            **self.head_dict(SVAG_ARTIFACT, method),
            "seed": self.seed,
            **self.scaling_dict("batch_size"),
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
            "cost": self.cost_dict(),
            "verdict": self.verdict.to_dict(),
            "runs": [r.to_dict() for r in self.runs],
            "elapsed_s": self.elapsed_s,
            "notes": list(self.notes),
            "warnings": list(self.warnings),
        }

    @staticmethod
    def from_dict(d: dict[str, Any], source: str = "<dict>") -> SvagResult:
        try:
            d = SVAG_ARTIFACT.check(d, source)
            tau, base = d.get("relaxation_steps"), d.get("optimizer")
            return SvagResult(
                **RunResult.common_fields(d, "batch_size"),
                base_optimizer=OptimizerInfo.from_dict(base) if base else None,
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
                elapsed_s=float(d.get("elapsed_s", 0.0)),
            )
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise SVAG_ARTIFACT.malformed(source, e) from None


def trajectories_csv(result: SvagResult) -> str:
    """One row per (l, evaluation point): ``l, step, effective_step, <test functions>``.

    Non-finite values are written as empty cells."""
    rows = (
        ([run.l, round(e * run.l), repr(float(e))], run.values, i)
        for run in result.runs
        for i, e in enumerate(run.effective_steps)
    )
    return csv_table(["l", "step", "effective_step"], result.metrics(), rows)


#: The folder of ``bscrit svag --out``: ``svag.json`` (schema :data:`SVAG_SCHEMA`, its own
#: upgrades) and ``trajectories.csv``.
SVAG_ARTIFACT: RunArtifact[SvagResult] = RunArtifact(
    kind=KIND_SVAG, schema=SVAG_SCHEMA, json_name="svag.json", csv_name="trajectories.csv",
    name="SVAG", command="bscrit svag", upgrades={1: _upgrade_1_to_2}, to_csv=trajectories_csv,
    from_dict=SvagResult.from_dict,
)  # fmt: skip
#: The two files in an ``--out`` folder, writing them (atomically), reading ``svag.json`` (or the
#: folder holding it).
svag_paths = SVAG_ARTIFACT.paths
write_svag = SVAG_ARTIFACT.write
load_svag = SVAG_ARTIFACT.load
