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
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

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


class Mode(str, Enum):
    train = "train"
    eval = "eval"


class Amp(str, Enum):
    bf16 = "bf16"


def _parse_batches(value: str | None) -> int | None:
    if value is None or value == "auto":
        return None
    try:
        k = int(value)
    except ValueError:
        raise typer.BadParameter(f"expected 'auto' or an integer, got {value!r}") from None
    if k < 4:
        raise typer.BadParameter(f"expected at least 4 batches, got {k}")
    return k


@app.command()
@handle_errors
def measure(
    spec: Annotated[Path, typer.Argument(help="YAML spec of model, data, loss, batch size.")],
    checkpoint: Annotated[
        Optional[list[Path]],
        typer.Option(
            "--checkpoint", "-c",
            help="Checkpoint to measure; repeat to pool several (mean of G and N, as [LMA21] "
            "averaged epochs 200-250). Overrides the spec's checkpoint.path.",
        ),
    ] = None,
    out: Annotated[
        Optional[Path],
        typer.Option("--out", "-o", help="Write the JSON artifact here (and NAME.params.csv beside it)."),
    ] = None,
    batches: Annotated[
        Optional[str],
        typer.Option("--batches", "-k", help="Number of batches k: 'auto' = max(200, ceil(n/B)), or an integer."),
    ] = None,
    groups: Annotated[
        Optional[int], typer.Option("--groups", "-m", min=2, help="Jackknife groups m (default 10).")
    ] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the batch sampling (default: spec, else 0).")] = None,
    device: Annotated[
        Optional[str], typer.Option(help="auto | cpu | cuda | cuda:N (auto: CUDA when present).")
    ] = None,
    mode: Annotated[
        Optional[Mode],
        typer.Option(help="train: BatchNorm uses batch statistics as in training (running stats untouched); eval."),
    ] = None,
    amp: Annotated[Optional[Amp], typer.Option(help="bf16 autocast for forward/backward (CUDA only).")] = None,
    batch_size: Annotated[
        Optional[int], typer.Option("--batch-size", "-b", min=1, help="Override the spec's batch_size B.")
    ] = None,
    unsafe_load: Annotated[
        bool,
        typer.Option(
            "--unsafe-load",
            help="Load checkpoints with torch.load(weights_only=False): this EXECUTES pickled code "
            "from the file. Only for files you trust (e.g. a pickled full model).",
        ),
    ] = False,
    per_tensor: Annotated[
        str, typer.Option(help="Per-tensor rows to print: a number, 'all' or 'none'.")
    ] = "20",
    json_out: Annotated[bool, typer.Option("--json", help="Print the JSON artifact on stdout instead of tables.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Measure G, N and NSR = N/G at a checkpoint, with 95% jackknife intervals.

    Draws k independent batches of B distinct examples at the checkpoint's weights (no update),
    and reports G = |grad L|^2, N = trace of the batch-gradient covariance and NSR = N/G for all
    trainable parameters and for the scale-invariant subset, the SGD equilibrium residual and a
    per-tensor breakdown. The model, its buffers and the checkpoint are left untouched.
    """
    from . import report
    from .measure import MeasureOptions, run_measurement
    from .results import dumps, write_measurement
    from .spec import load_spec

    if per_tensor not in ("all", "none") and not per_tensor.isdigit():
        raise typer.BadParameter(f"expected a number, 'all' or 'none', got {per_tensor!r}", param_hint="--per-tensor")
    s = load_spec(spec)
    opts = MeasureOptions(
        batches=_parse_batches(batches),
        groups=groups,
        seed=seed,
        device=device,
        mode=mode.value if mode else None,
        amp=amp.value if amp else None,
        batch_size=batch_size,
        unsafe_load=unsafe_load,
    )
    show_progress = not quiet and not json_out
    m = run_measurement(
        s,
        checkpoint,
        opts,
        progress_factory=(lambda d, t: report.progress(d, t, "batch")) if not quiet else None,
    )
    if out is not None:
        json_path, csv_path = write_measurement(m, out)
    if json_out:
        report.out.print(dumps(m.to_dict()), markup=False, highlight=False, soft_wrap=True, end="")
    else:
        report.measurement_table(m)
        if per_tensor != "none":
            report.per_tensor_table(m.per_parameter, None if per_tensor == "all" else int(per_tensor))
    for w in m.warnings:
        report.warn(w)
    if out is not None:
        report.info(f"wrote {json_path} and {csv_path}")
    elif show_progress:
        report.info("(no --out given: nothing written; add --out m.json for predict/check/scale)")


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
