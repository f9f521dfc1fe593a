"""``bscrit confirm``: branched training at B and B' from one checkpoint (docs/confirm.md).

Registered in :mod:`bscrit.cli`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from bscrit.cli.common import confirm_run, handle_errors
from bscrit.errors import ExitCode


@handle_errors
def confirm(
    spec: Annotated[Path, typer.Argument(help="YAML spec of model, data, loss, batch size.")],
    target_batch_size: Annotated[
        int | None,
        typer.Option("--target-batch-size", "-t", min=1, help="B' to test. Or --from-measurement."),
    ] = None,
    from_measurement: Annotated[
        Path | None,
        typer.Option(
            "--from-measurement",
            help="Take B' = the top of the recommended range of `bscrit predict` on this "
            "measurement JSON (as svag --from-measurement).",
        ),
    ] = None,
    c2: Annotated[float, typer.Option("--c2", help="C² for --from-measurement.")] = 2.0,
    checkpoint: Annotated[
        Path | None,
        typer.Option("--checkpoint", "-c", help="Checkpoint to branch from (default: the spec's)."),
    ] = None,
    examples: Annotated[
        int | None,
        typer.Option(
            "--examples",
            "-e",
            min=1,
            help="Training examples per branch (default: 2 relaxation times 1/(2ηλ) at B, × B; "
            "5 epochs without weight decay).",
        ),
    ] = None,  # fmt: skip
    seeds: Annotated[int, typer.Option("--seeds", "-k", min=1, help="Seeds K per branch.")] = 3,
    tolerance: Annotated[
        float | None,
        typer.Option("--tolerance", min=0.0, help="δ on (L_B' − L_B)/L_B (default 0.10)."),
    ] = None,
    decay: Annotated[
        bool,
        typer.Option(
            "--decay/--no-decay",
            help="End both branches with the LR falling linearly to 0 over the last 20% (the "
            "default: the final loss after a decay, as a training run ends; --no-decay compares "
            "at the constant LR).",
        ),
    ] = True,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Folder for confirm.json and curves.csv.")
    ] = None,
    plot: Annotated[
        str | None, typer.Option("--plot", help="Write a PNG of loss against examples here.")
    ] = None,
    lr: Annotated[float | None, typer.Option(help="Target LR at B' (overrides the rule).")] = None,
    momentum: Annotated[float | None, typer.Option(help="Target momentum.")] = None,
    weight_decay: Annotated[float | None, typer.Option(help="Target weight decay.")] = None,
    beta1: Annotated[float | None, typer.Option(help="Target Adam beta1.")] = None,
    beta2: Annotated[float | None, typer.Option(help="Target Adam beta2.")] = None,
    eps: Annotated[float | None, typer.Option(help="Target Adam/RMSprop eps.")] = None,
    alpha: Annotated[float | None, typer.Option(help="Target RMSprop alpha.")] = None,
    points: Annotated[
        int, typer.Option(min=1, help="Intervals of the grid of example counts.")
    ] = 20,
    eval_batches: Annotated[
        int, typer.Option(min=2, help="Fixed training batches (of B') for the train loss.")
    ] = 8,
    eval_examples: Annotated[
        int, typer.Option(min=1, help="Held-out examples evaluated (a fixed random subset).")
    ] = 2048,
    start_step: Annotated[
        float | None,
        typer.Option(help="Step (at B) of the checkpoint in the spec's schedule (default: saved)."),
    ] = None,
    fresh_optimizer_state: Annotated[
        bool,
        typer.Option(
            "--fresh-optimizer-state",
            help="Adam/RMSprop without a saved state: zeros instead of the warm start.",
        ),
    ] = False,
    seed: Annotated[
        int | None, typer.Option(help="First seed (default: spec measure.seed).")
    ] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda | cuda:N.")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before running.")] = False,
    unsafe_load: Annotated[
        bool,
        typer.Option("--unsafe-load", help="torch.load(weights_only=False): trusted files only."),
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the JSON on stdout.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Confirm (or refute) a scaling rule directly: train from the checkpoint at B and at B'.

    Branched training (Merrill et al. 2025, "Critical Batch Size Revisited"): the base branch
    trains at the spec's batch size B with the run's hyperparameters, the target branch at B' with
    them scaled by the optimizer's rule (linear for SGD, square-root for Adam/AdamW/RMSprop, as
    `bscrit scale`), both for the same number of examples, K seeds each, both ending with the same
    linear LR decay to 0 (--no-decay: compare at the constant LR). d = (L_B' − L_B)/L_B of the
    final held-out loss (train loss without eval_data), per seed; "holds" when the 95%
    t-interval of its mean lies below --tolerance (default 0.10), "fails" when above (or B'
    diverged), else "inconclusive". Exit 0 holds/inconclusive, 1 fails. The defaults (2
    relaxation times, the decay, δ = 0.10) were chosen on MNIST-1D against an LSR sweep:
    docs/validation.md. Details: docs/confirm.md.
    """
    from bscrit.artifacts.measurement import dumps
    from bscrit.cli.outputs import check_output_path, write_outputs
    from bscrit.report import common as report
    from bscrit.report.confirm import format_confirm, format_confirm_cost
    from bscrit.runs.confirm.plan import plan_confirm
    from bscrit.runs.confirm.plot import plot_confirm
    from bscrit.runs.confirm.results import check_tolerance, confirm_paths, write_confirm
    from bscrit.runs.confirm.run import run_confirm

    if tolerance is not None:
        check_tolerance(tolerance)  # δ = 0 refused before any work
    for p in (out, *confirm_paths(out)) if out is not None else ():
        check_output_path(p, folder=p is out)
    plot_path = None if plot is None else check_output_path(plot, key="plot")
    plan = plan_confirm(
        spec,
        target_batch_size=target_batch_size,
        from_measurement=from_measurement,
        c2=c2,
        on_target=report.info,
        examples=examples,
        seeds=seeds,
        checkpoint=checkpoint,
        overrides={
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "beta1": beta1,
            "beta2": beta2,
            "eps": eps,
            "alpha": alpha,
        },  # fmt: skip
        decay=decay,
        points=points,
        eval_batches=eval_batches,
        eval_examples=eval_examples,
        start_step=start_step,
        seed=seed,
        device=device,
        warm_start=not fresh_optimizer_state,
        unsafe=unsafe_load,
    )
    report.show(format_confirm_cost(plan), stderr=True)
    confirm_run(yes, "Run it?")
    with report.progress(
        "confirm", plan.total_steps, unit="step", enabled=not quiet and not json_out
    ) as advance:
        result = run_confirm(plan, tolerance=tolerance, on_step=advance)
    jobs: list[tuple[Callable[[], object], list[Path]]] = []
    if out is not None:
        jobs.append((lambda: write_confirm(result, out), list(confirm_paths(out))))
    if plot_path is not None:
        jobs.append((lambda: plot_confirm(result, plot_path), [plot_path]))
    wrote = write_outputs(result.to_dict, jobs) if jobs else None
    if json_out:
        report.out.print(
            dumps(result.to_dict()), markup=False, highlight=False, soft_wrap=True, end=""
        )
        for w in result.warnings:
            report.warn(w)
    else:
        report.show(format_confirm(result))
    if wrote:
        report.info(wrote)
    if result.verdict.code == "fails":
        raise typer.Exit(int(ExitCode.CHECK_FAILED))
