"""The path of :class:`FreeCapture` before the package had layers (0.1): kept so that
``from bscrit.free_capture import FreeCapture`` goes on working. Import it as
``from bscrit import FreeCapture``; the class lives in :mod:`bscrit.engine.free_capture`."""

from __future__ import annotations

import warnings

from bscrit.engine.free_capture import FreeCapture

__all__ = ["FreeCapture"]

warnings.warn(
    "bscrit.free_capture is deprecated: use `from bscrit import FreeCapture`",
    DeprecationWarning,
    stacklevel=2,
)
