"""``bscrit predict``, ``check`` and ``scale``: read measurement JSON (no torch) and answer from
:mod:`bscrit.theory.prediction` and :mod:`bscrit.theory.rescale`."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from bscrit.cli.common import handle_errors
from bscrit.cli.options import AdamRuleOpt
from bscrit.errors import ExitCode
from bscrit.optim import registry as optim

OptimizerName = Enum("OptimizerName", {n: n for n in optim.NAMES}, type=str)  # type: ignore[misc]


C2_HELP = "C² of [LMA21] (C > 1 is the closeness constant; the paper uses C² = 2)."


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
    adam_rule: AdamRuleOpt = "full",
    json_out: Annotated[bool, typer.Option("--json", help="Print only JSON on stdout.")] = False,
) -> None:
    """Critical batch size B* with 95% intervals, the recommended range and scaled hyperparameters.

    For each measurement: NSR, B* = C²(B + B·N/G) [LMA21 Thm 5.6: (C, κ)-linear scaling
    invariance fails beyond it] and its approximation C²·B·N/G, the Thm 5.2 (ii) and Thm 5.5
    readings from the ends of the NSR interval (certified only when it covers the equilibrium,
    else provisional; a heuristic reading for any optimizer but plain SGD), the simple noise
    scale [McC18] and the implicit-regularisation terms [SDBD21 eq. 22]. Reads JSON only.
    """
    from bscrit import report
    from bscrit.theory.prediction import predict_files

    p = predict_files(measurements, c2, adam_rule)
    if json_out:
        report.print_json(p.to_dict())
    else:
        report.show(report.format_prediction(p))


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
    adam_rule: AdamRuleOpt = "full",
    gate: Annotated[
        str,
        typer.Option(
            "--gate",
            help="What a B' between the lower 95% bound of B* and its point estimate gets: "
            "'lower' (default): exit 5, undecided; 'point': exit 0 with a warning (the old "
            "default).",
        ),
    ] = "lower",
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            help="Fail (exit 1) above the lower 95% bound of B*, instead of exit 5.",
        ),
    ] = False,
    allow_provisional: Annotated[
        bool,
        typer.Option(
            "--allow-provisional",
            help="Exit 0, not 6, when B' is in range but the interval covers the measured "
            "checkpoint(s) only, not the equilibrium (the line still says provisional).",
        ),
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print only JSON on stdout.")] = False,
) -> None:
    """CI gate: is B' in the recommended range? Exit 0 yes, 1 no, 5 undecided, 6 provisional.

    0: B' ≤ the lower 95% bound of B* (or ≤ the measured B), over the equilibrium. 6
    (provisional): the same, but the interval covers the measured checkpoint(s) only, one draw
    from the equilibrium the theorems speak of (--allow-provisional: exit 0). 5
    (undecided): B' between the lower bound and the point estimate of B* (--gate point: exit 0
    with a warning; --strict: exit 1). 1: B' above the point estimate of B* [LMA21 Thm 5.6],
    past the scaling rule's reach or above the dataset size n. 2: bad input. One line says why,
    which limit ends the range, and when the answer is provisional. Below the lower bound no
    baseline gives evidence that the rule fails; that is not a guarantee that it holds: on
    seven settings never used to tune it, 10 of 41 approvals failed (false-OK rate 24%, 95% CI
    14–39%; docs/validation.md, "Pre-registered validation").
    """
    from bscrit import report
    from bscrit.theory.prediction import check as check_target
    from bscrit.theory.prediction import predict_files

    r = check_target(
        predict_files(measurements, c2, adam_rule), batch_size, strict, gate=gate,
        allow_provisional=allow_provisional,
    )  # fmt: skip
    if json_out:
        report.print_json(r.to_dict())
    else:
        report.show(report.format_check(r))
    if r.exit_code != ExitCode.OK:
        raise typer.Exit(int(r.exit_code))


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
    adam_rule: AdamRuleOpt = "full",
    json_out: Annotated[bool, typer.Option("--json", help="Print only JSON on stdout.")] = False,
) -> None:
    """Scale the hyperparameters from B to B' = κB: linear rule (SGD), square-root rule (Adam...).

    SGD: η' = κη [LMA21 Def. 2.1]. RMSprop / Adam: η' = √κ η, β' = 1 − κ(1 − β), ε' = ε/√κ
    [MLPA22 Defs. 5.1, 5.2]; AdamW also λ' = √κ λ (derived). Steps and warm-up ÷ κ (same epochs).
    Works for scaling down (κ < 1) too.
    """
    from bscrit import report
    from bscrit.theory.rescale import scale_request

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
        adam_rule=adam_rule,
    )
    if json_out:
        report.print_json(result.to_dict())
    else:
        report.show(report.format_scaled(result))
    for w in result.warnings:
        report.warn(w)
