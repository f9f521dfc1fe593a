"""The consoles and everything that prints: stdout carries results (tables, JSON); stderr carries
progress, warnings and errors, so ``bscrit measure ... --json > m.json`` stays clean.

:func:`show` prints renderables (stdout by default), and :func:`error`, :func:`warn` and
:func:`info` print messages on stderr. A :class:`Report` is a Group that also carries the warnings
that belong with it; :func:`show` prints those on stderr after the Group. The ``format_*``
functions of the other report modules build what is printed and print nothing.

:data:`out` and :data:`err` are read here at each call: to capture the output, replace them in
this module (``bscrit.report.console.out = Console(file=...)``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.progress import (  # fmt: skip
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from rich.progress import Task

# Outside a terminal (pipes, CI logs) rich falls back to 80 columns and truncates the tables;
# use 120 there unless COLUMNS says otherwise.
_WIDTH = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 120
out = Console(highlight=False, soft_wrap=False, width=_WIDTH)
err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 120)


class Report(Group):
    """A :class:`~rich.console.Group` for stdout plus the warnings that go with it.

    :func:`show` prints the Group and then each warning with :func:`warn` (stderr); printed
    directly (``console.print(report)``) only the Group appears.
    """

    def __init__(self, *renderables: RenderableType, warnings: Iterable[str] = ()) -> None:
        super().__init__(*renderables)
        self.warnings: tuple[str, ...] = tuple(warnings)


def show(
    *renderables: RenderableType, stderr: bool = False, console: Console | None = None
) -> None:
    """Print renderables on stdout (``stderr=True``: on stderr; ``console``: on that console).

    A ``str`` is printed literally (no markup). The warnings of a :class:`Report` follow on
    stderr. The plain lines of the reports are neither wrapped nor cropped at the console width
    (CI logs grep them); tables and other text are laid out to the width as usual.
    """
    c = console if console is not None else (err if stderr else out)
    for r in renderables:
        _print(c, Text(r) if isinstance(r, str) else r)
        if isinstance(r, Report):
            for w in r.warnings:
                warn(w)


def _print(console: Console, r: RenderableType) -> None:
    """Print a Group part by part (the same output as the Group): tables and wrapped text are
    cropped at the console width as usual, the unwrapped plain lines (:func:`_line`) are not."""
    if isinstance(r, Group):
        for part in r.renderables:
            _print(console, part)
    else:
        if not console.encoding.startswith("utf"):  # ≈ ∞ κ … in ASCII before the layout
            r = ascii_renderable(r)
        console.print(r, soft_wrap=isinstance(r, Text) and bool(r.no_wrap))


def ascii_renderable(r: RenderableType) -> RenderableType:
    """``r`` with its text in ASCII (:func:`bscrit.report.encoding.to_ascii`: ``≈`` → ``~``,
    ``κ`` → ``kappa``), for a console that cannot encode the symbols: changed before rich lays
    it out, so the tables stay aligned. Strings, :class:`Text` (styles kept), tables (cells,
    headers, title) and :class:`~bscrit.report.format.Fit` are changed (tables in place);
    anything else is returned as is (the stream's error handler is the net)."""
    from bscrit.report.encoding import to_ascii
    from bscrit.report.format import Fit

    if isinstance(r, str):
        return to_ascii(r)
    if isinstance(r, Text):
        cuts = sorted({i for sp in r.spans for i in (sp.start, sp.end)} - {0, len(r)})
        new = r.blank_copy()
        for part in r.divide(cuts):
            start = len(new)
            new.append(to_ascii(part.plain))
            for sp in part.spans:
                new.stylize(sp.style, start, len(new))
        return new
    if isinstance(r, Table):
        for col in r.columns:
            col.header = ascii_renderable(col.header)
            col._cells = [ascii_renderable(c) for c in col._cells]
        if isinstance(r.title, str | Text):
            r.title = ascii_renderable(r.title)  # type: ignore[assignment]
        return r
    if isinstance(r, Fit):
        return Fit(*map(ascii_renderable, r.layouts))
    if isinstance(r, Group):
        return Group(*map(ascii_renderable, r.renderables))
    return r


def print_json(d: dict[str, Any]) -> None:
    """A result as JSON on stdout (``--json``): the artifacts' own encoding (inf as null), no
    markup, no wrapping."""
    from bscrit.artifacts.files import dumps

    out.print(dumps(d), markup=False, highlight=False, soft_wrap=True, end="")


def error(message: str) -> None:
    err.print(f"[bold red]error:[/] {escape(message)}", markup=True, highlight=False)


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/] {escape(message)}", markup=True, highlight=False)


def info(message: str) -> None:
    err.print(message, markup=False, highlight=False)


class _StepsPerSecond(TextColumn):
    def __init__(self, unit: str) -> None:
        super().__init__("")
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(
            "" if speed is None else f"{speed:.1f} {self.unit}/s", style="progress.data.speed"
        )


@contextmanager
def progress(
    description: str, total: int, unit: str = "batch", enabled: bool = True
) -> Iterator[Callable[..., None]]:
    """A progress bar on stderr; yields ``advance(n=1)``. Disabled → a no-op callable."""
    if not enabled:
        yield lambda n=1: None
        return
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _StepsPerSecond(unit),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=err,
        transient=False,
    )
    with bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)
