"""Branched training at B and B', the verdict, and ``confirm.json`` (pure: no torch).

The protocol (docs/confirm.md; Merrill et al. 2025, "Critical Batch Size Revisited", branched
training): from one checkpoint, a *base* branch trains at the run's batch size B with its
hyperparameters and a *target* branch at B' = κB with the hyperparameters scaled by the
optimizer's rule, for the same number of examples E, once per seed (the seed sets the batch order
and dropout; the same seeds for both branches). Both are evaluated on a shared grid of example
counts. The scaling rule *holds* from B to B' when the target reaches the loss of the base.

The verdict. Let L_B(s), L_B'(s) be the final losses of seed s (mean over the last
``tail_points`` grid points; held-out loss when the spec has ``eval_data``, else the loss on the
fixed training batches). Per seed

    d_s = (L_B'(s) − L_B(s)) / L_B(s),

and over the K seeds (paired: the same seed in both branches) the mean d̄ with the 95% Student-t
interval d̄ ± t_{0.975, K−1} · sd(d)/√K. With the tolerance δ fixed before the run:

- ``holds``: the whole interval lies below δ (B' loses less than δ of the loss, at 95%);
- ``fails``: the whole interval lies above δ, or a target branch diverged (a NaN/Inf loss, or a
  loss above ``DIVERGENCE_FACTOR`` = 10 times its value at the checkpoint);
- ``inconclusive``: otherwise, and always with one seed (no interval) unless a branch diverged.

A base branch that diverges is a run failure (:class:`~bscrit.errors.RunError`, exit 3), raised by
:mod:`bscrit.runs.confirm.run`, not a verdict.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bscrit import __version__
from bscrit.artifacts.measurement import (
    SCHEMA,
    OptimizerInfo,
    check_schema,
    dumps,
    finite_or_none,
    read_json,
)
from bscrit.errors import ArtifactError, UsageError
from bscrit.stats.equilibrium import relaxation_steps
from bscrit.stats.estimators import LEVEL, t_quantile

KIND_CONFIRM = "bscrit.runs.confirm"

#: Default tolerance δ on the relative final-loss difference (L_B' − L_B)/L_B, chosen on
#: mnist1d-si (docs/validation.md, "Agreement"): with the LR decay at the end of both branches
#: and 2 relaxation times, every δ in (7.1%, 14.5%) agrees with the LSR sweep on all 7 batch
#: sizes there (δ = 5% leaves B' = 512 inconclusive); 10% then agrees on all 7 of mnist1d-affine.
DEFAULT_TOLERANCE = 0.10
#: The final loss is the mean over this many last grid points (of ``DEFAULT_POINTS`` + 1): the
#: last fifth, which averages out the loss's fluctuation at a constant LR (on digits at B' = 256,
#: 3 points left the 95% interval of d twice as wide as 5). With ``--decay``: the last point.
DEFAULT_TAIL_POINTS = 5
DECAY_TAIL_POINTS = 1
#: Evaluation intervals on the grid of example counts (grid points = this + 1, from 0).
DEFAULT_POINTS = 20
#: Default budget: this many relaxation times 1/(2ηλ) of ‖x‖² at B ([LMA21] eq. 10), in examples.
DEFAULT_RELAXATION_TIMES = 2.0
#: Default budget when the relaxation time is unknown (no weight decay, Adam's coupled decay).
FALLBACK_EPOCHS = 5.0
#: A branch has diverged when a loss is not finite or above this many times its value at the
#: checkpoint (grid point 0): a run blowing up need not overflow within the budget.
DIVERGENCE_FACTOR = 10.0
#: ``--decay``: the LR falls linearly to 0 over this last fraction of each branch's steps.
DECAY_FRACTION = 0.2

VERDICTS = ("holds", "fails", "inconclusive")
#: Metrics the verdict can use, in order of preference.
LOSS_METRICS = ("eval_loss", "train_loss")
METRIC_LABELS: dict[str, str] = {
    "train_loss": "train loss",
    "train_acc": "train acc",
    "eval_loss": "held-out loss",
    "eval_acc": "held-out acc",
    "G": "G = ‖∇L‖²",
    "N": "N = Tr Σ at B'",
    "norm_sq": "‖x‖²",
}
#: Why the Adam/RMSprop second moment is divided by κ at the branch point.
SECOND_MOMENT_NOTE = (
    "second moment v/κ at the branch point: [MLPA22] Thm 5.3 compares runs whose SDE states "
    "(θ, m, u = v/σ²) agree, and the gradient noise σ² ∝ 1/B, so at B' = κB the same u is v/κ; "
    "the first moment m is kept"
)


# ----------------------------------------------------------------------------------------------
# Budget and grid
# ----------------------------------------------------------------------------------------------


def default_examples(
    opt: OptimizerInfo | None,
    batch_size: int,
    dataset_size: int,
    relaxation_times: float = DEFAULT_RELAXATION_TIMES,
) -> tuple[int, str]:
    """The default example budget E and how it was chosen.

    ``relaxation_times`` × τ × B, with τ = 1/(2ηλ) steps at B, the relaxation time of ‖x‖²
    ([LMA21] eq. 10; :func:`bscrit.stats.equilibrium.relaxation_steps`); ``FALLBACK_EPOCHS`` epochs of
    the training set when τ is unknown (no weight decay, coupled decay of Adam/RMSprop).
    """
    tau, why = relaxation_steps(opt)
    if tau is None:
        e = math.ceil(FALLBACK_EPOCHS * dataset_size)
        return e, f"{FALLBACK_EPOCHS:g} epochs ({why})"
    e = math.ceil(relaxation_times * tau * batch_size)
    return e, (
        f"{relaxation_times:g} relaxation times τ = {why} = {tau:.4g} steps at B = {batch_size}"
    )


def example_grid(
    examples: int, batch_size: int, target_batch_size: int, points: int = DEFAULT_POINTS
) -> tuple[list[int], list[int], int]:
    """The shared grid: ``(base steps, target steps, target total steps)`` at each grid point.

    The target branch runs T' = max(1, round(E/B')) steps, so it sees E' = T'·B' examples; the grid
    is ``points`` + 1 evenly spaced target steps t_j (all of them when T' ≤ points), and the base
    branch is evaluated after s_j = round(t_j·B'/B) steps. The two see the same examples at every
    grid point when B' is a multiple of B; otherwise within B/2 (each branch records its own).
    """
    if examples < 1:
        raise UsageError(f"{{examples}} must be >= 1, got {examples}", examples="examples")
    if points < 1:
        raise UsageError(f"{{points}} must be >= 1, got {points}", points="points")
    total = max(1, round(examples / target_batch_size))
    target = sorted({round(j * total / points) for j in range(points + 1)})
    base = [round(t * target_batch_size / batch_size) for t in target]
    return base, target, total


# ----------------------------------------------------------------------------------------------
# Branches and the statistics of the verdict
# ----------------------------------------------------------------------------------------------


def _none_to_nan(x: float | None) -> float:
    return math.nan if x is None else float(x)


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
            "values": {k: [finite_or_none(x) for x in v] for k, v in self.values.items()},
            "diverged_at": self.diverged_at,
            "elapsed_s": self.elapsed_s,
        }

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> Branch:
        return Branch(
            name=str(d["branch"]),
            seed=int(d["seed"]),
            batch_size=int(d["batch_size"]),
            steps=tuple(int(x) for x in d["steps"]),
            examples=tuple(int(x) for x in d["examples"]),
            values={k: tuple(_none_to_nan(x) for x in v) for k, v in d["values"].items()},
            diverged_at=None if d.get("diverged_at") is None else int(d["diverged_at"]),
            elapsed_s=float(d.get("elapsed_s", 0.0)),
        )


def relative_difference(base: float, target: float) -> float:
    """d = (L_B' − L_B)/L_B; +inf when the target is not finite; for L_B = 0, 0 if L_B' = 0
    else ±inf."""
    if not math.isfinite(target):
        return math.inf
    if base == 0:
        return 0.0 if target == 0 else math.copysign(math.inf, target)
    return (target - base) / abs(base)


def t_interval(
    values: Sequence[float], level: float = LEVEL
) -> tuple[float, float, tuple[float, float] | None]:
    """``(mean, sd, interval)``: mean ± t_{(1+level)/2, K−1}·sd/√K over K values (sd with K − 1);
    no interval (None) for K < 2 or a non-finite value."""
    k = len(values)
    if k == 0:
        return math.nan, math.nan, None
    mean = math.fsum(values) / k
    if k < 2 or not all(math.isfinite(v) for v in values):
        return mean, math.nan, None
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (k - 1))
    half = t_quantile(0.5 + level / 2.0, k - 1) * sd / math.sqrt(k)
    return mean, sd, (mean - half, mean + half)


def criterion(tolerance: float, metric: str, tail_points: int) -> str:
    """The criterion in words (what ``--json`` reports as ``criterion``)."""
    label = METRIC_LABELS.get(metric, metric)
    return (
        f"d = (L_B' − L_B)/L_B per seed, L = {label} averaged over the last {tail_points} grid "
        f"points; 95% t-interval of the mean of d over the seeds; holds if the whole interval "
        f"< δ = {tolerance:g}, fails if the whole interval > δ or a B' branch diverged, else "
        "inconclusive"
    )


@dataclass(frozen=True)
class ConfirmVerdict:
    """``code`` in {holds, fails, inconclusive}, in words, with the numbers behind it."""

    code: str
    text: str
    metric: str  # the loss that decided: "eval_loss" or "train_loss"
    per_seed: tuple[float, ...]  # d_s
    mean: float
    sd: float
    ci95: tuple[float, float] | None
    tolerance: float
    diverged: tuple[str, ...] = ()  # "seed 1 at 12800 examples" of the target branches

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "text": self.text,
            "metric": self.metric,
            "per_seed": [finite_or_none(x) for x in self.per_seed],
            "mean": finite_or_none(self.mean),
            "sd": finite_or_none(self.sd),
            "ci95": None if self.ci95 is None else [finite_or_none(x) for x in self.ci95],
            "tolerance": self.tolerance,
            "diverged": list(self.diverged),
        }

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> ConfirmVerdict:
        ci = d.get("ci95")
        return ConfirmVerdict(
            code=str(d["code"]),
            text=str(d["text"]),
            metric=str(d["metric"]),
            per_seed=tuple(_none_to_nan(x) if x is not None else math.inf for x in d["per_seed"]),
            mean=_none_to_nan(d.get("mean")),
            sd=_none_to_nan(d.get("sd")),
            ci95=None if ci is None else (_none_to_nan(ci[0]), _none_to_nan(ci[1])),
            tolerance=float(d["tolerance"]),
            diverged=tuple(str(x) for x in d.get("diverged", [])),
        )


def _pct(x: float) -> str:
    return f"{100 * x:+.2f}%" if math.isfinite(x) else ("+∞" if x > 0 else "−∞")


def check_tolerance(tolerance: float) -> float:
    """δ must be a finite number > 0 (a :class:`UsageError` naming ``--tolerance`` otherwise)."""
    if not tolerance > 0 or not math.isfinite(tolerance):
        raise UsageError(f"{{tolerance}} must be > 0, got {tolerance}", tolerance="tolerance")
    return float(tolerance)


def decide(
    per_seed: Sequence[float],
    tolerance: float = DEFAULT_TOLERANCE,
    *,
    metric: str = "eval_loss",
    diverged: Sequence[str] = (),
    target_batch_size: int | None = None,
) -> ConfirmVerdict:
    """The verdict from the per-seed relative differences d_s (module docstring).

    Args:
        per_seed: d_s = (L_B' − L_B)/L_B of each seed (+inf for a diverged target branch).
        tolerance: δ, fixed before the run.
        metric: the loss the d_s are of (reported).
        diverged: where target branches diverged ("seed 1 at 12800 examples"); any → fails.
        target_batch_size: B', for the text.
    """
    check_tolerance(tolerance)
    b = f"B' = {target_batch_size}" if target_batch_size is not None else "B'"
    mean, sd, ci = t_interval(per_seed)
    common = dict(metric=metric, per_seed=tuple(per_seed), mean=mean, sd=sd, ci95=ci,
                  tolerance=tolerance, diverged=tuple(diverged))  # fmt: skip
    if diverged:
        text = f"the {b} branch diverged ({'; '.join(diverged)}): the scaling rule fails there."
        return ConfirmVerdict("fails", text, **common)  # type: ignore[arg-type]
    if ci is None:
        text = (
            f"one seed gives no interval (d = {_pct(mean)}); run --seeds 2 or more for a verdict."
        )
        return ConfirmVerdict("inconclusive", text, **common)  # type: ignore[arg-type]
    span = f"d = {_pct(mean)} (95%: {_pct(ci[0])} to {_pct(ci[1])})"
    delta = f"δ = {100 * tolerance:g}%"
    if ci[1] < tolerance:
        code = "holds"
        text = (f"{span} lies below {delta}: at {b} the scaled run reaches the base "
                "run's loss for the same examples; the scaling rule holds.")  # fmt: skip
    elif ci[0] > tolerance:
        code = "fails"
        text = (f"{span} lies above {delta}: at {b} the scaled run ends with a higher "
                "loss for the same examples; the scaling rule fails.")  # fmt: skip
    else:
        code = "inconclusive"
        text = (f"{span} contains {delta}: more seeds or more examples would "
                "settle it.")  # fmt: skip
    return ConfirmVerdict(code, text, **common)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------
# The artifact
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConfirmResult:
    """Everything ``bscrit confirm`` produced: both branches' setup, every seed, the verdict."""

    batch_size: int  # B
    target_batch_size: int  # B'
    kappa: float
    rule: str  # "linear" | "square-root" | "given"
    rule_reference: str
    base_optimizer: OptimizerInfo
    target_optimizer: OptimizerInfo
    examples: int  # E' = T'·B', the target branch's examples (the base's within B/2)
    examples_why: str
    seeds: tuple[int, ...]
    branches: tuple[Branch, ...]  # base and target of every seed, in seed order
    verdict: ConfirmVerdict
    tail_points: int = DEFAULT_TAIL_POINTS
    decay: str | None = None  # "linear to 0 over the last 20% of each branch's steps" or None
    schedule: dict[str, Any] = field(default_factory=dict)  # the spec's, in base steps
    start_step: float = 0.0
    dataset_size: int = 0
    eval_batches: int = 0
    eval_examples: int | None = None
    optimizer_state: str = ""  # how both branches' optimizer state starts
    forward_backward: dict[str, int] = field(default_factory=dict)  # branch -> passes, all seeds
    device: str = "cpu"
    spec: str | None = None
    checkpoint: str | None = None
    elapsed_s: float = 0.0
    notes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    bscrit_version: str = __version__

    def branch(self, name: str, seed: int) -> Branch | None:
        return next((b for b in self.branches if b.name == name and b.seed == seed), None)

    def finals(self, name: str, metric: str | None = None) -> list[float]:
        """Final loss (``metric``, default the verdict's) of branch ``name``, per seed."""
        m = metric or self.verdict.metric
        return [b.final(m, self.tail_points) for s in self.seeds if (b := self.branch(name, s))]

    def metrics(self) -> list[str]:
        present = [m for m in METRIC_LABELS if all(m in b.values for b in self.branches)]
        return present + [
            m for m in (self.branches[0].values if self.branches else {})
            if m not in present and all(m in b.values for b in self.branches)
        ]  # fmt: skip

    def epochs(self) -> float:
        """Examples of one branch of one seed, in epochs of the training set."""
        return self.examples / self.dataset_size if self.dataset_size else math.nan

    def to_dict(self) -> dict[str, Any]:
        m = self.verdict.metric
        other = "train_loss" if m == "eval_loss" else None
        rel: dict[str, Any] = {**self.verdict.to_dict()}
        per_seed = []
        for s, d in zip(self.seeds, self.verdict.per_seed, strict=True):
            row: dict[str, Any] = {"seed": s, "relative_difference": finite_or_none(d)}
            for name in ("base", "target"):
                b = self.branch(name, s)
                row[name] = {
                    k: finite_or_none(b.final(k, self.tail_points)) if b else None
                    for k in self.metrics()
                }
            per_seed.append(row)
        out: dict[str, Any] = {
            "schema": SCHEMA,
            "kind": KIND_CONFIRM,
            "bscrit_version": self.bscrit_version,
            "method": "branched training at B and B' from one checkpoint (Merrill et al. 2025)",
            "spec": self.spec,
            "checkpoint": self.checkpoint,
            "device": self.device,
            "verdict": self.verdict.code,
            "verdict_text": self.verdict.text,
            "base_batch_size": self.batch_size,
            "target_batch_size": self.target_batch_size,
            "kappa": self.kappa,
            "rule": self.rule,
            "rule_reference": self.rule_reference,
            "hyperparameters": {
                "base": self.base_optimizer.to_dict(),
                "target": self.target_optimizer.to_dict(),
            },
            "optimizer_state": self.optimizer_state,
            "schedule": self.schedule,
            "start_step": self.start_step,
            "decay": self.decay,
            "examples": self.examples,
            "examples_why": self.examples_why,
            "epochs": finite_or_none(self.epochs()),
            "dataset_size": self.dataset_size,
            "seeds": list(self.seeds),
            "tolerance": self.verdict.tolerance,
            "metric": m,
            "tail_points": self.tail_points,
            "criterion": criterion(self.verdict.tolerance, m, self.tail_points),
            "relative_difference": rel,
            "losses": {
                "base": [finite_or_none(x) for x in self.finals("base")],
                "target": [finite_or_none(x) for x in self.finals("target")],
            },
            "per_seed": per_seed,
            "eval_batches": self.eval_batches,
            "eval_examples": self.eval_examples,
            "cost": {
                "forward_backward_passes": dict(self.forward_backward),
                "total": sum(self.forward_backward.values()),
                "training_examples": 2 * self.examples * len(self.seeds),
            },
            "branches": [b.to_dict() for b in self.branches],
            "runtime_s": self.elapsed_s,
            "notes": list(self.notes),
            "warnings": list(self.warnings),
        }
        if other is not None:
            pairs = zip(self.finals("base", other), self.finals("target", other), strict=True)
            d = [relative_difference(b, t) for b, t in pairs]
            mean, sd, ci = t_interval(d)
            out["train_loss_difference"] = {
                "per_seed": [finite_or_none(x) for x in d],
                "mean": finite_or_none(mean),
                "ci95": None if ci is None else [finite_or_none(x) for x in ci],
            }
        return out

    @staticmethod
    def from_dict(d: dict[str, Any], source: str = "<dict>") -> ConfirmResult:
        d = check_schema(d, KIND_CONFIRM, source)
        try:
            rel = d["relative_difference"]
            return ConfirmResult(
                batch_size=int(d["base_batch_size"]),
                target_batch_size=int(d["target_batch_size"]),
                kappa=float(d["kappa"]),
                rule=str(d["rule"]),
                rule_reference=str(d["rule_reference"]),
                base_optimizer=OptimizerInfo.from_dict(d["hyperparameters"]["base"]),
                target_optimizer=OptimizerInfo.from_dict(d["hyperparameters"]["target"]),
                examples=int(d["examples"]),
                examples_why=str(d.get("examples_why", "")),
                seeds=tuple(int(s) for s in d["seeds"]),
                branches=tuple(Branch.from_dict(b) for b in d["branches"]),
                verdict=ConfirmVerdict.from_dict(rel),
                tail_points=int(d.get("tail_points", DEFAULT_TAIL_POINTS)),
                decay=d.get("decay"),
                schedule=dict(d.get("schedule") or {}),
                start_step=float(d.get("start_step", 0.0)),
                dataset_size=int(d.get("dataset_size", 0)),
                eval_batches=int(d.get("eval_batches", 0)),
                eval_examples=d.get("eval_examples"),
                optimizer_state=str(d.get("optimizer_state", "")),
                forward_backward={
                    str(k): int(v) for k, v in d["cost"]["forward_backward_passes"].items()
                },
                device=str(d.get("device", "cpu")),
                spec=d.get("spec"),
                checkpoint=d.get("checkpoint"),
                elapsed_s=float(d.get("runtime_s", 0.0)),
                notes=tuple(str(n) for n in d.get("notes", [])),
                warnings=tuple(str(w) for w in d.get("warnings", [])),
                bscrit_version=str(d.get("bscrit_version", "?")),
            )
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise ArtifactError(
                f"{source}: malformed confirm artifact ({type(e).__name__}: {e}); "
                "expected the confirm.json written by `bscrit confirm --out`"
            ) from None


def curves_csv(result: ConfirmResult) -> str:
    """One row per (seed, branch, grid point): ``seed, branch, batch_size, step, examples,
    <test functions>``; non-finite values as empty cells."""
    metrics = result.metrics()
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["seed", "branch", "batch_size", "step", "examples", *metrics])
    for b in result.branches:
        for i, (step, ex) in enumerate(zip(b.steps, b.examples, strict=True)):
            row: list[Any] = [b.seed, b.name, b.batch_size, step, ex]
            for m in metrics:
                v = b.values[m][i]
                row.append(repr(float(v)) if math.isfinite(v) else "")
            w.writerow(row)
    return buf.getvalue()


def confirm_paths(out_dir: str | Path) -> tuple[Path, Path]:
    """The two files :func:`write_confirm` writes into ``out_dir``."""
    return Path(out_dir) / "confirm.json", Path(out_dir) / "curves.csv"


def write_confirm(result: ConfirmResult, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``confirm.json`` and ``curves.csv`` into ``out_dir`` (created), atomically."""
    from bscrit.artifacts.folders import write_folder

    files = [("confirm.json", dumps(result.to_dict())), ("curves.csv", curves_csv(result))]
    j, c = write_folder(out_dir, files)
    return j, c


def load_confirm(path: str | Path) -> ConfirmResult:
    """Read a ``confirm.json`` (or the folder holding it) written by ``bscrit confirm --out``."""
    from bscrit.artifacts.folders import file_in

    p = file_in(path, "confirm.json")
    return ConfirmResult.from_dict(read_json(p), source=str(p))
