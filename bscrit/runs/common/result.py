"""What every run records besides its curves: the two batch sizes and the optimizer at each, the
schedule, the evaluation, the cost, where it ran; and the test functions it records (pure: no
torch).

:class:`RunResult` is the base of :class:`~bscrit.runs.svag.results.SvagResult` and
:class:`~bscrit.runs.confirm.results.ConfirmResult`; each adds its runs, its verdict and its JSON
keys, and builds its JSON from the pieces here so that the shared keys are written and read in
one place.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bscrit import __version__
from bscrit.optim.registry import OptimizerInfo
from bscrit.runs.common.artifact import RunArtifact

__all__ = ["METRIC_LABELS", "RunResult", "ordered_metrics"]

#: Display order and labels of every test function bscrit records
#: (:class:`~bscrit.runs.common.evaluation.ModelEvaluator`).
METRIC_LABELS: dict[str, str] = {
    "train_loss": "train loss",
    "train_acc": "train acc",
    "eval_loss": "held-out loss",
    "eval_acc": "held-out acc",
    "G": "G = ‖∇L‖²",
    "N": "N = Tr Σ at B'",
    "norm_sq": "‖x‖²",
}


def ordered_metrics(curves: Sequence[Mapping[str, Any]]) -> list[str]:
    """The test functions every curve recorded: those of :data:`METRIC_LABELS` in its order,
    then any other in the order of the first curve."""
    present = [m for m in METRIC_LABELS if all(m in c for c in curves)]
    extra = [m for m in (curves[0] if curves else {})
             if m not in present and all(m in c for c in curves)]  # fmt: skip
    return present + extra


@dataclass(frozen=True, kw_only=True)
class RunResult:
    """The setup every run command records (its subclasses add the runs and the verdict)."""

    batch_size: int  # B of the run the checkpoint comes from
    target_batch_size: int  # B'
    kappa: float
    rule: str  # "linear" | "square-root" | "given" (all hyperparameters from the command line)
    rule_reference: str
    base_optimizer: OptimizerInfo | None
    target_optimizer: OptimizerInfo
    schedule: dict[str, Any] = field(default_factory=dict)
    start_step: float = 0.0
    eval_batches: int = 0
    eval_examples: int | None = None
    forward_backward: dict[Any, int] = field(default_factory=dict)  # forward-backward passes
    device: str = "cpu"
    spec: str | None = None
    checkpoint: str | None = None
    elapsed_s: float = 0.0
    notes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    bscrit_version: str = __version__

    def curves(self) -> Sequence[Mapping[str, Sequence[float]]]:
        """The recorded values of every run (test function → values)."""
        raise NotImplementedError

    def metrics(self) -> list[str]:
        """The test functions every run recorded, in display order."""
        return ordered_metrics(self.curves())

    def head_dict(self, artifact: RunArtifact, method: str) -> dict[str, Any]:
        """The first keys of the JSON: what it is and where it comes from."""
        return {**artifact.header(), "bscrit_version": self.bscrit_version, "method": method,
                "spec": self.spec, "checkpoint": self.checkpoint,
                "device": self.device}  # fmt: skip

    def scaling_dict(self, batch_key: str) -> dict[str, Any]:
        """B (under ``batch_key``), B', κ and the rule."""
        return {batch_key: self.batch_size, "target_batch_size": self.target_batch_size,
                "kappa": self.kappa, "rule": self.rule,
                "rule_reference": self.rule_reference}  # fmt: skip

    def cost_dict(self) -> dict[str, Any]:
        """Forward-backward passes, per run and in all."""
        passes = {str(k): v for k, v in self.forward_backward.items()}
        return {"forward_backward_passes": passes, "total": sum(passes.values())}

    @staticmethod
    def common_fields(d: Mapping[str, Any], batch_key: str) -> dict[str, Any]:
        """The fields of :class:`RunResult` read the same way from every run artifact (the
        others differ in key or default and are read by each subclass)."""
        return {
            "batch_size": int(d[batch_key]),
            "target_batch_size": int(d["target_batch_size"]),
            "kappa": float(d["kappa"]),
            "rule": str(d["rule"]),
            "rule_reference": str(d["rule_reference"]),
            "schedule": dict(d.get("schedule") or {}),
            "start_step": float(d.get("start_step", 0.0)),
            "spec": d.get("spec"),
            "checkpoint": d.get("checkpoint"),
            "notes": tuple(str(n) for n in d.get("notes", [])),
            "warnings": tuple(str(w) for w in d.get("warnings", [])),
            "bscrit_version": str(d.get("bscrit_version", "?")),
        }
