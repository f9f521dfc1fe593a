"""The calibrated SVAG verdict: SGD against its SDE as C-closeness of equilibria (pure: no torch).

[LMA21] Def. 5.1 calls the equilibria of SGD and its SDE *C-close* when R∞/R̄∞, G∞/Ḡ∞ and
ηN∞/N̄∞ all lie in [1/C, C] (eq. (8)); R = E‖x‖², G = E‖∇L‖², N = E Tr Σ, and the SDE's noise
covariance is Σ̄ = ηΣ, so ηN∞/N̄∞ = E Tr Σ(x)/E Tr Σ(X): the one-batch trace at B' at SGD's
points against the same at the SDE's (like with like, not SVAG's l·Σ). bscrit's N test function
is that trace (N^{B'}), so the third ratio is a ratio of recorded N's. C = √c2 as in the bounds.

1. **Tail window** (:func:`~bscrit.runs.svag.tail.tail_window`): from ``skip`` relaxation times
   τ = 1/(2η'λ) at B' ([LMA21] eq. (10)) to the end; the last half without τ or for runs shorter
   than 2·skip·τ.
2. **Tail means** (:func:`~bscrit.runs.svag.tail.tail_stat`) with a batch-means s.e. (blocks ≥
   τ/2; Student's t).
3. **The SDE** (:func:`~bscrit.runs.svag.ratios.sde_estimate`) from the runs l > 1: extrapolated
   linearly in 1/l only when the runs show the trend ([LMA21] Thm 4.3 bounds the error by C(T)/l;
   it promises no expansion in 1/l), else the largest l.
4. **Ratios** SGD/SDE (:func:`~bscrit.runs.svag.ratios.ratio_estimate`) with a 95% interval by
   the delta method on the log ratio. R, G, ηN, train and held-out loss decide
   (``VerdictConfig.decide_on``); G only where the k evaluation batches resolve it (G ≥ N/k).
   Error rates 1 − acc are shown only.
5. **Settled?** (:func:`unsettled`): ``not_converged`` only when R or a loss of an SVAG run
   still drifts over the window, or the l-trend reverses, beyond the noise and ``settle_rtol``.
6. **Decision** (:func:`decide`): ``fail_rule="interval"``: ``sde_fails`` when a decision
   ratio's interval lies wholly outside [1/C, C]; ``"point"``: when its estimate does. Else
   ``inconclusive`` when a decision ratio's interval reaches across a boundary (or is undefined):
   undecided never defaults to ``sde_holds``. ``sde_holds`` only when every decision ratio's
   interval lies inside.
   How the defaults were chosen (on mnist1d-si only): docs/svag.md.

Words. "C-close" is [LMA21] Def. 5.1's term, about R, G and ηN only. The text says the runs are
C-close only when those three ratios all decide and lie inside, and not C-close whenever one of
them lies wholly outside, deciding or not (:func:`def51_reading`); when only the losses decide,
it says that SGD and its SDE agree (or differ) on the losses.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from bscrit.runs.svag.ratios import (
    LEVEL,
    RatioEstimate,
    SdeEstimate,
    diff_significant,
    ratio_estimate,
    sde_estimate,
)
from bscrit.runs.svag.tail import DEFAULT_SKIP, TailStat, tail_stat, tail_window
from bscrit.stats.estimators import t_quantile

__all__ = ["DECIDE_ON", "DECISION_METRICS", "LOSS_METRICS", "RATIO_LABELS", "RATIO_METRICS",
           "VERDICT_TEXT", "Verdict", "VerdictConfig", "decide", "def51_reading", "unsettled",
           "verdict_code"]  # fmt: skip

#: Def. 5.1's R, G, ηN and the training / held-out loss (``--decide-on def5.1``).
DECISION_METRICS: tuple[str, ...] = ("norm_sq", "G", "N", "train_loss", "eval_loss")
#: The default decision ratios: the losses (chosen on mnist1d-si, docs/svag.md). For a
#: scale-invariant network SGD's equilibrium sits at a larger ‖x‖² than the SDE's (the η²G term
#: of [LMA21] eq. (10)), which moves R, G, N by ≈ √(1 + 1/NSR^{B'}) without changing the function
#: the network computes; by Thm 5.2 (ii) these ratios leave [1/C, C] once NSR^{B'} < 1/(C² − 1),
#: a factor ≈ C² before the scaling rule fails (Thm 5.6).
LOSS_METRICS: tuple[str, ...] = ("train_loss", "eval_loss")
DECIDE_ON: dict[str, tuple[str, ...]] = {"losses": LOSS_METRICS, "def5.1": DECISION_METRICS}
#: The test functions whose settling decides ``not_converged``: R and the losses. Ĝ and N̂ come
#: from k fixed batches, so their noise is large and correlated from point to point through
#: those batches; a drift test on them tests the estimator more than the run.
SETTLE_METRICS: tuple[str, ...] = ("norm_sq", "train_loss", "eval_loss")
#: Every ratio reported (accuracies as error rates 1 − acc, shown but not deciding).
RATIO_METRICS: tuple[str, ...] = (*DECISION_METRICS, "train_acc", "eval_acc")
RATIO_LABELS: dict[str, str] = {
    "norm_sq": "R = ‖x‖²",
    "G": "G = ‖∇L‖²",
    "N": "ηN / N̄ (Tr Σ at B')",
    "train_loss": "train loss",
    "eval_loss": "held-out loss",
    "train_acc": "train error",
    "eval_acc": "held-out error",
}

DEFAULT_C2 = 2.0
DEFAULT_RELAXATION_TIMES = 4.0  # default run length in τ = 1/(2ηλ) at B'
DEFAULT_EFFECTIVE_STEPS = 300  # run length when no relaxation time is known
DEFAULT_SETTLE_RTOL = 0.1  # a drift or an l-trend reversal counts only beyond this

#: Def. 5.1's own test functions: "C-close" is said of these three ratios only.
DEF51_METRICS: tuple[str, ...] = ("norm_sq", "G", "N")

VERDICT_TEXT: dict[str, str] = {
    "sde_holds": (
        "{run} at batch size {b} and its SDE (from l = {sde}) agree on {decided}: every ratio "
        "SGD/SDE lies within [1/C, C]{how}, C = √{c2:g} = {C:.3g}; the {rule} keeps its SDE "
        "justification here."
    ),
    "sde_fails": (
        "{run} at batch size {b} and its SDE (from l = {sde}) differ: {failing} outside [1/C, "
        "C]{how}, C = √{c2:g} = {C:.3g}; {run} has left the SDE regime, and the {rule} loses its "
        "SDE justification here (expect it to fail)."
    ),
    "inconclusive": (
        "{run} at batch size {b} and its SDE (from l = {sde}): undecided, {undecided} reaches "
        "across a boundary of [1/C, C]{how}, C = √{c2:g} = {C:.3g}; no verdict (not a hold): a "
        "longer run (--relaxation-times) narrows the intervals."
    ),
    "not_converged": (
        "the SVAG runs of {run} at batch size {b} have not settled ({why}); no verdict on "
        "C-closeness: run longer "
        "(--relaxation-times) or with larger l (e.g. --l {suggest})."
    ),
}


@dataclass(frozen=True)
class VerdictConfig:
    """The verdict's thresholds (defaults chosen on mnist1d-si, docs/svag.md)."""

    c2: float = DEFAULT_C2
    skip: float = DEFAULT_SKIP  # relaxation times skipped before the tail window
    settle_rtol: float = DEFAULT_SETTLE_RTOL
    fail_rule: str = "interval"  # "interval" | "point"
    extrapolate: str = "auto"  # "auto" (when the trend shows) | "never"
    decide_on: tuple[str, ...] = LOSS_METRICS  # the ratios that decide (DECIDE_ON)

    def __post_init__(self) -> None:
        if not self.c2 > 1.0:
            raise ValueError(f"C² must be > 1, got {self.c2}")
        if self.fail_rule not in ("interval", "point"):
            raise ValueError(f"fail_rule must be 'interval' or 'point', got {self.fail_rule!r}")
        if self.extrapolate not in ("auto", "never"):
            raise ValueError(f"extrapolate must be 'auto' or 'never', got {self.extrapolate!r}")

    @property
    def C(self) -> float:  # noqa: N802
        return math.sqrt(self.c2)

    def to_dict(self) -> dict[str, Any]:
        return {"c2": self.c2, "C": self.C, "skip_relaxation_times": self.skip,
                "settle_rtol": self.settle_rtol, "fail_rule": self.fail_rule,
                "extrapolate": self.extrapolate, "decide_on": list(self.decide_on)}  # fmt: skip

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> VerdictConfig:
        return VerdictConfig(
            c2=float(d["c2"]),
            skip=float(d["skip_relaxation_times"]),
            settle_rtol=float(d["settle_rtol"]),
            fail_rule=str(d["fail_rule"]),
            extrapolate=str(d["extrapolate"]),
            decide_on=tuple(str(m) for m in d.get("decide_on", LOSS_METRICS)),
        )


