"""The ``bscrit`` command line: measure, predict, check, scale, and the entry point.

With :mod:`bscrit.cli_common` (the app, errors) and :mod:`bscrit.cli_runs` (svag, demo) these are
the only typer modules. Each command parses its options, calls one library function and hands
the result to :mod:`bscrit.report`. Library errors (:class:`~bscrit.errors.BscritError`) are
caught once (:func:`bscrit.cli_common.handle_errors`) and turned into one message on stderr and an
exit code (:class:`~bscrit.errors.ExitCode`). torch is imported lazily, inside the commands that
need it, so ``bscrit --help``, ``predict``, ``check`` and ``scale`` start instantly.
"""

from __future__ import annotations

import os
import signal
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from . import optim
from .cli_common import app, confirm_run, handle_errors, print_json
from .errors import ExitCode, Terminated

# ==============================================================================================
# measure  (issue: bscrit measure)
# ==============================================================================================


class Mode(str, Enum):
    train = "train"
    eval = "eval"


class Amp(str, Enum):
    bf16 = "bf16"


class Estimator(str, Enum):
    batch = "batch"
    per_example = "per-example"


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
        list[Path] | None,
        typer.Option(
            "--checkpoint",
            "-c",
            help="Checkpoint file, folder or glob ('runs/epoch*.pt'); repeat to pool several "
            "(mean of G and N, as [LMA21] averaged epochs 200-250), with an interval over the "
            "equilibrium when they are far enough apart. Overrides the spec's checkpoint.path.",
        ),
    ] = None,
    last: Annotated[
        int | None, typer.Option(min=1, help="Of a folder or glob: the last K by saved step.")
    ] = None,
    sample_steps: Annotated[
        str | None,
        typer.Option(
            "--sample-steps",
            help="Equilibrium draws from one checkpoint: continue its training (its own "
            "optimizer, B, data order) for T steps and measure at --samples points; 'auto' = 10 "
            "relaxation times 1/(2ηλ). States the cost first. docs/theory.md §8.",
        ),
    ] = None,
    samples: Annotated[
        int | None,
        typer.Option("--samples", min=2, help="Points measured over --sample-steps (default 20)."),
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before training.")] = False,
    out: Annotated[
        str | None,  # not Path, which drops a trailing "/"
        typer.Option(
            "--out", "-o", help="Write the JSON artifact here (and NAME.params.csv beside it)."
        ),
    ] = None,
    batches: Annotated[
        str | None,
        typer.Option(
            "--batches",
            "-k",
            help="Number of batches k: 'auto' = max(200, ceil(n/B)), or an integer.",
        ),
    ] = None,
    groups: Annotated[
        int | None, typer.Option("--groups", "-m", min=2, help="Jackknife groups m (default 10).")
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed of the batch sampling (default: spec, else 0).")
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="auto | cpu | cuda | cuda:N (auto: CUDA when present).")
    ] = None,
    mode: Annotated[
        Mode | None,
        typer.Option(
            help="train: BatchNorm uses batch statistics as in training (running statistics "
            "untouched); eval: running statistics."
        ),
    ] = None,
    amp: Annotated[
        Amp | None, typer.Option(help="bf16 autocast for forward/backward (CUDA only).")
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option("--batch-size", "-b", min=1, help="Override the spec's batch_size B."),
    ] = None,
    micro_batch_size: Annotated[
        int | None, typer.Option(min=1, help="Forward/backward in chunks of this many (divides B).")
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
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the JSON artifact on stdout instead of tables.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    nproc: Annotated[
        int | None,
        typer.Option(
            "--nproc",
            min=1,
            help="Run on N processes of this machine (one per GPU) by launching torchrun; for "
            "several machines use torchrun yourself. See docs/distributed.md.",
        ),
    ] = None,
    dist_timeout: Annotated[
        float | None,
        typer.Option(
            "--dist-timeout",
            min=1.0,
            help="Distributed runs: seconds to wait for the other ranks before failing "
            "(default 600, or $BSCRIT_DIST_TIMEOUT).",
        ),
    ] = None,
    estimator: Annotated[
        Estimator,
        typer.Option(
            help="batch: one gradient per batch (valid with train-mode BatchNorm). per-example: "
            "also per-example gradient norms from the same backward pass (Linear/Conv/norm "
            "layers, no train-mode BatchNorm): T1 and N for any B with far fewer batches.",
        ),
    ] = Estimator.batch,
    target_rel_error: Annotated[
        float | None,
        typer.Option(
            "--target-rel-error",
            help="Adaptive: start with --batches (default 10 per group) and add whole groups "
            "until the 95% half-width of NSR is below this fraction of NSR, or --max-batches.",
        ),
    ] = None,
    max_batches: Annotated[
        int | None,
        typer.Option(
            "--max-batches",
            min=4,
            help="Budget of an adaptive run (default 5 x max(200, ceil(n/B))).",
        ),
    ] = None,
    compile_model: Annotated[
        bool, typer.Option("--compile", help="torch.compile the forward pass (CUDA recommended).")
    ] = False,
    num_workers: Annotated[
        int | None,
        typer.Option(
            "--num-workers",
            min=0,
            help="DataLoader workers for datasets not held in memory (default: the spec's "
            "data.num_workers). In-memory TensorDatasets are indexed on the device directly.",
        ),
    ] = None,
    prefetch: Annotated[
        int | None, typer.Option(min=1, help="Batches each DataLoader worker reads ahead (def. 4).")
    ] = None,
    host_memory: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            help="GiB of host memory the m group sums (m x parameter bytes) may take; beyond it "
            "they spill to a file in $TMPDIR (default: half the available memory).",
        ),
    ] = None,
) -> None:
    """Measure G, N and NSR = N/G at a checkpoint, with 95% jackknife intervals.

    Draws k independent batches of B distinct examples at the checkpoint's weights (no update),
    and reports G = |grad L|^2, N = trace of the batch-gradient covariance and NSR = N/G for all
    trainable parameters and for the scale-invariant subset, the SGD equilibrium residual and a
    per-tensor breakdown. The model, its buffers and the checkpoint are left untouched. The
    parameters measured are those the run's optimizer updates (its saved state's param groups,
    else requires_grad); the gradient is the unclipped one (a clipping run moves with less noise).
    """
    from . import report
    from .equilibrium import parse_sample_steps, sample_cost_lines
    from .outputs import check_output_path, write_outputs
    from .pipeline import MeasureOptions, measure_session
    from .results import csv_path_for, dumps, write_measurement
    from .spec import load_spec

    if per_tensor not in ("all", "none") and not per_tensor.isdigit():
        raise typer.BadParameter(
            f"expected a number, 'all' or 'none', got {per_tensor!r}", param_hint="--per-tensor"
        )
    # before any work: a 20,000-batch result is not lost at the end
    outs = [] if out is None else [check_output_path(out), check_output_path(csv_path_for(out))]
    s = load_spec(spec)
    opts = MeasureOptions(
        batches=_parse_batches(batches),
        groups=groups,
        seed=seed,
        device=device,
        mode=mode.value if mode else None,
        amp=amp.value if amp else None,
        batch_size=batch_size,
        micro_batch_size=micro_batch_size,
        unsafe_load=unsafe_load,
        estimator=estimator.value,
        target_rel_error=target_rel_error,
        max_batches=max_batches,
        compile=compile_model,
        num_workers=num_workers,
        prefetch=prefetch,
        host_memory=host_memory,
        last=last,
        sample_steps=parse_sample_steps(sample_steps),
        samples=samples,
    )
    if nproc is not None:  # the spec and options are valid: re-run this command under torchrun
        from .distributed import launch, measure_args_from_argv
        from .sampling import check_sampling

        if opts.sampling:
            check_sampling([], opts, dist=True)  # continued training runs in one process

        raise typer.Exit(launch(nproc, measure_args_from_argv(sys.argv)))

    def on_rank(is_main: bool) -> None:  # under torchrun rank 0 alone prints and writes
        report.out.quiet = report.err.quiet = not is_main

    def on_sampling(plan: Any, opt: Any) -> None:  # the cost first, then (maybe) ask
        report.info("\n".join(sample_cost_lines(plan, opt, s.batch_size)))
        confirm_run(yes, "Train and measure?")

    progress = None if quiet else (lambda d, t: report.progress(d, t, "batch"))
    m = measure_session(
        s, checkpoint, opts, dist_timeout, progress_factory=progress, on_rank=on_rank,
        on_error=report.error, on_info=None if quiet else report.info, on_sampling=on_sampling,
    )  # fmt: skip
    if m is None:  # a rank other than 0
        return
    if outs:
        wrote = write_outputs(m.to_dict, [(lambda: write_measurement(m, outs[0]), outs)])
    if json_out:
        report.out.print(dumps(m.to_dict()), markup=False, highlight=False, soft_wrap=True, end="")
    else:
        report.show(report.format_measurement(m))
        if per_tensor != "none":
            limit = None if per_tensor == "all" else int(per_tensor)
            report.show(report.format_per_tensor(m.per_parameter, limit))
    line = report.format_stopping(m)
    if line is not None:
        report.info(line)
    for w in m.warnings:
        report.warn(w)
    if outs:
        report.info(wrote)
    elif not quiet and not json_out:
        report.info("(no --out given: nothing written; add --out m.json for predict/check/scale)")


