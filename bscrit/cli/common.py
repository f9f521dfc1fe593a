"""What every ``bscrit`` command shares: the typer app, error handling, asking before long work,
JSON on stdout. The commands live one per module beside it and are registered on :data:`app` in
:mod:`bscrit.cli`.
"""

from __future__ import annotations

import functools
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from bscrit import __version__
from bscrit.errors import (
    ENV_DEBUG,
    BscritError,
    ExitCode,
    Terminated,
    debug_enabled,
    first_line,
    internal_message,
)

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
    """Turn library errors into one stderr line and an exit code; Ctrl-C into exit 130, SIGTERM
    into 143, saying which complete files were written before (an exception's ``written``); any
    other exception (a bug in bscrit) into one line and exit 4. With ``--debug`` (or
    ``BSCRIT_DEBUG=1``) the traceback of a bug, and the cause of a library error, are printed
    too."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from bscrit import report

        try:
            return fn(*args, **kwargs)
        except BscritError as e:
            if not getattr(e, "reported", False):  # a distributed rank 0 may have printed it
                report.error(e.for_cli())
            if debug_enabled() and e.__cause__ is not None:
                _print_traceback(e.__cause__)
            raise typer.Exit(int(e.exit_code)) from None
        except KeyboardInterrupt as e:
            term, done = isinstance(e, Terminated), ", ".join(map(str, getattr(e, "written", ())))
            what = f"written before it: {done}" if done else "no output file was written"
            report.error(f"interrupted{' (SIGTERM)' if term else ''}; {what}")
            raise typer.Exit(int(ExitCode.TERMINATED if term else ExitCode.INTERRUPTED)) from None
        except (typer.Exit, typer.Abort, typer.exceptions.TyperException):
            raise  # the command's own exit code, or typer's usage errors (exit 2)
        except Exception as e:  # not a user mistake: a bug in bscrit, never exit 1 (check's FAIL)
            if debug_enabled():
                _print_traceback(e)
            if _out_of_memory(e):  # outside the loops that name the batch: still exit 3
                report.error(f"out of memory: {first_line(e)}")
                raise typer.Exit(int(ExitCode.RUNTIME)) from None
            print(internal_message(e), file=sys.stderr, flush=True)
            raise typer.Exit(int(ExitCode.INTERNAL)) from None

    return wrapper  # type: ignore[return-value]


def _out_of_memory(e: BaseException) -> bool:
    """torch's (CUDA) OutOfMemoryError, recognised without importing torch."""
    return type(e).__name__ == "OutOfMemoryError" and type(e).__module__.startswith("torch")


def _print_traceback(e: BaseException) -> None:
    traceback.print_exception(type(e), e, e.__traceback__, file=sys.stderr)
    sys.stderr.flush()


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"bscrit {__version__}")
        raise typer.Exit()


def _debug_callback(value: bool) -> None:
    if value:  # the environment too: torchrun's ranks (--nproc) inherit it
        os.environ[ENV_DEBUG] = "1"


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version."
    ),
    debug: bool = typer.Option(
        False,
        "--debug",
        callback=_debug_callback,
        is_eager=True,
        help=(
            f"Print the traceback of an internal error (exit 4) and the cause of any other error "
            f"(also: {ENV_DEBUG}=1)."
        ),
    ),
) -> None:
    """bscrit: critical batch size from one checkpoint."""


def interactive() -> bool:
    """Ask before a long run only on an interactive terminal outside CI."""
    return sys.stdin.isatty() and sys.stderr.isatty() and not os.environ.get("CI")


def confirm_run(yes: bool, question: str) -> None:
    """After the cost is shown: ask on a terminal (unless ``--yes``); "no" exits 0."""
    from bscrit import report

    if yes:
        return
    if not interactive():
        report.info("non-interactive (no terminal or CI set): starting without asking")
    elif not typer.confirm(question, default=True, err=True):
        report.info("not started; nothing written")
        raise typer.Exit(int(ExitCode.OK))