# ----------------------------------------------------------------------------------------------
# Settled? and the verdict
# ----------------------------------------------------------------------------------------------


def unsettled(
    stats: Mapping[tuple[str, int], TailStat],
    ls: Sequence[int],
    settle_rtol: float = DEFAULT_SETTLE_RTOL,
) -> list[str]:
    """Why the SVAG runs (every l but the smallest) have not settled ([] when they have).

    One of :data:`SETTLE_METRICS` drifts over the window (beyond its interval and by more
    than ``settle_rtol`` of its tail mean), or its l-trend l₀ → l₁ → … reverses with both steps
    beyond their intervals and larger than ``settle_rtol``. The intervals are Bonferroni-corrected
    over all these checks (family-wise level 95%), so settled runs are called unsettled in at most
    5% of cases, not in 5% per check.
    """
    ls = sorted(ls)
    ms = [m for m in SETTLE_METRICS if all((m, lv) in stats for lv in ls)]
    checks = max(1, len(ms) * (2 * len(ls) - 3))  # drifts (l > l₀) + reversals (triples)
    p = 1.0 - (1.0 - LEVEL) / 2 / checks
    out: list[str] = []
    for m in ms:
        for lv in ls[1:]:
            s = stats[(m, lv)]
            q = t_quantile(p, s.blocks - 2.0) if s.blocks > 2 else math.inf
            if (math.isfinite(s.drift_se) and abs(s.drift) > q * s.drift_se
                    and abs(s.drift) > settle_rtol * abs(s.mean)):  # fmt: skip
                out.append(f"{RATIO_LABELS[m]} of l = {lv} drifts by {s.drift / s.mean:+.0%} "
                           "over the tail window")  # fmt: skip
        seq = [stats[(m, lv)] for lv in ls]
        for x, y, z in zip(seq, seq[1:], seq[2:]):
            d1, d2 = y.mean - x.mean, z.mean - y.mean
            big = all(abs(d) > settle_rtol * abs(y.mean) for d in (d1, d2))
            if d1 * d2 < 0 and big and diff_significant(x, y, p) and diff_significant(y, z, p):
                out.append(f"{RATIO_LABELS[m]} is not monotone in l = {x.l}, {y.l}, {z.l} "
                           f"({x.mean:.4g}, {y.mean:.4g}, {z.mean:.4g})")  # fmt: skip
    return out


