"""Branched training at B and B' as a versioned artifact: the branches, the verdict, and
``confirm.json`` with ``curves.csv`` (pure: no torch).

:mod:`bscrit.runs.confirm.run` trains a base branch at B and a target branch at B' for every seed
(docs/confirm.md); this module holds what they produce (:class:`Branch`, :class:`ConfirmResult`,
the verdict of :mod:`bscrit.runs.confirm.verdict`) and writes the folder of ``bscrit confirm
--out`` atomically (:data:`CONFIRM_ARTIFACT`).

Format history of ``confirm.json``, its own (the rule at the top of
:mod:`bscrit.artifacts.measurement`; independent of the measurement's schema):
1 (0.3): the first. Later, within schema 1: ``tolerance_unit`` may be ``"absolute"``
(``--tolerance-abs``: d = L_B' − L_B in the loss's units, in every ``d``, ``per_seed`` and
``train_loss_difference`` value and under the key ``relative_difference`` too, kept for the
schema; the per-seed rows then say ``absolute_difference``); a file without the key, or with the
relative sentence, reads as relative.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bscrit.artifacts.jsonvalues import finite_or_none
from bscrit.optim.registry import OptimizerInfo
from bscrit.runs.common.artifact import (
    RunArtifact,
    csv_table,
    values_from_json,
    values_to_json,
)
from bscrit.runs.common.result import RunResult
from bscrit.runs.confirm.verdict import (
    DEFAULT_TAIL_POINTS,
    ConfirmVerdict,
    criterion,
    difference,
    t_interval,
    unit_label,
)

__all__ = ["CONFIRM_ARTIFACT", "CONFIRM_SCHEMA", "KIND_CONFIRM", "Branch", "ConfirmResult",
           "confirm_paths", "curves_csv", "load_confirm", "write_confirm"]  # fmt: skip

KIND_CONFIRM = "bscrit.confirm"
#: Schema of ``confirm.json`` (its own history: module docstring).
CONFIRM_SCHEMA = 1


@dataclass(frozen=True)
class Branch:
    """One branch of one seed: its loss (and other test functions) on the grid."""

    name: str  # "base" (B, the run's hyperparameters) | "target" (B', scaled)
    seed: int
    batch_size: int
    steps: tuple[int, ...]  # optimizer steps done at each grid point
    examples: tuple[int, ...]  # training examples seen at each grid point
    values: Mapping[str, tuple[float, ...]]  # NaN after a divergence
    diverged_at: int | None = None  # examples at the first grid point where it diverged
    elapsed_s: float = 0.0

    def final(self, metric: str, tail_points: int = DEFAULT_TAIL_POINTS) -> float:
        """Mean of ``metric`` over the last ``tail_points`` grid points (NaN when diverged)."""
        vals = self.values.get(metric)
        if not vals:
            return math.nan
        tail = vals[-max(1, min(tail_points, len(vals))) :]
        return math.fsum(tail) / len(tail)

    def to_dict(self) -> dict[str, Any]:
        return {
            "branch": self.name,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "steps": list(self.steps),
            "examples": list(self.examples),
            "values": values_to_json(self.values),
            "diverged_at": self.diverged_at,
            "elapsed_s": self.elapsed_s,
        }

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> Branch:
        diverged = d.get("diverged_at")
        return Branch(
            name=str(d["branch"]), seed=int(d["seed"]), batch_size=int(d["batch_size"]),
            steps=tuple(int(x) for x in d["steps"]),
            examples=tuple(int(x) for x in d["examples"]), values=values_from_json(d["values"]),
            diverged_at=None if diverged is None else int(diverged),
            elapsed_s=float(d.get("elapsed_s", 0.0)),
        )  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class ConfirmResult(RunResult):
    """Everything ``bscrit confirm`` produced: both branches' setup, every seed, the verdict.

    ``schedule`` is the spec's, in base steps; ``forward_backward``: branch → passes over all
    seeds."""

    base_optimizer: OptimizerInfo
    examples: int  # E' = T'·B', the target branch's examples (the base's within B/2)
    examples_why: str
    seeds: tuple[int, ...]
    branches: tuple[Branch, ...]  # base and target of every seed, in seed order
    verdict: ConfirmVerdict
    tail_points: int = DEFAULT_TAIL_POINTS
    decay: str | None = None  # "linear to 0 over the last 20% of each branch's steps" or None
    dataset_size: int = 0
    optimizer_state: str = ""  # how both branches' optimizer state starts

    def branch(self, name: str, seed: int) -> Branch | None:
        return next((b for b in self.branches if b.name == name and b.seed == seed), None)

    def finals(self, name: str, metric: str | None = None) -> list[float]:
        """Final loss (``metric``, default the verdict's) of branch ``name``, per seed."""
        m = metric or self.verdict.metric
        return [b.final(m, self.tail_points) for s in self.seeds if (b := self.branch(name, s))]

    def curves(self) -> list[Mapping[str, Sequence[float]]]:
        return [b.values for b in self.branches]

    def epochs(self) -> float:
        """Examples of one branch of one seed, in epochs of the training set."""
        return self.examples / self.dataset_size if self.dataset_size else math.nan

    def _per_seed(self) -> list[dict[str, Any]]:
        """Per seed: d and the final value of every test function in each branch."""
        out = []
        key = f"{self.verdict.unit}_difference"  # relative_difference | absolute_difference
        for s, d in zip(self.seeds, self.verdict.per_seed, strict=True):
            row: dict[str, Any] = {"seed": s, key: finite_or_none(d)}
            for name in ("base", "target"):
                b = self.branch(name, s)
                row[name] = {k: finite_or_none(b.final(k, self.tail_points)) if b else None
                             for k in self.metrics()}  # fmt: skip
            out.append(row)
        return out

    def _train_loss_difference(self) -> dict[str, Any]:
        """d of the training loss (in the verdict's unit), when the verdict is on the held-out
        loss."""
        pairs = zip(self.finals("base", "train_loss"), self.finals("target", "train_loss"),
                    strict=True)  # fmt: skip
        d = [difference(b, t, self.verdict.unit) for b, t in pairs]
        mean, _, ci = t_interval(d)
        return {"per_seed": [finite_or_none(x) for x in d], "mean": finite_or_none(mean),
                "ci95": None if ci is None else [finite_or_none(x) for x in ci]}  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        m, v = self.verdict.metric, self.verdict
        method = "branched training at B and B' from one checkpoint (Merrill et al. 2025)"
        out: dict[str, Any] = {
            **self.head_dict(CONFIRM_ARTIFACT, method),
            "verdict": v.code,
            "verdict_text": v.text,
            **self.scaling_dict("base_batch_size"),
            "hyperparameters": {
                "base": self.base_optimizer.to_dict(),
                "target": self.target_optimizer.to_dict(),
            },  # fmt: skip
            "optimizer_state": self.optimizer_state,
            "schedule": self.schedule,
            "start_step": self.start_step,
            "decay": self.decay,
            "examples": self.examples,
            "examples_why": self.examples_why,
            "epochs": finite_or_none(self.epochs()),
            "dataset_size": self.dataset_size,
            "seeds": list(self.seeds),
            "tolerance": v.tolerance,
            "tolerance_unit": unit_label(v.unit),
            "metric": m,
            "tail_points": self.tail_points,
            "criterion": criterion(v.tolerance, m, self.tail_points, v.unit),
            "relative_difference": v.to_dict(),
            "losses": {
                "base": [finite_or_none(x) for x in self.finals("base")],
                "target": [finite_or_none(x) for x in self.finals("target")],
            },  # fmt: skip
            "per_seed": self._per_seed(),
            "eval_batches": self.eval_batches,
            "eval_examples": self.eval_examples,
            "cost": {**self.cost_dict(), "training_examples": 2 * self.examples * len(self.seeds)},
            "branches": [b.to_dict() for b in self.branches],
            "runtime_s": self.elapsed_s,
            "notes": list(self.notes),
            "warnings": list(self.warnings),
        }
        if m == "eval_loss":
            out["train_loss_difference"] = self._train_loss_difference()
        return out

    @staticmethod
    def from_dict(d: dict[str, Any], source: str = "<dict>") -> ConfirmResult:
        d = CONFIRM_ARTIFACT.check(d, source)
        try:
            hp = d["hyperparameters"]
            return ConfirmResult(
                **RunResult.common_fields(d, "base_batch_size"),
                base_optimizer=OptimizerInfo.from_dict(hp["base"]),
                target_optimizer=OptimizerInfo.from_dict(hp["target"]),
                examples=int(d["examples"]),
                examples_why=str(d.get("examples_why", "")),
                seeds=tuple(int(s) for s in d["seeds"]),
                branches=tuple(Branch.from_dict(b) for b in d["branches"]),
                verdict=_verdict(d),
                tail_points=int(d.get("tail_points", DEFAULT_TAIL_POINTS)),
                decay=d.get("decay"),
                dataset_size=int(d.get("dataset_size", 0)),
                eval_batches=int(d.get("eval_batches", 0)),
                eval_examples=d.get("eval_examples"),
                optimizer_state=str(d.get("optimizer_state", "")),
                forward_backward={
                    str(k): int(v) for k, v in d["cost"]["forward_backward_passes"].items()
                },
                device=str(d.get("device", "cpu")),
                elapsed_s=float(d.get("runtime_s", 0.0)),
            )
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise CONFIRM_ARTIFACT.malformed(source, e) from None


def _verdict(d: Mapping[str, Any]) -> ConfirmVerdict:
    """The verdict of ``confirm.json``; its unit from the top-level ``tolerance_unit`` when the
    verdict's own lacks it (absent from both: relative, as every file before absolute δ)."""
    v = dict(d["relative_difference"])
    v.setdefault("tolerance_unit", d.get("tolerance_unit"))
    return ConfirmVerdict.from_dict(v)


def curves_csv(result: ConfirmResult) -> str:
    """One row per (seed, branch, grid point): ``seed, branch, batch_size, step, examples,
    <test functions>``; non-finite values as empty cells."""
    rows = (
        ([b.seed, b.name, b.batch_size, step, ex], b.values, i)
        for b in result.branches
        for i, (step, ex) in enumerate(zip(b.steps, b.examples, strict=True))
    )
    return csv_table(["seed", "branch", "batch_size", "step", "examples"], result.metrics(), rows)


#: The folder of ``bscrit confirm --out``: ``confirm.json`` (schema :data:`CONFIRM_SCHEMA`, no
#: upgrades yet) and ``curves.csv``.
CONFIRM_ARTIFACT: RunArtifact[ConfirmResult] = RunArtifact(
    kind=KIND_CONFIRM, schema=CONFIRM_SCHEMA, json_name="confirm.json", csv_name="curves.csv",
    name="confirm", command="bscrit confirm", to_csv=curves_csv,
    from_dict=ConfirmResult.from_dict,
)  # fmt: skip
#: The two files in an ``--out`` folder, writing them (atomically), reading ``confirm.json`` (or
#: the folder holding it).
confirm_paths = CONFIRM_ARTIFACT.paths
write_confirm = CONFIRM_ARTIFACT.write
load_confirm = CONFIRM_ARTIFACT.load