# ==============================================================================================
# predict / check / scale  (issue: predict, check and scale)
# ==============================================================================================


OptimizerName = Enum("OptimizerName", {n: n for n in optim.NAMES}, type=str)  # type: ignore[misc]


C2_HELP = "C² of [LMA21] (C > 1 is the closeness constant; the paper uses C² = 2)."


@app.command()
@handle_errors
def predict(
    measurements: Annotated[
        list[Path],
        typer.Argument(
            help="Measurement JSON file(s) from `bscrit measure --out`. The first is the base run "
            "(its B starts the recommended range, its optimizer gets scaled); more files (other "
            "B or checkpoints) give the min and max of B* as in [LMA21] Fig. 3."
        ),
    ],
    c2: Annotated[float, typer.Option("--c2", help=C2_HELP)] = 2.0,
    json_out: Annotated[bool, typer.Option("--json", help="Print only JSON on stdout.")] = False,
) -> None:
    """Critical batch size B* with 95% intervals, the recommended range and scaled hyperparameters.

    For each measurement: NSR, B* = C²(B + B·N/G) [LMA21 Thm 5.6] and its approximation C²·B·N/G,
    the Thm 5.2 verdict on the SDE approximation, the Thm 5.5 certificate, the simple noise scale
    [McC18] and the implicit-regularisation terms [SDBD21 eq. 22]. Reads JSON only (no torch).
    """
    from . import report
    from .prediction import predict_files

    p = predict_files(measurements, c2)
    if json_out:
        print_json(p.to_dict())
    else:
        report.show(report.format_prediction(p))