@dataclass(frozen=True)
class Verdict:
    """The calibrated verdict: ``code`` in {sde_holds, sde_fails, inconclusive, not_converged},
    with every number behind it."""

    code: str
    text: str
    config: VerdictConfig
    reference_l: int
    sde_ls: tuple[int, ...]
    relaxation_steps: float | None
    relaxation_note: str
    tail_start: float
    tail_end: float
    tail_note: str
    ratios: tuple[RatioEstimate, ...]
    sde: tuple[SdeEstimate, ...]
    tail: tuple[TailStat, ...]
    unsettled: tuple[str, ...] = ()
    failing: tuple[str, ...] = ()
    undecided: tuple[str, ...] = ()
    extrapolated: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "text": self.text,
            "criterion": (
                "the decision ratios SGD/SDE (config.decide_on, of R, G, ηN of [LMA21] Def. 5.1 "
                "and the train and held-out loss) against [1/C, C], C = √c2; 95% intervals by "
                "the delta method on the log ratio with batch-means standard errors over the "
                "tail window; fail_rule 'interval': fails when an interval lies wholly outside, "
                "'point': when a point estimate does; else inconclusive when an interval reaches "
                "across a boundary (or is undefined); holds only when every interval lies "
                "inside; not_converged when an SVAG run drifts over the window or the l-trend "
                "reverses (significant and > settle_rtol)"
            ),
            "config": self.config.to_dict(),
            "reference_l": self.reference_l,
            "sde_ls": list(self.sde_ls),
            "relaxation_steps": None if self.relaxation_steps is None else self.relaxation_steps,
            "relaxation_note": self.relaxation_note,
            "tail_window": {
                "start": self.tail_start,
                "end": self.tail_end,
                "note": self.tail_note,
            },  # fmt: skip
            "ratios": [r.to_dict() for r in self.ratios],
            "sde": [s.to_dict() for s in self.sde],
            "extrapolated": list(self.extrapolated),
            "unsettled": list(self.unsettled),
            "failing": list(self.failing),
            "undecided": list(self.undecided),
            "tail": [t.to_dict() for t in self.tail],
        }

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> Verdict:
        tw = d["tail_window"]
        tau = d.get("relaxation_steps")
        return Verdict(
            code=str(d["code"]),
            text=str(d["text"]),
            config=VerdictConfig.from_dict(d["config"]),
            reference_l=int(d["reference_l"]),
            sde_ls=tuple(int(x) for x in d["sde_ls"]),
            relaxation_steps=None if tau is None else float(tau),
            relaxation_note=str(d.get("relaxation_note", "")),
            tail_start=float(tw["start"]),
            tail_end=float(tw["end"]),
            tail_note=str(tw.get("note", "")),
            ratios=tuple(RatioEstimate.from_dict(r) for r in d["ratios"]),
            sde=tuple(SdeEstimate.from_dict(s) for s in d["sde"]),
            tail=tuple(TailStat.from_dict(t) for t in d["tail"]),
            unsettled=tuple(str(x) for x in d.get("unsettled", [])),
            failing=tuple(str(x) for x in d.get("failing", [])),
            undecided=tuple(str(x) for x in d.get("undecided", [])),
            extrapolated=tuple(str(x) for x in d.get("extrapolated", [])),
        )

    def ratio(self, metric: str) -> RatioEstimate | None:
        return next((r for r in self.ratios if r.metric == metric), None)

    def stat(self, metric: str, l: int) -> TailStat | None:  # noqa: E741
        return next((t for t in self.tail if t.metric == metric and t.l == l), None)


