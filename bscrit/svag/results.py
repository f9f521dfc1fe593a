"""SVAG trajectories, their comparison and the verdict, as a versioned artifact (pure: no torch).

SVAG here is the *Stochastic Variance Amplified Gradient* of Li, Malladi & Arora [LMA21 §4]
(and its adaptive version [MLPA22 §6]), not Balles & Hennig's "stochastic variance-adapted
gradient" (the M-SVAG optimiser), which shares the acronym.

:mod:`bscrit.svag.run` runs the optimizer once per SVAG parameter l and records test functions at
equal *effective steps* (SVAG steps / l). This module holds what those runs produce
(:class:`SvagRun`), reads them the way [LMA21] Fig. 4 is read (:func:`compare_runs`,
:func:`decide`), and writes ``svag.json`` (``"schema": 1``, ``"kind": "bscrit.svag"``) and
``trajectories.csv`` atomically.

The verdict (docs/theory.md §6). Let l₀ be the smallest l (normally 1, i.e. plain SGD/Adam at the
target batch size) and l_a < l_b the two largest. For each *verdict metric* (training loss on the
fixed evaluation batches, held-out loss and held-out accuracy when an evaluation set is given, and
‖x‖²), take the mean of its trajectory over the last ``tail`` fraction of effective steps (default
20%) and its standard deviation there (the run's fluctuation). Two runs a, b *agree* on a metric
when

    |a − b| ≤ max(rtol · max(|a|, |b|),  z · √(sd_a² + sd_b²))

(defaults rtol = 0.1, z = 2). Accuracies are compared as error rates 1 − acc, the quantity of the
paper's "final test error within 20% of its value" criterion ([LMA21] §5.1, Fig. 3). The noise
floor uses the tail's standard deviation, not sd/√n: successive evaluation points of one run are
strongly correlated, so the tail is closer to one sample than to n; the floor keeps a flip of a few
held-out examples from passing for a difference between the runs. Then

- l_a and l_b disagree on some metric → ``not_converged``: SVAG has not converged; use larger l or
  more effective steps.
- l_a, l_b agree, and both agree with l₀ on every metric → ``sde_holds``: SGD tracks its SDE at this
  batch size; the scaling rule is expected to hold.
- l_a, l_b agree, but l₀ disagrees with either → ``sde_fails``: SGD has left the SDE regime
  ([LMA21] Fig. 4 right); expect the scaling rule to fail here.

A run that diverged (NaN/Inf) has non-finite values and agrees with nothing. G, N, ‖x‖² (and the
training accuracy) are recorded, compared and plotted but do not enter the verdict: with a few
evaluation batches Ĝ and N̂ are noisy.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__, optim
from ..errors import ArtifactError
from ..results import (
    SCHEMA,
    OptimizerInfo,
    check_schema,
    dumps,
    finite_or_none,
    read_json,
    write_atomic,
)

KIND_SVAG = "bscrit.svag"

#: Test functions that decide the verdict (when present).
VERDICT_METRICS: tuple[str, ...] = ("train_loss", "eval_loss", "eval_acc", "norm_sq")
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

DEFAULT_RTOL = 0.1
DEFAULT_Z = 2.0
DEFAULT_TAIL = 0.2

VERDICT_TEXT: dict[str, str] = {
    "sde_holds": (
        "l = {hi} agree with l = {lo}: {run} tracks its SDE at batch size {b}; "
        "the {rule} is expected to hold."
    ),
    "sde_fails": (
        "l = {hi} agree with each other but not with l = {lo}: {run} has left the SDE regime at "
        "batch size {b}; expect the {rule} to fail here."
    ),
    "not_converged": (
        "l = {hi} disagree with each other: SVAG has not converged; try a larger l "
        "(e.g. --l {suggest}) or more effective steps."
    ),
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
# Comparison
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TailSummary:
    """A test function over the last ``tail`` fraction of a run: mean, sd, se = sd/√n, final."""

    metric: str
    l: int  # noqa: E741
    mean: float
    sd: float
    se: float
    n: int
    final: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "l": self.l,
            "tail_mean": finite_or_none(self.mean),
            "tail_sd": finite_or_none(self.sd),
            "tail_se": finite_or_none(self.se),
            "n_tail": self.n,
            "final": finite_or_none(self.final),
        }

    @staticmethod
    def from_dict(d: dict[str, Any]) -> TailSummary:
        return TailSummary(
            metric=str(d["metric"]),
            l=int(d["l"]),
            mean=_none_to_nan(d["tail_mean"]),
            sd=_none_to_nan(d["tail_sd"]),
            se=_none_to_nan(d["tail_se"]),
            n=int(d["n_tail"]),
            final=_none_to_nan(d["final"]),
        )


@dataclass(frozen=True)
class Comparison:
    """Do runs l_a and l_b agree on one metric? ``a``/``b`` are the compared tail means (error
    rates for accuracies); ``agree`` is ``diff <= threshold`` (False when either is not finite)."""

    metric: str
    l_a: int
    l_b: int
    a: float
    b: float
    diff: float
    rel_diff: float  # diff / max(|a|, |b|)
    threshold: float  # max(rtol·max(|a|,|b|), z·√(sd_a² + sd_b²))
    agree: bool
    compared_as: str  # "value" | "error rate (1 − acc)"
    in_verdict: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "l_a": self.l_a,
            "l_b": self.l_b,
            "a": finite_or_none(self.a),
            "b": finite_or_none(self.b),
            "diff": finite_or_none(self.diff),
            "rel_diff": finite_or_none(self.rel_diff),
            "threshold": finite_or_none(self.threshold),
            "agree": self.agree,
            "compared_as": self.compared_as,
            "in_verdict": self.in_verdict,
        }

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Comparison:
        return Comparison(
            metric=str(d["metric"]),
            l_a=int(d["l_a"]),
            l_b=int(d["l_b"]),
            a=_none_to_nan(d["a"]),
            b=_none_to_nan(d["b"]),
            diff=_none_to_nan(d["diff"]),
            rel_diff=_none_to_nan(d["rel_diff"]),
            threshold=_none_to_nan(d["threshold"]),
            agree=bool(d["agree"]),
            compared_as=str(d["compared_as"]),
            in_verdict=bool(d["in_verdict"]),
        )


def tail_summary(run: SvagRun, metric: str, tail: float = DEFAULT_TAIL) -> TailSummary:
    """Mean, sd and se of ``metric`` over the evaluation points with effective step ≥ (1 − tail)·E.

    At least the last two points are used when the run has two or more (one when it has one).
    A non-finite value in the tail makes the mean NaN (a diverged run agrees with nothing).
    """
    es = run.effective_steps
    vs = run.values[metric]
    if not es:
        return TailSummary(metric, run.l, math.nan, math.nan, math.nan, 0, math.nan)
    start = (1.0 - tail) * es[-1]
    idx = [i for i, e in enumerate(es) if e >= start - 1e-9]
    if len(idx) < 2 and len(es) >= 2:
        idx = [len(es) - 2, len(es) - 1]
    xs = [vs[i] for i in idx]
    n = len(xs)
    mean = sum(xs) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else 0.0
    return TailSummary(metric, run.l, mean, sd, sd / math.sqrt(n), n, vs[-1])


def agreement(
    a: TailSummary,
    b: TailSummary,
    *,
    rtol: float = DEFAULT_RTOL,
    z: float = DEFAULT_Z,
    in_verdict: bool = True,
) -> Comparison:
    """Compare two tail summaries of the same metric: ``|a − b| ≤ max(rtol·max(|a|,|b|),
    z·√(sd_a² + sd_b²))``. Accuracies (``*_acc``) are compared as error rates 1 − acc."""
    is_acc = a.metric.endswith("_acc")
    va, vb = (1.0 - a.mean, 1.0 - b.mean) if is_acc else (a.mean, b.mean)
    diff = abs(va - vb)
    scale = max(abs(va), abs(vb))
    threshold = max(rtol * scale, z * math.sqrt(a.sd**2 + b.sd**2))
    finite = all(math.isfinite(x) for x in (va, vb, threshold))
    agree = finite and diff <= threshold
    rel = diff / scale if scale > 0 else (0.0 if diff == 0 else math.inf)
    return Comparison(
        metric=a.metric,
        l_a=a.l,
        l_b=b.l,
        a=va,
        b=vb,
        diff=diff,
        rel_diff=rel,
        threshold=threshold,
        agree=agree,
        compared_as="error rate (1 − acc)" if is_acc else "value",
        in_verdict=in_verdict,
    )


@dataclass(frozen=True)
class Verdict:
    """The reading of the runs: ``code`` in {sde_holds, sde_fails, not_converged}."""

    code: str
    text: str
    reference_l: int
    high_ls: tuple[int, int]
    metrics: tuple[str, ...]
    failing: tuple[str, ...] = ()  # "metric: l_a vs l_b" of the comparisons that decided it

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "text": self.text,
            "reference_l": self.reference_l,
            "high_ls": list(self.high_ls),
            "metrics": list(self.metrics),
            "failing": list(self.failing),
        }

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Verdict:
        hi = d["high_ls"]
        return Verdict(
            code=str(d["code"]),
            text=str(d["text"]),
            reference_l=int(d["reference_l"]),
            high_ls=(int(hi[0]), int(hi[1])),
            metrics=tuple(str(m) for m in d["metrics"]),
            failing=tuple(str(f) for f in d.get("failing", [])),
        )


def compare_runs(
    runs: Sequence[SvagRun],
    *,
    rtol: float = DEFAULT_RTOL,
    z: float = DEFAULT_Z,
    tail: float = DEFAULT_TAIL,
) -> tuple[list[TailSummary], list[Comparison]]:
    """Tail summaries of every metric of every run, and the pairwise comparisons that matter:
    every l against the smallest l₀, and the two largest l against each other."""
    if len(runs) < 2:
        raise ValueError("need at least two runs to compare")
    runs = sorted(runs, key=lambda r: r.l)
    metrics = [m for m in METRIC_LABELS if all(m in r.values for r in runs)]
    metrics += [m for m in runs[0].values if m not in metrics and all(m in r.values for r in runs)]
    summaries = {(m, r.l): tail_summary(r, m, tail) for m in metrics for r in runs}
    ls = [r.l for r in runs]
    pairs = [(ls[0], x) for x in ls[1:]]
    if len(ls) >= 3:
        pairs.append((ls[-2], ls[-1]))
    comparisons = [
        agreement(
            summaries[(m, la)], summaries[(m, lb)], rtol=rtol, z=z, in_verdict=m in VERDICT_METRICS
        )
        for m in metrics
        for la, lb in pairs
    ]
    return list(summaries.values()), comparisons


def _disagreement_note(used: Sequence[Comparison], failing: Sequence[str]) -> str:
    """What the ✗ marks of the verdict rows (*) of the table say beyond the deciding ones.

    Read from the same comparisons as the table: "Only ‖x‖² disagrees" only when every ✗ of
    a verdict metric is in the ‖x‖² row, and the ✗ that did not decide the verdict are named.
    """
    marked = [c for c in used if not c.agree]
    note = ""
    if marked and {c.metric for c in marked} == {"norm_sq"}:
        note += (
            " Only ‖x‖² disagrees; the losses and accuracies agree in every comparison of this "
            "run (for a scale-invariant network ‖x‖² sets the effective learning rate, so they "
            "are expected to separate in a longer run)."
        )
    others = [c for c in marked if f"{c.metric}: l={c.l_a} vs l={c.l_b}" not in failing]
    if others:
        note += (
            " Also disagreeing, without deciding the verdict: "
            + "; ".join(
                f"{METRIC_LABELS.get(c.metric, c.metric)} (l = {c.l_b} vs {c.l_a})" for c in others
            )
            + "."
        )
    return note


def decide(
    comparisons: Sequence[Comparison],
    ls: Sequence[int],
    target_batch_size: int,
    optimizer: str = "sgd",
) -> Verdict:
    """Read the comparisons as in docs/theory.md §6 / [LMA21] Fig. 4 (see the module docstring).

    The words fit ``optimizer``: "SGD" and the linear rule, or e.g. "AdamW" and the square-root
    rule (its SDE is that of [MLPA22]).
    """
    ls = sorted(ls)
    if len(ls) < 3:
        raise ValueError("the verdict needs three values of l (e.g. 1, 2, 4)")
    lo, la, lb = ls[0], ls[-2], ls[-1]
    used = [c for c in comparisons if c.in_verdict]
    metrics = tuple(dict.fromkeys(c.metric for c in used))
    hi = f"{la} and {lb}"

    def bad(pred) -> tuple[str, ...]:
        return tuple(f"{c.metric}: l={c.l_a} vs l={c.l_b}" for c in used if pred(c) and not c.agree)

    d = optim.REGISTRY.get(optimizer.lower())
    run = d.torch_class if d is not None else optimizer
    rule = f"{d.rule} scaling rule" if d is not None else "scaling rule"
    fmt = {"hi": hi, "lo": lo, "b": target_batch_size, "suggest": f"{lo},{2 * la},{2 * lb}"}
    fmt |= {"run": run, "rule": rule}
    not_conv = bad(lambda c: (c.l_a, c.l_b) == (la, lb))
    if not_conv:
        code, failing = "not_converged", not_conv
    else:
        vs_ref = bad(lambda c: c.l_a == lo and c.l_b in (la, lb))
        code, failing = ("sde_fails", vs_ref) if vs_ref else ("sde_holds", ())
    text = VERDICT_TEXT[code].format(**fmt) + _disagreement_note(used, failing)
    return Verdict(
        code=code,
        text=text,
        reference_l=lo,
        high_ls=(la, lb),
        metrics=metrics,
        failing=failing,
    )


# ----------------------------------------------------------------------------------------------
# The artifact
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SvagResult:
    """Everything ``bscrit svag`` produced: setup, cost, runs, comparisons and the verdict."""

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
    summaries: tuple[TailSummary, ...]
    comparisons: tuple[Comparison, ...]
    verdict: Verdict
    rtol: float = DEFAULT_RTOL
    z: float = DEFAULT_Z
    tail: float = DEFAULT_TAIL
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
            "schema": SCHEMA,
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
            "eval_every": self.eval_every,
            "eval_batches": self.eval_batches,
            "eval_examples": self.eval_examples,
            "cost": {
                "forward_backward_passes": {str(k): v for k, v in self.forward_backward.items()},
                "total": sum(self.forward_backward.values()),
            },
            "thresholds": {
                "rtol": self.rtol,
                "z": self.z,
                "tail": self.tail,
                "rule": "agree iff |a − b| <= max(rtol·max(|a|,|b|), z·sqrt(sd_a² + sd_b²)); "
                "a, b = means over the last `tail` of the effective steps; accuracies as 1 − acc",
            },
            "verdict": self.verdict.to_dict(),
            "summaries": [s.to_dict() for s in self.summaries],
            "comparisons": [c.to_dict() for c in self.comparisons],
            "runs": [r.to_dict() for r in self.runs],
            "elapsed_s": self.elapsed_s,
            "notes": list(self.notes),
            "warnings": list(self.warnings),
        }

    @staticmethod
    def from_dict(d: dict[str, Any], source: str = "<dict>") -> SvagResult:
        d = check_schema(d, KIND_SVAG, source)
        try:
            th = d["thresholds"]
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
                summaries=tuple(TailSummary.from_dict(s) for s in d["summaries"]),
                comparisons=tuple(Comparison.from_dict(c) for c in d["comparisons"]),
                verdict=Verdict.from_dict(d["verdict"]),
                rtol=float(th["rtol"]),
                z=float(th["z"]),
                tail=float(th["tail"]),
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

    def summary(self, metric: str, l: int) -> TailSummary | None:  # noqa: E741
        for s in self.summaries:
            if s.metric == metric and s.l == l:
                return s
        return None


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
    d = Path(out_dir)
    if d.exists() and not d.is_dir():
        raise ArtifactError(f"{{out}} {d}: exists and is not a folder", out="out")
    j, c = svag_paths(d)
    text, csv_text = dumps(result.to_dict()), trajectories_csv(result)
    write_atomic(j, text)
    write_atomic(c, csv_text)
    return j, c


def load_svag(path: str | Path) -> SvagResult:
    """Read an ``svag.json`` (or the folder holding it) written by ``bscrit svag --out``."""
    p = Path(path)
    if p.is_dir():
        p = p / "svag.json"
    return SvagResult.from_dict(read_json(p), source=str(p))
