"""``bscrit demo``: the whole pipeline on the built-in digits example."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from bscrit.cli.common import handle_errors

if TYPE_CHECKING:
    from bscrit.workflows.demo import DemoConfig


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
    on scikit-learn's digits with SGD + weight decay at a constant LR to equilibrium, saving six
    checkpoints one relaxation time apart (about a minute), then runs measure -> predict -> scale
    -> a short svag at the top of the recommended range -> confirm (branched training at B = 32
    and B') at that top and at twice it when the training set allows, printing each step and
    writing the spec, checkpoints, JSON, CSV and PNG files into --workdir. Ends with what you can
    do and how sure bscrit is, every disagreement between the steps explained. About five minutes
    on a laptop CPU; --quick about a minute.
    """
    import json

    from bscrit import report
    from bscrit.workflows.demo import DemoConfig, run_demo

    cfg = DemoConfig.quick() if quick else DemoConfig.full()
    check_workdir(workdir, cfg)  # before any work: nothing of the user's is replaced
    report.info(f"bscrit demo: writing into {workdir.resolve()}")
    report.info(plan_line(cfg, quick, svag, confirm))
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


#: How long the demo takes on a laptop CPU (its sizes are fixed: no option makes it longer).
DEMO_MINUTES = {False: 5, True: 1}


def plan_line(cfg: DemoConfig, quick: bool, svag: bool, confirm: bool) -> str:
    """What the demo will run and about how long it takes, printed before it starts."""
    from bscrit.workflows.demo import BASE

    ckpts = len(range(cfg.save_from, cfg.epochs + 1, cfg.save_every))
    steps = [
        f"train {cfg.epochs} epochs at B = {BASE['batch_size']}",
        f"measure {ckpts} checkpoints"
        + (f" ({cfg.batches} batches each)" if cfg.batches else " (max(200, n/B) batches each)"),
    ]
    if svag:
        steps.append(f"svag l = {','.join(map(str, cfg.svag_ls))} x {cfg.svag_steps} steps")
    if confirm:
        steps.append(f"confirm at 1-2 batch sizes x {cfg.confirm_seeds} seeds")
    return f"plan: {'; '.join(steps)}: about {DEMO_MINUTES[quick]} min on a laptop CPU"


def check_workdir(workdir: Path, cfg: DemoConfig) -> None:
    """Refuse, before any work, a ``--workdir`` where the demo would replace what is not its own:
    a file in its place, a link where one of its files goes (the demo's files are written
    atomically, so the link itself would be replaced), or a folder holding files of the demo's
    names that an earlier demo did not write (no :data:`~bscrit.workflows.demo.MARKER` and no
    demo spec.yaml)."""
    from bscrit.cli.outputs import check_output_path
    from bscrit.errors import UsageError
    from bscrit.workflows.demo import MARKER, SPEC_TEMPLATE, demo_files

    check_output_path(workdir, folder=True, key="workdir")
    if not workdir.is_dir():
        return
    files = demo_files(workdir, cfg)
    for f in files:
        if f.is_symlink():
            raise UsageError(
                f"{{workdir}} {workdir}: {f} is a link (to {os.readlink(f)}); the demo writes its "
                "own file there: remove the link or choose another folder",
                workdir="workdir",
            )
    spec = workdir / "spec.yaml"
    ours = (workdir / MARKER).is_file() or (
        spec.is_file() and spec.read_text(errors="replace").startswith(SPEC_TEMPLATE.split("\n")[0])
    )
    found = [f for f in files if f.exists()]
    if found and not ours:
        raise UsageError(
            f"{{workdir}} {workdir} holds {', '.join(f.name for f in found[:4])}, not written by "
            "bscrit demo; the demo would replace them: choose a new or empty folder",
            workdir="workdir",
        )
