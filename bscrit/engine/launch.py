"""``bscrit measure --nproc N``: torch's own launcher (torchrun) started for the user on this
machine, with the measure command line it was given (:mod:`bscrit.engine.distributed` is what each
rank then runs)."""

from __future__ import annotations

from collections.abc import Sequence

from bscrit.engine.distributed import _first_line, detect
from bscrit.errors import MeasurementError, Terminated, UsageError


def measure_args_from_argv(argv: Sequence[str]) -> list[str]:
    """The arguments after ``measure`` in ``argv``, without ``--nproc N`` / ``--nproc=N``."""
    argv = list(argv)
    try:
        start = argv.index("measure", 1) + 1
    except ValueError:
        raise UsageError(
            "--nproc: cannot find the measure command line; run "
            "`torchrun --nproc-per-node N -m bscrit measure ...` instead"
        ) from None
    out: list[str] = []
    skip = False
    for a in argv[start:]:
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if a.startswith("--nproc="):
            continue
        out.append(a)
    return out


def _interrupt(sigval: object) -> KeyboardInterrupt:
    """What the CLI handles for a signal torchrun's agent caught: SIGTERM is :class:`Terminated`
    (exit 143, as without ``--nproc``), any other (SIGINT, SIGHUP, SIGQUIT) a Ctrl-C (exit 130)."""
    import signal

    return Terminated() if sigval == signal.SIGTERM else KeyboardInterrupt()


def launch(nproc: int, args: Sequence[str]) -> int:
    """``torchrun --standalone --nproc-per-node N -m bscrit measure ARGS`` on this machine.

    Runs torch's own launcher (``torch.distributed.run``) in this process and returns rank 0's exit
    code (rank 0 has printed its error); when rank 0 did not get to say why (another rank crashed),
    raises an error naming the rank that failed first.
    """
    if detect() is not None:
        raise UsageError("--nproc: already inside a distributed launch (WORLD_SIZE is set)")
    if nproc < 1:
        raise UsageError(f"--nproc: expected at least 1 process, got {nproc}")
    import logging

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    # torchrun's agent logs every failure as a traceback-sized report; rank 0 says it in one line.
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("torch.distributed"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    targs = parse_args(
        ["--standalone", f"--nproc-per-node={nproc}", "-m", "bscrit", "measure", *args]
    )
    try:
        run(targs)
    except ChildFailedError as e:
        codes = {r: f.exitcode for r, f in e.failures.items()}
        if codes.get(0, 0) > 0:
            return codes[0]  # rank 0 printed the error and exited with its code
        first, failure = e.get_first_failure()
        how = (
            f"was killed by {failure.signal_name()}"
            if failure.exitcode < 0
            else f"exited with code {failure.exitcode}"
        )
        raise MeasurementError(f"rank {first} {how} (its output is above)") from None
    except KeyboardInterrupt:
        raise
    except Exception as e:
        if type(e).__name__ == "SignalException":  # torchrun's agent stopped the ranks on a signal
            raise _interrupt(getattr(e, "sigval", None)) from None
        raise MeasurementError(f"--nproc: torchrun failed: {_first_line(e)}") from None
    return 0
