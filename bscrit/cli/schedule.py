"""The ``bscrit schedule`` command: B*(t) over training and the batch-size warm-up that follows it.

Registered in :mod:`bscrit.cli`. Reads JSON only (no
torch); the logic is :mod:`bscrit.theory.schedule`, the inputs and other forms
:mod:`bscrit.artifacts.schedule_io`.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from bscrit.cli.common import handle_errors


class ScheduleFormat(str, Enum):
    table = "table"
    megatron = "megatron"


class Cap(str, Enum):
    later = "later"
    start = "start"


@handle_errors
def schedule(
    inputs: Annotated[
        list[Path],
        typer.Argument(
            help="Measurement JSON files of one run at several points of training (each records "
            "its checkpoint's step; `bscrit measure --step N` sets it), or one series.jsonl "
            "written by the training callbacks."
        ),
    ],
    json_out: Annotated[
        bool, typer.Option("--json", help="Print only JSON on stdout (stages and points).")
    ] = False,
    plot: Annotated[
        str | None,
        typer.Option("--plot", help="Write a PNG: B*(t), its interval, the schedule (log y)."),
    ] = None,
    out: Annotated[
        str | None,
        typer.Option("--out", "-o", help="Write the stages as YAML here (for a training loop)."),
    ] = None,
    multiple_of: Annotated[
        int | None,
        typer.Option(
            "--multiple-of",
            min=1,
            help="Stage batch sizes are multiples of K (default: powers of two).",
        ),
    ] = None,
    cap: Annotated[
        Cap,
        typer.Option(
            "--cap",
            help="later: each stage within the range of every point from its start on (one low "
            "point caps the stages before it); start: within the range where it starts only.",
        ),
    ] = Cap.later,
    output_format: Annotated[
        ScheduleFormat,
        typer.Option(
            "--format",
            help="megatron: print only Megatron-LM's --step-batch-size-schedule value "
            "('0:768 250B:1536 ...'; thresholds in samples, or tokens with --seq-length).",
        ),
    ] = ScheduleFormat.table,
    seq_length: Annotated[
        int | None,
        typer.Option(
            "--seq-length", min=1, help="Tokens per example: Megatron thresholds in tokens."
        ),
    ] = None,
    c2: Annotated[float, typer.Option("--c2", help="C² of [LMA21] (the paper uses C² = 2).")] = 2.0,
) -> None:
    """B*(t) with 95% intervals and a batch-size warm-up that stays within each point's range.

    Each point is one measurement read as `bscrit predict` reads it: B* = C²(B + B·N/G) [LMA21
    Thm 5.6] and the recommended range [B, top]. The warm-up: stages of non-decreasing batch
    sizes (powers of two, or multiples of --multiple-of K), each within the range of every point
    from its start on (--cap start: of the point where it starts), with the base optimizer
    scaled as `bscrit scale` scales it. Points off equilibrium (|ρ| > 0.5) or earlier than one
    relaxation time 1/(2ηλ) are labelled heuristic. docs/schedule.md.
    """
    from bscrit import report
    from bscrit.artifacts.files import write_atomic
    from bscrit.artifacts.schedule_io import (
        load_points,
        megatron_schedule,
        schedule_yaml_text,
        switch_state,
        switch_state_line,
    )
    from bscrit.cli.outputs import Inputs, check_output_path, distinct_outputs
    from bscrit.report.schedule import format_schedule
    from bscrit.theory.schedule import make_schedule

    read = Inputs.of(*(("the series file" if str(p).endswith(".jsonl") else "the measurement",
                        [p]) for p in inputs))  # fmt: skip
    named = [(p, k) for p, k in ((out, "out"), (plot, "plot")) if p]
    outs = [check_output_path(p, key=k, inputs=read) for p, k in named]
    distinct_outputs(named)
    points = load_points(inputs, c2)
    s = make_schedule(points, c2=c2, multiple_of=multiple_of, cap=cap.value)
    megatron = None
    if output_format is ScheduleFormat.megatron or seq_length is not None:
        megatron = megatron_schedule(s, seq_length)
    if out is not None:
        write_atomic(out, schedule_yaml_text(s))
    if plot is not None:
        from bscrit.report.schedule_plot import plot_schedule

        plot_schedule(s, plot)
    if json_out:
        d = s.to_dict()
        d["at_switch"] = switch_state(s.optimizer)
        if megatron is not None:
            d["megatron"] = megatron
        report.print_json(d)
    elif output_format is ScheduleFormat.megatron:
        report.out.print(megatron, markup=False, highlight=False, soft_wrap=True)
        report.info(f"optimizer state: {switch_state_line(s.optimizer)}")
        for w in s.warnings:
            report.warn(w)
    else:
        report.show(format_schedule(s, megatron))
    if outs:
        report.info("wrote " + " and ".join(str(p) for p in outs))
