"""Human output: the only package that imports rich. ``from bscrit import report`` and call
``report.show(report.format_measurement(m))``, ``report.warn(...)``, ``report.error(...)``.

- :mod:`bscrit.report.console`: the consoles :data:`out` (stdout: results) and :data:`err`
  (stderr: progress, warnings, errors), :func:`show`, :func:`error`, :func:`warn`, :func:`info`,
  :func:`progress`, :func:`print_json` and :class:`Report`.
- :mod:`bscrit.report.format`: number formats (:func:`fmt`, :func:`fmt_ci`) and layout helpers.
- One module per command's output: :mod:`~bscrit.report.measure`,
  :mod:`~bscrit.report.predict` (predict, check, scale), :mod:`~bscrit.report.svag`,
  :mod:`~bscrit.report.confirm`, :mod:`~bscrit.report.schedule` (and its figure,
  :mod:`~bscrit.report.schedule_plot`, imported only when asked for).

``report.out`` and ``report.err`` are read from :mod:`bscrit.report.console` at each access, so
replacing them there (to capture the output) is seen here too.
"""

from __future__ import annotations

from typing import Any

from bscrit.report import console as _console
from bscrit.report.confirm import format_confirm, format_confirm_cost
from bscrit.report.console import Report, error, info, print_json, progress, show, warn
from bscrit.report.format import fmt, fmt_ci
from bscrit.report.measure import format_measurement, format_per_tensor, format_stopping
from bscrit.report.predict import format_bounds, format_check, format_prediction, format_scaled
from bscrit.report.svag import format_svag, format_svag_cost

__all__ = [
    "Report",
    "err",
    "error",
    "fmt",
    "fmt_ci",
    "format_bounds",
    "format_check",
    "format_confirm",
    "format_confirm_cost",
    "format_measurement",
    "format_per_tensor",
    "format_prediction",
    "format_scaled",
    "format_stopping",
    "format_svag",
    "format_svag_cost",
    "info",
    "out",
    "print_json",
    "progress",
    "show",
    "warn",
]


def __getattr__(name: str) -> Any:
    """``out`` and ``err``: the current consoles of :mod:`bscrit.report.console`."""
    if name in ("out", "err"):
        return getattr(_console, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
