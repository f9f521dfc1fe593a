"""Number formats and the layout helpers every report shares (rich renderables; nothing printed).

:func:`fmt` and :func:`fmt_ci` write figures and intervals compactly; :func:`fmt_batch` a batch
size ('∞' when unbounded), :data:`fmt_batch_range` a range of them and :func:`fmt_hp` a
hyperparameter. :func:`make_table` builds a
table of labels and figures, :class:`Fit` picks the first layout that fits the console, and
:func:`plain_line` is a line CI logs can grep (never wrapped).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.measure import Measurement as Width
from rich.table import Table
from rich.text import Text

from bscrit.theory.recommendation import batch_range

#: A range of batch sizes, ``[32, 992.7]``: the same words in ``predict``'s table and ``check``'s
#: reasons (those are written by :mod:`bscrit.theory.prediction`, which cannot import rich).
fmt_batch_range = batch_range


def fmt(x: float | None, digits: int = 4) -> str:
    """Compact number: 4 significant digits, scientific for very small/large, '∞' for inf."""
    if x is None:
        return "—"
    if isinstance(x, float) and math.isnan(x):
        return "nan"
    if isinstance(x, float) and math.isinf(x):
        return "∞" if x > 0 else "-∞"
    if x == 0:
        return "0"
    a = abs(x)
    if 1e-3 <= a < 1e5:
        return f"{x:.{digits}g}"
    return f"{x:.{digits - 1}e}"


def fmt_ci(ci: tuple[float, float] | None) -> str:
    """A 95% interval as '[lo, hi]' ('—' when there is none)."""
    if ci is None:
        return "—"
    return f"[{fmt(ci[0])}, {fmt(ci[1])}]"


class Fit:
    """The first layout whose natural width fits the console, else the last: a table too wide
    is laid out with fewer columns instead of having its cells cut with '…' by rich."""

    def __init__(self, *layouts: RenderableType) -> None:
        self.layouts = layouts

    def choose(self, console: Console, options: ConsoleOptions) -> RenderableType:
        natural = options.update(max_width=1 << 16)  # Width.get clamps to max_width
        for x in self.layouts[:-1]:
            if Width.get(console, natural, x).maximum <= options.max_width:
                return x
        return self.layouts[-1]

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self.choose(console, options)


def make_table(
    title: str, cols: Sequence[str], rows: Iterable[Sequence[str]], left: int = 1
) -> Table:
    """``left`` label columns (folded when too long), then figures (right-aligned, never cut)."""
    t = Table(title=title)
    for i, col in enumerate(cols):
        if i < left:
            t.add_column(col, overflow="fold")
        else:
            t.add_column(col, justify="right", no_wrap=True)
    for row in rows:
        t.add_row(*row)
    return t


def plain_line(text: str) -> Text:
    """One line of plain text, never wrapped (CI logs grep it); :func:`~bscrit.report.console.show`
    does not crop it."""
    return Text(text, no_wrap=True, overflow="ignore")


def fmt_batch(x: float | None) -> str:
    """A batch size: an integer count, '∞' when unbounded."""
    if x is None:
        return "—"
    if math.isinf(x):
        return "∞"
    return f"{x:.0f}" if abs(x) >= 10 else f"{x:.3g}"


def fmt_batch_ci(ci: tuple[float, float]) -> str:
    if math.isinf(ci[1]):
        return f"[{fmt_batch(ci[0])}, ∞)"
    return f"[{fmt_batch(ci[0])}, {fmt_batch(ci[1])}]"


def fmt_hp(x: float | int | None) -> str:
    """A hyperparameter: 6 significant digits (β₂ = 0.99975 must not print as 0.9998)."""
    if x is None:
        return "—"
    return f"{x:.6g}"