def _fmt_ratio(r: RatioEstimate) -> str:
    return f"{RATIO_LABELS[r.metric]} {r.ratio:.3g} [{r.lo:.3g}, {r.hi:.3g}]"


def verdict_code(unsettled: bool, failing: bool, undecided: bool) -> str:
    """The code from the three findings, in this order: ``not_converged`` (the SVAG runs have not
    settled), ``sde_fails`` (a decision ratio fails), ``inconclusive`` (one is undecided: its
    interval reaches across a boundary, or is undefined), else ``sde_holds``."""
    if unsettled:
        return "not_converged"
    if failing:
        return "sde_fails"
    return "inconclusive" if undecided else "sde_holds"


def def51_reading(ratios: Sequence[RatioEstimate]) -> str:
    """What the ratios say about C-closeness in the sense of [LMA21] Def. 5.1 (R, G, ηN), whether
    they decide or not: "not C-close" when one lies wholly outside [1/C, C]; "C-close" when all
    three are resolved and inside; else that they do not settle it."""
    r51 = [r for r in ratios if r.metric in DEF51_METRICS]
    out = [r for r in r51 if r.status == "outside"]
    if out:
        shown = "" if all(r.decides for r in out) else " (shown, not deciding)"
        which = "; ".join(_fmt_ratio(r) for r in out)
        return (f"Not C-close in the sense of [LMA21] Def. 5.1: {which} lies wholly outside "
                f"[1/C, C]{shown}.")  # fmt: skip
    if len(r51) < len(DEF51_METRICS):
        return "Def. 5.1's ratios (R, G, ηN) were not all recorded: C-closeness is not assessed."
    if all(r.status == "inside" for r in r51):
        return ("R, G and ηN lie within [1/C, C] as well: C-close in the sense of [LMA21] "
                "Def. 5.1.")  # fmt: skip
    return (
        "Def. 5.1's ratios (R, G, ηN) do not settle C-closeness here (an interval reaches "
        "across a boundary, or G is unresolved)."
    )


