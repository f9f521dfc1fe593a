"""``bscrit svag``: a short SVAG run at the target batch size (plan, ask, run, verdict, report)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from bscrit.cli.common import handle_errors
from bscrit.cli.options import (
    AdamRuleOpt,
    AlphaOpt,
    Beta1Opt,
    Beta2Opt,
    C2Opt,
    CheckpointOpt,
    DeviceOpt,
    EpsOpt,
    EvalBatchesOpt,
    EvalExamplesOpt,
    FreshOptimizerStateOpt,
    FromMeasurementOpt,
    JsonOpt,
    LrOpt,
    MomentumOpt,
    OutOpt,
    PlotOpt,
    QuietOpt,
    RunOutputs,
    SeedOpt,
    SpecArg,
    StartStepOpt,
    TargetBatchSizeOpt,
    UnsafeLoadOpt,
    WeightDecayOpt,
    YesOpt,
    target_overrides,
)
from bscrit.errors import ExitCode

if TYPE_CHECKING:
    from bscrit.runs.svag.verdict import VerdictConfig


@handle_errors
def svag(
    spec: SpecArg,
    target_batch_size: TargetBatchSizeOpt = None,
    from_measurement: FromMeasurementOpt = None,
    c2: C2Opt = 2.0,
    checkpoint: CheckpointOpt = None,
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
    out: OutOpt = None,
    plot: PlotOpt = None,
    optimizer: Annotated[
        str | None,
        typer.Option(
            "--optimizer",
            help="sgd | adam | adamw | rmsprop (SVAG runs these); if spec and ckpt lack one.",
        ),
    ] = None,
    lr: LrOpt = None,
    momentum: MomentumOpt = None,
    weight_decay: WeightDecayOpt = None,
    beta1: Beta1Opt = None,
    beta2: Beta2Opt = None,
    eps: EpsOpt = None,
    alpha: AlphaOpt = None,
    eval_every: Annotated[
        int | None,
        typer.Option(min=1, help="Effective steps between evaluations (default E/20)."),
    ] = None,
    eval_batches: EvalBatchesOpt = 8,
    eval_examples: EvalExamplesOpt = 2048,
    start_step: StartStepOpt = None,
    adam_rule: AdamRuleOpt = "full",
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
    fresh_optimizer_state: FreshOptimizerStateOpt = False,
    allow_inconclusive: Annotated[
        bool,
        typer.Option(
            "--allow-inconclusive",
            help="Exit 0, not 5, when the verdict is inconclusive or not_converged.",
        ),
    ] = False,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    yes: YesOpt = False,
    unsafe_load: UnsafeLoadOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Confirm (or refute) a prediction with a short SVAG run at the target batch size.

    SVAG is the Stochastic Variance Amplified Gradient of Li, Malladi & Arora ([LMA21] §4;
    [MLPA22] §6 for Adam/RMSprop), not Balles & Hennig's SVAG. From the checkpoint, runs the
    optimizer at B' (hyperparameters scaled from the spec's by the linear / square-root rule, or
    given with --lr etc.) once per l for the same number of effective steps (default 4 relaxation
    times 1/(2η'λ)), each step combining two batches as r1·g1 + r2·g2. Costs 2·l
    forward-backward passes per effective step for each l, printed first.

    Verdict: SGD (l = 1) against its SDE (the runs l > 1, extrapolated in 1/l when they show
    the trend): ratios SGD/SDE of |x|^2, G, ηN ([LMA21] Def. 5.1's C-closeness) and the train /
    held-out loss, means over the tail window (from one relaxation time to the end) with 95%
    intervals (batch means, delta method), against [1/C, C], C = sqrt(--c2). The losses decide
    (--decide-on def5.1: R, G, ηN too). sde_holds (every interval inside; exit 0) / sde_fails
    (an interval wholly outside; exit 1) / inconclusive (an interval reaches across a boundary;
    exit 5) / not_converged (the SVAG runs still drift, or their l-trend reverses; exit 5).
    --allow-inconclusive: exit 0 instead of 5. "C-close" ([LMA21] Def. 5.1) is said of R, G and
    ηN only. A diverged run is an error (exit 3). --out writes svag.json and trajectories.csv;
    --plot a PNG like [LMA21] Fig. 4. Details: docs/svag.md.
    """
    from bscrit import report
    from bscrit.report.svag_plot import plot_svag
    from bscrit.runs.svag.results import svag_paths, write_svag
    from bscrit.runs.svag.run import run_plan
    from bscrit.workflows.targets import plan_svag

    outputs = RunOutputs(out, plot, json_out, quiet, yes)
    outputs.check(
        svag_paths, spec, [("the checkpoint", checkpoint), ("the measurement", from_measurement)]
    )  # before any work
    config = _verdict_config(c2, decide_on, deprecated=rtol is not None or z is not None)
    plan = plan_svag(
        spec, target_batch_size=target_batch_size, from_measurement=from_measurement, c2=c2,
        ls=l_values, effective_steps=effective_steps, relaxation_times=relaxation_times,
        checkpoint=checkpoint, optimizer_name=optimizer,
        overrides=target_overrides(lr, momentum, weight_decay, beta1, beta2, eps, alpha),
        eval_every=eval_every, eval_batches=eval_batches, eval_examples=eval_examples,
        start_step=start_step, seed=seed, device=device, warm_start=not fresh_optimizer_state,
        unsafe=unsafe_load, on_target=report.info, adam_rule=adam_rule,
    )  # fmt: skip
    cost = report.format_svag_cost(
        plan.ls, plan.effective_steps, plan.forward_backward(), plan.target_batch_size,
        str(plan.device), plan.sizing,
    )  # fmt: skip
    result = outputs.run(
        "SVAG", cost, plan.total_steps,
        lambda advance: run_plan(plan, on_step=advance, config=config),
        passes=sum(plan.forward_backward().values()),
        sized_by=("l", "effective_steps", "relaxation_times", "eval_every", "eval_batches"),
    )  # fmt: skip
    outputs.finish(result, write_svag, svag_paths, plot_svag, report.format_svag)
    code = SVAG_EXIT.get(result.verdict.code, ExitCode.OK)
    if code is ExitCode.UNDECIDED and allow_inconclusive:
        code = ExitCode.OK
    if code is not ExitCode.OK:
        raise typer.Exit(int(code))


#: The exit code of each svag verdict (the README's exit-code table).
SVAG_EXIT = {"sde_holds": ExitCode.OK, "sde_fails": ExitCode.CHECK_FAILED,
             "inconclusive": ExitCode.UNDECIDED, "not_converged": ExitCode.UNDECIDED}  # fmt: skip


def _verdict_config(c2: float, decide_on: str, deprecated: bool) -> VerdictConfig:
    """The verdict's thresholds from --c2 and --decide-on, checked before any work (a warning
    for the ignored --rtol and --z)."""
    from bscrit import report
    from bscrit.errors import UsageError
    from bscrit.runs.svag.verdict import DECIDE_ON, VerdictConfig

    if deprecated:
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
    return VerdictConfig(c2=c2, decide_on=DECIDE_ON[decide_on])
