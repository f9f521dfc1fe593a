"""The one figure writer behind every ``--plot`` (svag, confirm, schedule): a matplotlib figure
saved as a PNG atomically. matplotlib is imported only here and in the figure modules, inside
functions."""

from __future__ import annotations

import os
import tempfile
from typing import Any

from bscrit.artifacts.files import write_error


def save_figure(fig: Any, path: str | os.PathLike[str]) -> None:
    """Save a matplotlib figure as a PNG atomically, then close it.

    The PNG is drawn into a temporary file created exclusively in the target folder (a random name:
    a link planted there is never followed), then renamed over ``path``; a write failure (disk
    full, folder gone) raises the exit-3 error naming the file, and no temporary file is left.
    """
    import matplotlib.pyplot as plt

    p = os.fspath(path)
    d = os.path.dirname(os.path.abspath(p))
    tmp: str | None = None
    try:
        os.makedirs(d, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(p)}.", suffix=".tmp", dir=d)
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, dpi=120, format="png")
            mask = os.umask(0)
            os.umask(mask)
            os.fchmod(f.fileno(), 0o666 & ~mask)  # as open() would give, not mkstemp's 0600
        os.replace(tmp, p)
        tmp = None
    except OSError as e:
        raise write_error(p, e) from None
    finally:
        plt.close(fig)
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
