"""``bscrit demo``: the whole pipeline on the built-in digits example."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bscrit.cli.common import handle_errors


@handle_errors
def demo(
    workdir: Annotated[
        Path, typer.Option("--workdir", "-w", help="Where every artifact of the demo is written.")
    ] = Path("bscrit-demo"),
    quick: Annotated[
        bool,
        typer.Option(
            "--quick", help="Short run for CI (under a minute); the network is not at equilibrium."
        ),
    ] = False,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N.")] = "cpu",
    svag: Annotated[bool, typer.Option("--svag/--no-svag", help="Run the SVAG step.")] = True,
    confirm: Annotated[
        bool,
        typer.Option("--confirm/--no-confirm", help="Run the branched-training check (step 6)."),
    ] = True,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print a JSON summary on stdout after the tables.")
    ] = False,
) -> None:
    """Run the whole pipeline on the built-in digits example, offline, on CPU.

    Trains a small scale-invariant network (BatchNorm after every weight layer, fixed last layer)
    on scikit-learn's digits with SGD + weight decay at a constant LR to equilibrium (about half
    a minute), then runs measure -> predict -> scale -> a short svag at the top of the recommended
    range -> confirm (branched training at B = 32 and B') at that top and at twice it when the
    training set allows, printing each step and writing the spec, checkpoints, JSON, CSV and PNG
    files into --workdir. Ends with what you can do and how sure bscrit is, every disagreement
    between the steps explained. About five minutes on a laptop CPU; --quick about a minute.
    """
    import json

    from bscrit import report
    from bscrit.workflows.demo import run_demo

    report.info(f"bscrit demo: writing into {workdir.resolve()}")
    r = run_demo(
        workdir,
        quick=quick,
        device=device,
        svag=svag,
        confirm=confirm,
        say=lambda line: report.out.print(f"\n[bold]{line}[/]", markup=True, highlight=False),
        show=report,
    )
    report.out.print(
        f"\n[bold]done.[/] B* = {report.fmt(r.b_star)} (from B = 32); recommended up to "
        f"{report.fmt(r.recommended_max)}"
        + (f"; SVAG at B' = {r.svag_target}: {r.svag_verdict}" if r.svag_verdict else "")
        + "".join(f"; confirm at {c['target_batch_size']}: {c['code']}" for c in r.confirmations),
        markup=True,
    )
    report.out.print(f"files in {r.workdir}:", markup=False)
    for f in r.files:
        report.out.print(f"  {f}", markup=False)
    report.out.print(
        f"next: bscrit check {r.measurement} --batch-size 1024   (or any B' you plan to use)",
        markup=False,
    )
    if r.conclusion is not None:
        report.out.print("\n[bold]what you can do[/]", markup=True)
        for line in r.conclusion.lines:
            report.out.print(f"  {line}", markup=False)
    if json_out:
        typer.echo(json.dumps(r.summary(), indent=2))