@app.command()
@handle_errors
def check(
    measurements: Annotated[
        list[Path],
        typer.Argument(help="Measurement JSON file(s); the first is the base run."),
    ],
    batch_size: Annotated[
        int,
        typer.Option(
            "--batch-size", "-b", min=1, help="The batch size B' the large-batch job will use."
        ),
    ],
    c2: Annotated[float, typer.Option("--c2", help=C2_HELP)] = 2.0,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            help="Fail (exit 1) above the lower 95% bound of B*, not only above its estimate.",
        ),
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print only JSON on stdout.")] = False,
) -> None:
    """CI gate: exit 0 when B' is in the recommended range, 1 when it is past B*, 2 on bad input.

    Exit 1 when B' is above the point estimate of B* [LMA21 Thm 5.6] (with --strict: above its
    lower 95% bound) or above the dataset size n. Between the two without --strict: exit 0 with
    a warning. One line says why, and which limit (the bound of B* or n) ends the range.
    """
    from . import report
    from .prediction import check as check_target
    from .prediction import predict_files

    r = check_target(predict_files(measurements, c2), batch_size, strict)
    if json_out:
        print_json(r.to_dict())
    else:
        report.show(report.format_check(r))
    if r.exit_code != ExitCode.OK:
        raise typer.Exit(int(r.exit_code))


