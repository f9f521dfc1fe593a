"""Errors raised by the library and the exit codes the CLI maps them to.

Library code raises a :class:`BscritError` subclass; ``cli.py`` catches it once, prints one
clear message on stderr and exits with ``error.exit_code``. Nothing else should print a traceback
for a user mistake.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import IntEnum

#: Environment variable that turns on ``--debug`` (full tracebacks of internal errors).
ENV_DEBUG = "BSCRIT_DEBUG"


class ExitCode(IntEnum):
    """Process exit codes of the ``bscrit`` command."""

    OK = 0
    CHECK_FAILED = 1  # ``bscrit check``: the target batch size is past the critical batch size
    USAGE = 2  # bad command line, spec, checkpoint or artifact
    RUNTIME = 3  # the measurement or a run failed (NaN gradient, out of memory, the user's code)
    INTERNAL = 4  # an unexpected error inside bscrit: a bug (``--debug`` shows the traceback)
    #: no answer either way: ``check``'s B' between the lower 95% bound of B* and its point
    #: estimate; ``confirm``'s and ``svag``'s ``inconclusive`` (svag also ``not_converged``)
    UNDECIDED = 5
    #: ``check``: B' is inside the range, but the range rests on intervals that cover the
    #: measured checkpoint(s) only, not the equilibrium (docs/theory.md §8)
    PROVISIONAL = 6
    INTERRUPTED = 130  # Ctrl-C
    TERMINATED = 143  # SIGTERM (128 + 15), handled like Ctrl-C


class BscritError(Exception):
    """Base class: a message meant for the user, and the exit code to leave with.

    The message names values, not command-line flags: library users call functions. Where it
    names an option it writes a ``{key}`` placeholder and passes ``key="option_name"``; ``str(e)``
    renders it as ``option_name`` and :meth:`for_cli` (what the CLI prints) as ``--option-name``.
    Other braces in the message are left alone.
    """

    exit_code: ExitCode = ExitCode.USAGE

    def __init__(self, message: str, *, exit_code: ExitCode | None = None, **options: str) -> None:
        self.template = message
        self.options = options
        super().__init__(self._render(options))
        if exit_code is not None:
            self.exit_code = exit_code

    def _render(self, names: dict[str, str]) -> str:
        text = self.template
        for k, v in names.items():  # only the named placeholders
            text = text.replace("{" + k + "}", v)
        return text

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""

    def for_cli(self) -> str:
        """The message with every option written as its command-line flag."""
        return self._render({k: "--" + v.replace("_", "-") for k, v in self.options.items()})


@dataclass(frozen=True)
class SpecProblem:
    """One problem in a spec: where (a dotted key path) and what was expected."""

    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}" if self.key else self.message


class SpecError(BscritError):
    """A spec file is invalid. Carries *every* problem found, each with its key path."""

    exit_code = ExitCode.USAGE

    def __init__(self, source: str, problems: list[SpecProblem]) -> None:
        self.source = source
        self.problems = list(problems)
        lines = [f"invalid spec {source} ({len(self.problems)} problem(s)):"]
        lines += [f"  - {p}" for p in self.problems]
        super().__init__("\n".join(lines))


class CheckpointError(BscritError):
    """A checkpoint cannot be read or does not fit the model."""

    exit_code = ExitCode.USAGE


class DataError(BscritError):
    """The dataset cannot be built or is unsuitable (e.g. smaller than the batch size)."""

    exit_code = ExitCode.USAGE


class ArtifactError(BscritError):
    """A JSON artifact (measurement, prediction) is missing, malformed or of the wrong schema."""

    exit_code = ExitCode.USAGE


class UsageError(BscritError):
    """A value given to the library (an option, a hyperparameter, a batch size) is invalid."""

    exit_code = ExitCode.USAGE


class RunError(BscritError):
    """A run (SVAG, a training branch) failed: a diverged base run, NaN loss, out of memory."""

    exit_code = ExitCode.RUNTIME


class MeasurementError(BscritError):
    """The measurement itself failed: a NaN/Inf gradient, a non-scalar loss, out of memory."""

    exit_code = ExitCode.RUNTIME


class UserCodeError(BscritError):
    """The user's own code raised while it ran: the model's forward, the loss, the backward pass
    through them, a dataset item or the collate function (not while a factory built them: that
    is a :class:`SpecError`).

    The library raises it where it calls that code; the loops that know the batch or the step
    turn it into a :class:`MeasurementError` or :class:`RunError` with :meth:`at`, chained to the
    original exception (``--debug`` prints its traceback). Exit code 3 either way.

    Attributes:
        origin: what raised, e.g. ``"the loss function"``, ``"dataset item 17"``.
        error: the original exception.
        stage: ``"data"`` (reading the examples) or ``"pass"`` (the forward/backward pass).
    """

    exit_code = ExitCode.RUNTIME

    def __init__(
        self, origin: str, error: BaseException, stage: str = "pass", line: str | None = None
    ) -> None:
        self.origin, self.error, self.stage = origin, error, stage
        if line is None:
            line, name = first_line(error), type(error).__name__
            if isinstance(error, RuntimeError) and type(error) is not RuntimeError:
                line = line if line.startswith(name) else f"{name}: {line}"  # NotImplementedError
        super().__init__(f"{line} (raised by {origin})")

    def at(self, where: str) -> str:
        """The one-line message of the failure ``where`` it happened (``"at batch 7"``)."""
        what = "reading the examples" if self.stage == "data" else "the forward/backward pass"
        return f"{what} failed {where}: {self.message}"


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread by the CLI's handler: every ``except KeyboardInterrupt``
    clean-up runs as for Ctrl-C (temp files removed, nothing partial); the exit code is 143."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message for a one-line error, its type named when it is
    not a RuntimeError (``IndexError: Target 4 is out of bounds.``), with a hint for labels."""
    msg = str(e).strip()
    line = msg.splitlines()[0] if msg else ""
    if not isinstance(e, RuntimeError) or not line:
        line = f"{type(e).__name__}: {line}" if line else type(e).__name__
    if isinstance(e, IndexError) and "out of bounds" in line:
        line += " (are the targets class indices 0..C-1 for a model with C outputs?)"
    return line


def debug_enabled() -> bool:
    """``--debug`` or ``BSCRIT_DEBUG=1``: print the traceback of an internal error (and the cause
    of a library error) besides the one-line message."""
    return os.environ.get(ENV_DEBUG, "").strip().lower() not in ("", "0", "false", "no", "off")


def internal_message(e: BaseException) -> str:
    """The one line printed for an unexpected error (exit code 4)."""
    msg = str(e).strip()
    what = f"{type(e).__name__}: {msg.splitlines()[0]}" if msg else type(e).__name__
    return (
        f"internal error: {what} (a bug in bscrit: please report it; --debug shows the traceback)"
    )
