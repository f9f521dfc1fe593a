"""``bscrit svag``: a short SVAG run at the target batch size (plan, ask, run, verdict, report)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from bscrit.cli.common import confirm_run, handle_errors


@handle_errors
def svag(
    spec: Annotated[Path, typer.Argument(help="YAML spec of model, data, loss, batch size.")],
    target_batch_size: Annotated[
        int | None,
        typer.Option(
            "--target-batch-size",
            "-t",
            min=1,
            help="B' to test. Or --from-measurement.",
        ),
    ] = None,
    from_measurement: Annotated[
        Path | None,
        typer.Option(
            "--from-measurement",
            help="Take B' = the top of the recommended range of `bscrit predict` on this "
            "measurement JSON (the lower 95% bound of B*): confirms the prediction.",
        ),
    ] = None,
    c2: Annotated[
        float,
        typer.Option(
            "--c2",
            help="C²: the verdict's C-closeness (ratios SGD/SDE within [1/C, C]) and the "
            "prediction of --from-measurement.",
        ),
    ] = 2.0,
    checkpoint: Annotated[
        Path | None,
        typer.Option("--checkpoint", "-c", help="Checkpoint to start from (default: the spec's)."),
    ] = None,
    l_values: Annotated[
        str, typer.Option("--l", help="SVAG parameters l, comma-separated, at least three.")
    ] = "1,2,4",
    effective_steps: Annotated[
        int | None,
        typer.Option(
            "--effective-steps",
            "-e",
            min=1,
            help="Run length E (steps at B'); default: --relaxation-times × τ.",
        ),
    ] = None,
    relaxation_times: Annotated[
        float | None,
        typer.Option(
            "--relaxation-times",
            min=0.0,
            help="Run length in relaxation times τ = 1/(2η'λ) at B' ([LMA21] eq. 10); "
            "default 4 (300 steps when no τ is known).",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Folder for svag.json and trajectories.csv."),
    ] = None,
    plot: Annotated[
        str | None, typer.Option("--plot", help="Write a PNG like [LMA21] Fig. 4 here.")
    ] = None,
    optimizer: Annotated[
        str | None,
        typer.Option(
            "--optimizer",
            help="sgd | adam | adamw | rmsprop (SVAG runs these); if spec and ckpt lack one.",
        ),
    ] = None,
    lr: Annotated[float | None, typer.Option(help="Target LR at B' (overrides the rule).")] = None,
    momentum: Annotated[float | None, typer.Option(help="Target momentum.")] = None,
    weight_decay: Annotated[float | None, typer.Option(help="Target weight decay.")] = None,
    beta1: Annotated[float | None, typer.Option(help="Target Adam beta1.")] = None,
    beta2: Annotated[float | None, typer.Option(help="Target Adam beta2.")] = None,
    eps: Annotated[float | None, typer.Option(help="Target Adam/RMSprop eps.")] = None,
    alpha: Annotated[float | None, typer.Option(help="Target RMSprop alpha.")] = None,
    eval_every: Annotated[
        int | None,
        typer.Option(min=1, help="Effective steps between evaluations (default E/20)."),
    ] = None,
    eval_batches: Annotated[
        int,
        typer.Option(min=2, help="Fixed training batches for train loss, G and N (k)."),
    ] = 8,
    eval_examples: Annotated[
        int, typer.Option(min=1, help="Held-out examples evaluated (a fixed random subset).")
    ] = 2048,
    start_step: Annotated[
        float,
        typer.Option(help="Step (at B') of the checkpoint in the spec's LR schedule."),
    ] = 0.0,
    decide_on: Annotated[
        str,
        typer.Option(
            "--decide-on",
            help="Ratios that decide: 'losses' (train and held-out loss; the default, chosen on "
            "mnist1d-si) or 'def5.1' (also R = |x|^2, G, ηN of [LMA21] Def. 5.1).",
        ),
    ] = "losses",
    rtol: Annotated[float | None, typer.Option(hidden=True, help="Deprecated, ignored.")] = None,
    z: Annotated[float | None, typer.Option(hidden=True, help="Deprecated, ignored.")] = None,
    fresh_optimizer_state: Annotated[
        bool,
        typer.Option(
            "--fresh-optimizer-state",
            help="Adam/RMSprop: start from zero moments instead of the warm start.",
        ),
    ] = False,
    seed: Annotated[int | None, typer.Option(help="Seed (default: spec measure.seed).")] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda | cuda:N.")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before running.")] = False,
    unsafe_load: Annotated[
        bool,
        typer.Option("--unsafe-load", help="torch.load(weights_only=False): trusted files only."),
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the JSON on stdout.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Confirm (or refute) a prediction with a short SVAG run at the target batch size.

    SVAG is the Stochastic Variance Amplified Gradient of Li, Malladi & Arora ([LMA21] §4;
    [MLPA22] §6 for Adam/RMSprop), not Balles & Hennig's SVAG. From the checkpoint, runs the
    optimizer at B' (hyperparameters scaled from the spec's by the linear / square-root rule, or
    given with --lr etc.) once per l for the same number of effective steps (default 4 relaxation
    times 1/(2η'λ)), each step combining two batches as r1·g1 + r2·g2. Costs 2·l
    forward-backward passes per effective step for each l, printed first.

    Verdict: C-closeness of SGD (l = 1) and its SDE (the runs l > 1, extrapolated in 1/l when
    they show the trend) as in [LMA21] Def. 5.1: ratios SGD/SDE of |x|^2, G, ηN and the train /
    held-out loss, means over the tail window (from one relaxation time to the end) with 95%
    intervals (batch means, delta method), against [1/C, C], C = sqrt(--c2). The losses decide
    (--decide-on def5.1: R, G, ηN too). sde_holds / sde_fails (an interval wholly outside) /
    not_converged (the SVAG runs still drift, or their l-trend reverses). A diverged run is an
    error (exit 3). Details: docs/svag.md.
    """
    from bscrit.artifacts.measurement import dumps
    from bscrit.cli.outputs import check_output_path, write_outputs
    from bscrit.errors import UsageError
    from bscrit.report import common as report
    from bscrit.runs.svag.plot import plot_svag
    from bscrit.runs.svag.results import svag_paths, write_svag
    from bscrit.runs.svag.run import run_plan
    from bscrit.runs.svag.verdict import DECIDE_ON, VerdictConfig
    from bscrit.workflows.measure import plan_svag

    for p in (out, *svag_paths(out)) if out is not None else ():  # before any work
        check_output_path(p, folder=p is out)
    plot_path = None if plot is None else check_output_path(plot, key="plot")
    if rtol is not None or z is not None:
        report.warn(
            "--rtol and --z are deprecated and ignored: the verdict now compares SGD with its SDE "
            "as C-closeness (ratios within [1/C, C], C = √c2; see docs/svag.md)"
        )
    if not c2 > 1.0:
        raise UsageError(f"{{c2}} must be > 1 (C-closeness needs C > 1), got {c2:g}", c2="c2")
    if decide_on not in DECIDE_ON:
        raise UsageError(
            f"{{decide_on}} must be one of {', '.join(DECIDE_ON)}, got {decide_on!r}",
            decide_on="decide_on",
        )
    plan = plan_svag(
        spec,
        target_batch_size=target_batch_size,
        from_measurement=from_measurement,
        c2=c2,
        ls=l_values,
        effective_steps=effective_steps,
        relaxation_times=relaxation_times,
        checkpoint=checkpoint,
        optimizer_name=optimizer,
        overrides={
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "beta1": beta1,
            "beta2": beta2,
            "eps": eps,
            "alpha": alpha,
        },  # fmt: skip
        eval_every=eval_every,
        eval_batches=eval_batches,
        eval_examples=eval_examples,
        start_step=start_step,
        seed=seed,
        device=device,
        warm_start=not fresh_optimizer_state,
        unsafe=unsafe_load,
        on_target=report.info,
    )
    report.show(report.format_svag_cost(
        plan.ls, plan.effective_steps, plan.forward_backward(), plan.target_batch_size,
        str(plan.device), plan.sizing,
    ), stderr=True)  # fmt: skip
    confirm_run(yes, "Run it?")
    with report.progress(
        "SVAG", plan.total_steps, unit="step", enabled=not quiet and not json_out
    ) as advance:
        config = VerdictConfig(c2=c2, decide_on=DECIDE_ON[decide_on])
        result = run_plan(plan, on_step=advance, config=config)
    jobs: list[tuple[Callable[[], object], list[Path]]] = []
    if out is not None:
        jobs.append((lambda: write_svag(result, out), list(svag_paths(out))))
    if plot_path is not None:
        jobs.append((lambda: plot_svag(result, plot_path), [plot_path]))
    wrote = write_outputs(result.to_dict, jobs) if jobs else None
    if json_out:
        report.out.print(
            dumps(result.to_dict()), markup=False, highlight=False, soft_wrap=True, end=""
        )
        for w in result.warnings:
            report.warn(w)
    else:
        report.show(report.format_svag(result))
    if wrote:
        report.info(wrote)


# ==============================================================================================
# demo  (issue: bscrit demo)
# ==============================================================================================