def decide(
    runs: Sequence[Any],
    relaxation_steps: float | None,
    *,
    config: VerdictConfig | None = None,
    relaxation_note: str = "",
    target_batch_size: int = 0,
    run_name: str = "SGD",
    rule: str = "linear scaling rule",
    eval_batches: int | None = None,
) -> Verdict:
    """Read the runs (module docstring): tail window, tail means, the SDE, the ratios, the code.

    Args:
        runs: one per l (at least two; ``l``, ``effective_steps``, ``values`` of
            :class:`~bscrit.runs.svag.results.SvagRun`); the smallest l is the reference (l = 1:
            SGD).
        relaxation_steps: τ at B' in effective steps, or None when unknown.
        config: the thresholds (:class:`VerdictConfig`).
        relaxation_note, target_batch_size, run_name, rule: words of the text.
        eval_batches: k of the runs' Ĝ, N̂. Given, G decides only when the k fixed batches
            resolve it: G ≥ N/k for SGD and for the SDE (the noise of the k-batch mean gradient
            below its signal); otherwise its ratio is "unresolved" and shown only.

    Raises:
        ValueError: fewer than two runs, or a run with a non-finite value in the tail window
            (a diverged run is an error of the caller, not a verdict).
    """
    cfg = config or VerdictConfig()
    runs = sorted(runs, key=lambda r: r.l)
    if len(runs) < 2:
        raise ValueError("the verdict needs at least two runs (l = 1 and some l > 1)")
    ls = [r.l for r in runs]
    end = max(r.effective_steps[-1] for r in runs)
    start, tail_note = tail_window(end, relaxation_steps, cfg.skip)
    metrics = [m for m in RATIO_METRICS if all(m in r.values for r in runs)]
    stats = {
        (m, r.l): tail_stat(m, r.l, r.effective_steps, r.values[m], start, relaxation_steps)
        for m in metrics
        for r in runs
    }
    bad = [f"{m} of l = {lv}" for (m, lv), s in stats.items() if not math.isfinite(s.mean)]
    if bad:
        raise ValueError(f"not finite in the tail window: {', '.join(bad)}")
    sdes = {m: sde_estimate(stats[(m, ls[0])], [stats[(m, lv)] for lv in ls[1:]],
                            cfg.extrapolate) for m in metrics}  # fmt: skip
    ratios = [ratio_estimate(stats[(m, ls[0])], sdes[m], cfg.C, cfg.decide_on) for m in metrics]
    if eval_batches and "G" in metrics and "N" in metrics:
        k = eval_batches
        floor = max(stats[("N", ls[0])].mean, sdes["N"].value) / k
        if min(stats[("G", ls[0])].mean, sdes["G"].value) < floor:
            # Ĝ's error from the k fixed batches is correlated from point to point: not in the
            # batch-means interval, so G decides only where those batches resolve it
            ratios = [replace(r, decides=False, status="unresolved") if r.metric == "G" else r
                      for r in ratios]  # fmt: skip
    used = [r for r in ratios if r.decides]
    why = unsettled(stats, ls, cfg.settle_rtol)
    if cfg.fail_rule == "interval":
        failing = [r for r in used if r.status == "outside"]
        undecided = [r for r in used if r.status in ("straddles", "undefined")]
        how = " (95% intervals)"
    else:
        failing = [r for r in used if r.status != "undefined" and not r.point_inside]
        undecided = [r for r in used if r.status in ("straddles", "undefined")
                     and r not in failing]  # fmt: skip
        how = " (point estimates)"
    fmt = {"run": run_name, "b": target_batch_size, "sde": ", ".join(str(x) for x in ls[1:]),
           "c2": cfg.c2, "C": cfg.C, "rule": rule, "how": how,
           "suggest": f"{ls[0]},{2 * ls[-2]},{2 * ls[-1]}" if len(ls) > 2 else f"{ls[0]},8,16",
           "why": "; ".join(why),
           "decided": ", ".join(RATIO_LABELS[m] for m in metrics if m in cfg.decide_on),
           "failing": "; ".join(_fmt_ratio(r) for r in failing)}  # fmt: skip
    fmt["undecided"] = "; ".join(_fmt_ratio(r) for r in undecided)
    code = verdict_code(bool(why), bool(failing), bool(undecided))
    text = VERDICT_TEXT[code].format(**fmt)
    if code == "sde_fails" and undecided:
        text += f" Undecided (the 95% interval reaches across a boundary): {fmt['undecided']}."
    if code != "not_converged":
        text += " " + def51_reading(ratios)
    ext = [m for m in metrics if sdes[m].source == "extrapolated"]
    if ext:
        text += (" Extrapolated in 1/l (the runs show the trend): "
                 + ", ".join(RATIO_LABELS[m] for m in ext) + ".")  # fmt: skip
    return Verdict(
        code=code,
        text=text,
        config=cfg,
        reference_l=ls[0],
        sde_ls=tuple(ls[1:]),
        relaxation_steps=relaxation_steps,
        relaxation_note=relaxation_note,
        tail_start=start,
        tail_end=end,
        tail_note=tail_note,
        ratios=tuple(ratios),
        sde=tuple(sdes[m] for m in metrics),
        tail=tuple(stats.values()),
        unsettled=tuple(why),
        failing=tuple(r.metric for r in failing),
        undecided=tuple(r.metric for r in undecided),
        extrapolated=tuple(ext),
    )
