"""The ``bscrit`` command line: one module per command, registered here explicitly.

Each command parses its options, calls one workflow and hands the result to :mod:`bscrit.report`;
library errors (:class:`~bscrit.errors.BscritError`) are caught once
(:func:`bscrit.cli.common.handle_errors`) and become one message on stderr and an exit code
(:class:`~bscrit.errors.ExitCode`). typer is imported only in this package; torch only lazily,
inside the commands that train or measure, so ``bscrit --help``, ``predict``, ``check`` and
``scale`` start instantly.
"""

from __future__ import annotations

import os
import signal

from bscrit.cli import analyze, confirm, demo, measure, schedule, svag
from bscrit.cli.common import app
from bscrit.errors import Terminated

#: (name, function), in the order ``bscrit --help`` lists them.
COMMANDS = (
    ("measure", measure.measure),
    ("predict", analyze.predict),
    ("check", analyze.check),
    ("scale", analyze.scale),
    ("confirm", confirm.confirm),
    ("svag", svag.svag),
    ("demo", demo.demo),
    ("schedule", schedule.schedule),
)
for _name, _fn in COMMANDS:
    app.command(_name)(_fn)

__all__ = ["app", "main"]


def _terminate(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    raise Terminated


def main() -> None:
    """Console-script entry point; SIGTERM is handled like Ctrl-C (exit 143)."""
    if "WORLD_SIZE" not in os.environ:  # a torchrun rank: its launcher stops ranks by SIGTERM
        signal.signal(signal.SIGTERM, _terminate)
    app(prog_name="bscrit")
