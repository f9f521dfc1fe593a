"""The ``bscrit`` command line: the only typer module.

Each command parses its options, calls one library function and hands the result to
:mod:`bscrit.report`. Library errors (:class:`~bscrit.errors.BscritError`) are caught here once and
turned into one message on stderr and an exit code (:class:`~bscrit.errors.ExitCode`). torch is
imported lazily, inside the commands that need it, so ``bscrit --help``, ``predict``, ``check``
and ``scale`` start instantly.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from . import __version__
from .errors import BscritError, ExitCode

F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(
    name="bscrit",
    help=(
        "How far can you scale the batch size? Measures the gradient noise (G, N) of a checkpoint "
        "and applies the bounds of Li, Malladi & Arora (2021) to give the critical batch size B* "
        "and the linearly / square-root scaled hyperparameters."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def handle_errors(fn: F) -> F:
    """Turn library errors into one stderr line and an exit code; Ctrl-C into exit 130."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from . import report

        try:
            return fn(*args, **kwargs)
        except BscritError as e:
            report.error(e.message)
            raise typer.Exit(int(e.exit_code)) from None
        except KeyboardInterrupt:
            report.error("interrupted; no output file was written")
            raise typer.Exit(int(ExitCode.INTERRUPTED)) from None

    return wrapper  # type: ignore[return-value]


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"bscrit {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version."
    ),
) -> None:
    """bscrit: critical batch size from one checkpoint."""


# ==============================================================================================
# measure  (issue: bscrit measure)
# ==============================================================================================


# ==============================================================================================
# predict / check / scale  (issue: predict, check and scale)
# ==============================================================================================


# ==============================================================================================
# svag  (issue: bscrit svag)
# ==============================================================================================


# ==============================================================================================
# demo  (issue: bscrit demo)
# ==============================================================================================


def main() -> None:
    """Console-script entry point."""
    app(prog_name="bscrit")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
