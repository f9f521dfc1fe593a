"""Numbers in JSON: inf and NaN ↔ null.

JSON has no ``inf`` or ``NaN``. bscrit writes an unbounded or undefined number (the NSR when
Ĝ ≤ 0, the open upper end of an interval, a ratio with nothing to divide by) as ``null`` and,
where the field means "unbounded", reads ``null`` back as ``inf``. These functions are the one
place that rule is written.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bscrit.stats.estimators import Estimate

__all__ = ["estimate_dict", "finite_or_none", "finite_pair", "none_to_inf"]


def finite_or_none(x: float | None) -> float | None:
    """``x`` as a JSON number: ``None``, NaN and ±inf → ``None``; anything else → ``float(x)``."""
    if x is None or not math.isfinite(x):
        return None
    return float(x)


def none_to_inf(x: Any) -> float:
    """Inverse of :func:`finite_or_none` for a field that may be unbounded: ``None`` → ``inf``,
    anything else → ``float(x)``."""
    return math.inf if x is None else float(x)


def finite_pair(ci: tuple[float, float]) -> list[float | None]:
    """A 95% interval ``(lo, hi)`` as a JSON pair, each end through :func:`finite_or_none`."""
    return [finite_or_none(ci[0]), finite_or_none(ci[1])]


def estimate_dict(e: Estimate) -> dict[str, Any]:
    """JSON form of an :class:`~bscrit.stats.estimators.Estimate`: value, s.e. and 95% interval,
    each through :func:`finite_or_none`."""
    return {
        "value": finite_or_none(e.value),
        "se": finite_or_none(e.se),
        "ci95": finite_pair(e.ci95),
    }
