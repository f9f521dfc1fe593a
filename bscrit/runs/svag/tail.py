"""The tail of one SVAG run: the window the verdict reads and a test function's mean over it
with a batch-means standard error (pure: no torch).

Step 1 and 2 of the verdict (:mod:`bscrit.runs.svag.verdict`): the window runs from ``skip``
relaxation times τ = 1/(2η'λ) at B' ([LMA21] eq. (10)) to the end, the last half without τ or for
runs shorter than 2·skip·τ (:func:`tail_window`); the mean over it has a batch-means s.e. (blocks
≥ τ/2; Student's t) and a drift between its halves (:func:`tail_stat`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bscrit.artifacts.jsonvalues import finite_or_none
from bscrit.runs.common.artifact import none_to_nan

__all__ = ["DEFAULT_SKIP", "TailStat", "tail_stat", "tail_window"]

MAX_BLOCKS = 20  # batch-means blocks at most
DEFAULT_SKIP = 1.0  # relaxation times τ skipped before the tail window
UNKNOWN_TAU_TAIL = 0.5  # tail window (fraction of the run) when no τ is known


def tail_window(end: float, tau: float | None, skip: float = DEFAULT_SKIP) -> tuple[float, str]:
    """Start of the tail window (in effective steps) of runs of length ``end``, and why.

    From ``skip``·τ to the end when the run spans at least 2·skip·τ; otherwise the last half.
    """
    if tau is not None and tau > 0 and end >= 2.0 * skip * tau:
        return skip * tau, f"from {skip:g} relaxation time(s) τ = {tau:.4g} steps to the end"
    if tau is None or tau <= 0:
        why = "no relaxation time known"
    else:
        why = f"the run ({end:g} steps) is shorter than {2 * skip:g} τ = {2 * skip * tau:.4g}"
    return (1.0 - UNKNOWN_TAU_TAIL) * end, f"the last half ({why})"


@dataclass(frozen=True)
class TailStat:
    """One test function of one run over the tail window: mean with a batch-means s.e.

    ``drift`` = mean of the second half of the blocks − mean of the first, ``drift_se`` its s.e.
    from the pooled within-half spread (NaN with fewer than 4 blocks).
    """

    metric: str
    l: int  # noqa: E741
    mean: float
    se: float
    df: float
    n: int
    blocks: int
    drift: float
    drift_se: float
    final: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "l": self.l,
            "mean": finite_or_none(self.mean),
            "se": finite_or_none(self.se),
            "df": finite_or_none(self.df),
            "n": self.n,
            "blocks": self.blocks,
            "drift": finite_or_none(self.drift),
            "drift_se": finite_or_none(self.drift_se),
            "final": finite_or_none(self.final),
        }

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> TailStat:
        return TailStat(
            metric=str(d["metric"]), l=int(d["l"]), mean=none_to_nan(d["mean"]),
            se=none_to_nan(d["se"]), df=none_to_nan(d["df"]), n=int(d["n"]),
            blocks=int(d["blocks"]), drift=none_to_nan(d["drift"]),
            drift_se=none_to_nan(d["drift_se"]), final=none_to_nan(d["final"]),
        )  # fmt: skip


def _transform(metric: str, x: float) -> float:
    """Accuracies are compared as error rates 1 − acc ([LMA21] §5.1's test-error criterion)."""
    return 1.0 - x if metric.endswith("_acc") else x


def tail_stat(
    metric: str,
    l: int,  # noqa: E741
    times: Sequence[float],
    values: Sequence[float],
    start: float,
    tau: float | None,
) -> TailStat:
    """Mean and batch-means s.e. of ``values`` at the ``times`` ≥ ``start``.

    Blocks: b = ⌊window / (τ/2)⌋ contiguous blocks (10 when τ is unknown), at most 20 and with at
    least two points each; se = sd(block means)/√b with b − 1 degrees of freedom. With one point
    the s.e. is NaN (an unbounded interval).
    """
    idx = [i for i, t in enumerate(times) if t >= start - 1e-9]
    xs = [_transform(metric, values[i]) for i in idx]
    final = _transform(metric, values[-1]) if len(values) else math.nan
    n = len(xs)
    if n == 0:
        return TailStat(metric, l, math.nan, math.nan, math.nan, 0, 0, math.nan, math.nan, final)
    mean = sum(xs) / n
    if n == 1:
        return TailStat(metric, l, mean, math.nan, math.nan, 1, 1, math.nan, math.nan, final)
    width = times[idx[-1]] - times[idx[0]]
    b = int(width // (tau / 2.0)) if tau else 10
    b = max(2, min(b, MAX_BLOCKS, n // 2)) if n >= 4 else n
    groups: list[list[float]] = [[] for _ in range(b)]
    for j, x in enumerate(xs):
        groups[j * b // n].append(x)
    ms = [sum(g) / len(g) for g in groups]
    mb = sum(ms) / b
    se = math.sqrt(sum((m - mb) ** 2 for m in ms) / (b - 1) / b)
    drift = drift_se = math.nan
    if b >= 4:
        first, second = ms[: b // 2], ms[b // 2 :]
        m1, m2 = sum(first) / len(first), sum(second) / len(second)
        ss = sum((m - m1) ** 2 for m in first) + sum((m - m2) ** 2 for m in second)
        sp = math.sqrt(ss / (b - 2))
        drift, drift_se = m2 - m1, sp * math.sqrt(1 / len(first) + 1 / len(second))
    return TailStat(metric, l, mean, se, float(b - 1), n, b, drift, drift_se, final)
