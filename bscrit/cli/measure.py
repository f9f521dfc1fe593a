"""``bscrit measure``: G, N and NSR at one or more checkpoints (measure workflow, then report)."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from bscrit.cli.common import handle_errors
from bscrit.cli.limits import MAX_SAMPLES, check_measure_size, sampling_gate

if TYPE_CHECKING:
    from bscrit.specfile.document import Spec
    from bscrit.workflows.plan import MeasureOptions

# ==============================================================================================
# measure  (issue: bscrit measure)
# ==============================================================================================


class Mode(str, Enum):
    train = "train"
    eval = "eval"


class Amp(str, Enum):
    bf16 = "bf16"


class Precision(str, Enum):
    fp32 = "fp32"
    bf16_autocast = "bf16-autocast"
    bf16_weights = "bf16-weights"


class Shard(str, Enum):
    fsdp = "fsdp"


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


def _spec_and_outputs(
    spec: Path, out: str | None, checkpoint: list[Path] | None
) -> tuple[Spec, list[Path]]:
    """The spec, and the ``--out`` JSON and its CSV refused before any work when they could not
    be written (a 20,000-batch result is not lost at the end) or would replace an input (the
    spec, a checkpoint, a factory file)."""
    from bscrit.artifacts.measurement import csv_path_for
    from bscrit.cli.outputs import Inputs, check_output_path, spec_inputs
    from bscrit.specfile.document import load_spec

    outs = [] if out is None else [check_output_path(out), check_output_path(csv_path_for(out))]
    s = load_spec(spec)
    inputs = spec_inputs(s) + Inputs.of(("the checkpoint", checkpoint or ()))
    for p in outs:
        inputs.refuse(p)
    return s, outs


def _check_shard(opts: MeasureOptions, s: Spec, nproc: int | None) -> None:
    """``--shard fsdp``: B divisible by the ranks (``--nproc``, torchrun's, else one), and the
    rest, checked before any process starts."""
    if opts.shard is None:
        return
    from bscrit.engine.distributed import detect
    from bscrit.workflows.plan import check_shard_options

    world = nproc or (detect() or (0, 1, 0))[1]
    check_shard_options(opts, s, opts.batch_size or s.batch_size, world)


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
        typer.Option(
            "--samples",
            min=2,
            max=MAX_SAMPLES,
            help="Points measured over --sample-steps (default 20).",
        ),
    ] = None,
    step: Annotated[
        int | None,
        typer.Option(
            "--step",
            min=0,
            help="The training step of the (one) checkpoint, when it saved none or a wrong one; "
            "recorded for `bscrit schedule`.",
        ),
    ] = None,
    examples_seen: Annotated[
        int | None,
        typer.Option(
            "--examples-seen",
            min=0,
            help="Training examples consumed before the checkpoint (default: the one it saved, "
            "else step x the spec's batch_size).",
        ),
    ] = None,
    yes: Annotated[
        bool,
        typer.Option(
            "--yes",
            "-y",
            help="Do not ask before training; run over the cap on the batches, the sampling's "
            "cost or --nproc too.",
        ),
    ] = False,
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
        Amp | None, typer.Option(help="bf16: the same as --precision bf16-autocast.")
    ] = None,
    precision: Annotated[
        Precision | None,
        typer.Option(
            help="How the run computed its gradients (default: the spec's measure.precision, else "
            "as the model is built). fp32: the model in float32. bf16-autocast: torch.autocast "
            "in bf16 on CPU or CUDA, weights as they are. bf16-weights: a bf16 copy of the model "
            "runs forward/backward (as FSDP's param_dtype=bf16 or a pure-bf16 run), gradients "
            "cast to float32 before any sum. Sums stay float32/float64.",
        ),
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
    shard: Annotated[
        Shard | None,
        typer.Option(
            help="fsdp: shard the model over the ranks with FSDP2 (torchrun, --nproc N, or one "
            "process): each rank computes B/N examples of every batch and keeps the group sums "
            "of its shard. Blocks: measure.shard_blocks, else the model's _no_split_modules. "
            "See docs/distributed.md.",
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
    from bscrit import report
    from bscrit.artifacts.measurement import write_measurement
    from bscrit.cli.outputs import write_outputs
    from bscrit.report.measure import format_measurement, format_per_tensor, format_stopping
    from bscrit.stats.sample_plan import parse_sample_steps
    from bscrit.workflows.measure import measure_session
    from bscrit.workflows.plan import MeasureOptions

    if per_tensor not in ("all", "none") and not (per_tensor.isascii() and per_tensor.isdigit()):
        raise typer.BadParameter(
            f"expected a number, 'all' or 'none', got {per_tensor!r}", param_hint="--per-tensor"
        )
    s, outs = _spec_and_outputs(spec, out, checkpoint)
    opts = MeasureOptions(
        batches=_parse_batches(batches),
        groups=groups,
        seed=seed,
        device=device,
        mode=mode.value if mode else None,
        amp=amp.value if amp else None,
        precision=precision.value if precision else None,
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
        step=step,
        examples_seen=examples_seen,
        shard=shard.value if shard else None,
    )
    check_measure_size(opts.batches, s.measure.batches, opts.max_batches, nproc, yes)
    _check_shard(opts, s, nproc)
    if nproc is not None:  # the spec and options are valid: re-run this command under torchrun
        from bscrit.engine.launch import launch, measure_args_from_argv
        from bscrit.engine.sampling import check_sampling

        if opts.sampling:
            check_sampling([], opts, dist=True)  # continued training runs in one process

        raise typer.Exit(launch(nproc, measure_args_from_argv(sys.argv)))

    def on_rank(is_main: bool) -> None:  # under torchrun rank 0 alone prints and writes
        report.out.quiet = report.err.quiet = not is_main

    progress = None if quiet else (lambda d, t: report.progress(d, t, "batch"))
    m = measure_session(
        s, checkpoint, opts, dist_timeout, progress_factory=progress, on_rank=on_rank,
        on_error=report.error, on_info=None if quiet else report.info,
        on_sampling=sampling_gate(s.batch_size, yes),
    )  # fmt: skip
    if m is None:  # a rank other than 0
        return
    if outs:
        wrote = write_outputs(m.to_dict, [(lambda: write_measurement(m, outs[0]), outs)])
    if json_out:
        report.print_json(m.to_dict())
    else:
        report.show(format_measurement(m))
        if per_tensor != "none":
            limit = None if per_tensor == "all" else int(per_tensor)
            report.show(format_per_tensor(m.per_parameter, limit))
    line = format_stopping(m)
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
