"""``bscrit confirm``: branched training at B and B' from one checkpoint (docs/confirm.md).

Registered in :mod:`bscrit.cli`.
"""

from __future__ import annotations

from typing import Annotated

import typer

from bscrit.cli.common import handle_errors
from bscrit.cli.limits import MAX_POINTS, MAX_SEEDS
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


@handle_errors
def confirm(
    spec: SpecArg,
    target_batch_size: TargetBatchSizeOpt = None,
    from_measurement: FromMeasurementOpt = None,
    c2: C2Opt = 2.0,
    checkpoint: CheckpointOpt = None,
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
    seeds: Annotated[
        int, typer.Option("--seeds", "-k", min=1, max=MAX_SEEDS, help="Seeds K per branch.")
    ] = 3,
    tolerance: Annotated[
        float | None,
        typer.Option(
            "--tolerance",
            min=0.0,
            help="δ, relative: a fraction of the base run's loss, on d = (L_B' − L_B)/L_B "
            "(default 0.10 = 10%; docs/confirm.md on choosing it). Not with --tolerance-abs.",
        ),
    ] = None,
    tolerance_abs: Annotated[
        float | None,
        typer.Option(
            "--tolerance-abs",
            min=0.0,
            help="δ, absolute: in the loss's own units (nats for a cross-entropy), on "
            "d = L_B' − L_B, e.g. 0.01; instead of --tolerance (both: exit 2).",
        ),
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
    out: OutOpt = None,
    plot: PlotOpt = None,
    lr: LrOpt = None,
    momentum: MomentumOpt = None,
    weight_decay: WeightDecayOpt = None,
    beta1: Beta1Opt = None,
    beta2: Beta2Opt = None,
    eps: EpsOpt = None,
    alpha: AlphaOpt = None,
    points: Annotated[
        int, typer.Option(min=1, max=MAX_POINTS, help="Intervals of the grid of example counts.")
    ] = 20,
    eval_batches: EvalBatchesOpt = 8,
    eval_examples: EvalExamplesOpt = 2048,
    start_step: StartStepOpt = None,
    adam_rule: AdamRuleOpt = "full",
    fresh_optimizer_state: FreshOptimizerStateOpt = False,
    allow_inconclusive: Annotated[
        bool,
        typer.Option(
            "--allow-inconclusive",
            help="Exit 0, not 5, when the verdict is inconclusive (the interval of d contains δ, "
            "or one seed).",
        ),
    ] = False,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    yes: YesOpt = False,
    unsafe_load: UnsafeLoadOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Confirm (or refute) a scaling rule directly: train from the checkpoint at B and at B'.

    Branched training (Merrill et al. 2025, "Critical Batch Size Revisited"): the base branch
    trains at the spec's batch size B with the run's hyperparameters, the target branch at B' with
    them scaled by the optimizer's rule (linear for SGD, square-root for Adam/AdamW/RMSprop, as
    `bscrit scale`), both for the same number of examples, K seeds each, both ending with the same
    linear LR decay to 0 (--no-decay: compare at the constant LR). d = (L_B' − L_B)/L_B of the
    final held-out loss (train loss without eval_data), per seed; "holds" when the 95%
    t-interval of its mean lies below --tolerance (default 0.10: 10% of L_B), "fails" when
    above (or B' diverged), else "inconclusive". --tolerance-abs X instead: d = L_B' − L_B in
    the loss's units (nats for a cross-entropy), against δ = X. Exit 0 holds, 1 fails, 5
    inconclusive (--allow-inconclusive: 0). The defaults (2 relaxation times, the decay,
    δ = 0.10) were chosen on MNIST-1D against an LSR sweep: docs/validation.md. --out writes
    confirm.json and curves.csv; --plot a PNG of the loss against examples. Details:
    docs/confirm.md.
    """
    from bscrit import report
    from bscrit.report.confirm_plot import plot_confirm
    from bscrit.runs.confirm.results import confirm_paths, write_confirm
    from bscrit.runs.confirm.run import run_confirm
    from bscrit.runs.confirm.verdict import tolerance_and_unit
    from bscrit.workflows.targets import plan_confirm

    tolerance_and_unit(tolerance, tolerance_abs)  # both, or δ = 0, refused before any work
    outputs = RunOutputs(out, plot, json_out, quiet, yes)
    outputs.check(
        confirm_paths, spec, [("the checkpoint", checkpoint), ("the measurement", from_measurement)]
    )
    plan = plan_confirm(
        spec, target_batch_size=target_batch_size, from_measurement=from_measurement, c2=c2,
        on_target=report.info, examples=examples, seeds=seeds, checkpoint=checkpoint,
        overrides=target_overrides(lr, momentum, weight_decay, beta1, beta2, eps, alpha),
        decay=decay, points=points, eval_batches=eval_batches, eval_examples=eval_examples,
        start_step=start_step, seed=seed, device=device, warm_start=not fresh_optimizer_state,
        unsafe=unsafe_load, adam_rule=adam_rule,
    )  # fmt: skip
    result = outputs.run(
        "confirm", report.format_confirm_cost(plan), plan.total_steps,
        lambda advance: run_confirm(
            plan, tolerance=tolerance, tolerance_abs=tolerance_abs, on_step=advance
        ),
        passes=sum(plan.forward_backward().values()),
        sized_by=("examples", "seeds", "points", "eval_batches"),
    )  # fmt: skip
    outputs.finish(result, write_confirm, confirm_paths, plot_confirm, report.format_confirm)
    if result.verdict.code == "fails":
        raise typer.Exit(int(ExitCode.CHECK_FAILED))
    if result.verdict.code == "inconclusive" and not allow_inconclusive:
        raise typer.Exit(int(ExitCode.UNDECIDED))