@app.command()
@handle_errors
def scale(
    target_batch_size: Annotated[
        int,
        typer.Option("--target-batch-size", "-t", min=1, help="The new batch size B' = κB."),
    ],
    optimizer: Annotated[
        OptimizerName | None,
        typer.Option(
            help="Optimizer of the base run (default: the spec's, else the measurement's)"
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            "--batch-size",
            "-b",
            min=1,
            help="Batch size B of the base run (default: the spec's, else the measurement's).",
        ),
    ] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate η of the base run.")] = None,
    momentum: Annotated[float | None, typer.Option(help="SGD / RMSprop momentum.")] = None,
    beta1: Annotated[float | None, typer.Option(help="Adam/AdamW β₁ (default 0.9).")] = None,
    beta2: Annotated[float | None, typer.Option(help="Adam/AdamW β₂ (default 0.999).")] = None,
    eps: Annotated[float | None, typer.Option(help="Adam/AdamW/RMSprop ε (default 1e-8).")] = None,
    alpha: Annotated[
        float | None, typer.Option(help="RMSprop smoothing constant (the paper's β; default 0.99).")
    ] = None,
    weight_decay: Annotated[
        float | None, typer.Option("--weight-decay", help="Weight decay λ.")
    ] = None,
    epochs: Annotated[
        float | None, typer.Option(help="Training length in epochs (unchanged).")
    ] = None,
    steps: Annotated[
        int | None, typer.Option(min=0, help="Training length in steps (÷ κ).")
    ] = None,
    warmup_steps: Annotated[
        int | None, typer.Option("--warmup-steps", min=0, help="Warm-up length in steps (÷ κ).")
    ] = None,
    from_spec: Annotated[
        Path | None,
        typer.Option(
            "--from-spec",
            help="Read the optimizer, batch_size and schedule (warmup_steps, total_steps) from a "
            "spec; options given on the command line override it.",
        ),
    ] = None,
    measurement: Annotated[
        Path | None,
        typer.Option(
            "--measurement",
            "-m",
            help="Measurement JSON: warn when B' is beyond its recommended range.",
        ),
    ] = None,
    c2: Annotated[float, typer.Option("--c2", help=C2_HELP)] = 2.0,
    json_out: Annotated[bool, typer.Option("--json", help="Print only JSON on stdout.")] = False,
) -> None:
    """Scale the hyperparameters from B to B' = κB: linear rule (SGD), square-root rule (Adam...).

    SGD: η' = κη [LMA21 Def. 2.1]. RMSprop / Adam: η' = √κ η, β' = 1 − κ(1 − β), ε' = ε/√κ
    [MLPA22 Defs. 5.1, 5.2]; AdamW also λ' = √κ λ (derived). Steps and warm-up ÷ κ (same epochs).
    Works for scaling down (κ < 1) too.
    """
    from . import report
    from .rescale import scale_request

    hp = {"lr": lr, "momentum": momentum, "beta1": beta1, "beta2": beta2, "eps": eps}
    hp |= {"alpha": alpha, "weight_decay": weight_decay}
    result = scale_request(
        target_batch_size,
        optimizer=optimizer.value if optimizer is not None else None,
        batch_size=batch_size,
        values=hp,
        epochs=epochs,
        steps=steps,
        warmup_steps=warmup_steps,
        from_spec=from_spec,
        measurement=measurement,
        c2=c2,
    )
    if json_out:
        print_json(result.to_dict())
    else:
        report.show(report.format_scaled(result))
    for w in result.warnings:
        report.warn(w)


from . import cli_confirm, cli_runs  # noqa: E402,F401  (register confirm, svag, demo)


def _terminate(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    raise Terminated


def main() -> None:
    """Console-script entry point; SIGTERM is handled like Ctrl-C (exit 143)."""
    if "WORLD_SIZE" not in os.environ:  # a torchrun rank: its launcher stops ranks by SIGTERM
        signal.signal(signal.SIGTERM, _terminate)
    app(prog_name="bscrit")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
