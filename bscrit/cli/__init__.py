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
from typing import Any

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
    """Console-script entry point; SIGTERM is handled like Ctrl-C (exit 143); a standard output
    that cannot encode bscrit's symbols gets them in ASCII (:mod:`bscrit.report.encoding`)."""
    from bscrit.report.encoding import survive_encoding

    ascii_only = survive_encoding()
    if "WORLD_SIZE" not in os.environ:  # a torchrun rank: its launcher stops ranks by SIGTERM
        signal.signal(signal.SIGTERM, _terminate)
    if not ascii_only:
        app(prog_name="bscrit")
        return
    import typer.main

    command = typer.main.get_command(app)
    _ascii_help(command)  # laid out by rich after the change: its panels stay aligned
    command(prog_name="bscrit")


def _ascii_help(command: Any) -> None:  # a click Command (typer's own click: no import)
    """The help texts of ``command`` and its subcommands in ASCII (≈ ∞ κ …: ``~ inf kappa``)."""
    from bscrit.report.encoding import to_ascii

    for attr in ("help", "short_help", "epilog"):
        if isinstance(getattr(command, attr, None), str):
            setattr(command, attr, to_ascii(getattr(command, attr)))
    for param in command.params:
        if isinstance(getattr(param, "help", None), str):
            param.help = to_ascii(param.help)  # type: ignore[attr-defined]
    for sub in getattr(command, "commands", {}).values():
        _ascii_help(sub)
