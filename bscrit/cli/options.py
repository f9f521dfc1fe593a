"""Options shared by the commands, each declared once as an ``Annotated`` type, and what the
output options of a run command do (:class:`RunOutputs`).

A command names its parameter and takes the type: ``device: DeviceOpt = None``. The option's name
comes from the parameter (``weight_decay`` → ``--weight-decay``) unless the type names it; the
default stays in the command's signature. Where two commands read an option differently the
help says which (``--start-step``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from bscrit.cli.limits import MAX_EVAL_BATCHES

__all__ = [
    "AlphaOpt",
    "Beta1Opt",
    "Beta2Opt",
    "C2Opt",
    "CheckpointOpt",
    "DeviceOpt",
    "EpsOpt",
    "EvalBatchesOpt",
    "EvalExamplesOpt",
    "FreshOptimizerStateOpt",
    "FromMeasurementOpt",
    "JsonOpt",
    "LrOpt",
    "MomentumOpt",
    "OutOpt",
    "PlotOpt",
    "QuietOpt",
    "RunOutputs",
    "SeedOpt",
    "SpecArg",
    "StartStepOpt",
    "AdamRuleOpt",
    "TargetBatchSizeOpt",
    "UnsafeLoadOpt",
    "WeightDecayOpt",
    "YesOpt",
    "target_overrides",
]

R = TypeVar("R")

# -- what runs, and from where ------------------------------------------------------------------

SpecArg = Annotated[Path, typer.Argument(help="YAML spec of model, data, loss, batch size.")]
CheckpointOpt = Annotated[
    Path | None,
    typer.Option("--checkpoint", "-c", help="Checkpoint to start from (default: the spec's)."),
]
StartStepOpt = Annotated[
    float | None,
    typer.Option(
        help="Step of the checkpoint in the run's LR schedule (the spec's schedule:, else the "
        "scheduler the checkpoint saved): svag, in steps at B' (default: the checkpoint's step "
        "/ κ for a saved scheduler, else 0); confirm, in steps at B (default: the step saved in "
        "the checkpoint).",
    ),
]
AdamRuleOpt = Annotated[
    str,
    typer.Option(
        "--adam-rule",
        help="Adam/AdamW/RMSprop: which square-root rule scales to B'. full: [MLPA22]'s (η√κ, "
        "β' = 1 − κ(1 − β), ε/√κ, AdamW λ√κ); lr-only: η√κ, betas, ε and λ kept (a common "
        "practice, e.g. OLMo-core; reaches further, not [MLPA22]'s rule). SGD: ignored. "
        "docs/theory.md §5.",
    ),
]
SeedOpt = Annotated[
    int | None,
    typer.Option(help="Seed (confirm: the first of --seeds; default: spec measure.seed)."),
]
DeviceOpt = Annotated[str | None, typer.Option(help="auto | cpu | cuda | cuda:N.")]
UnsafeLoadOpt = Annotated[
    bool,
    typer.Option("--unsafe-load", help="torch.load(weights_only=False): trusted files only."),
]

# -- the target batch size B' and its hyperparameters ------------------------------------------

TargetBatchSizeOpt = Annotated[
    int | None,
    typer.Option("--target-batch-size", "-t", min=1, help="B' to test. Or --from-measurement."),
]
FromMeasurementOpt = Annotated[
    Path | None,
    typer.Option(
        "--from-measurement",
        help="Take B' = the top of the recommended range of `bscrit predict` on this "
        "measurement JSON (the lower 95% bound of B*): confirms the prediction.",
    ),
]
C2Opt = Annotated[
    float,
    typer.Option(
        "--c2",
        help="C² of the prediction of --from-measurement; svag: also the verdict's "
        "C-closeness (ratios SGD/SDE within [1/C, C]).",
    ),
]
LrOpt = Annotated[float | None, typer.Option(help="Target LR at B' (overrides the rule).")]
MomentumOpt = Annotated[float | None, typer.Option(help="Target momentum.")]
WeightDecayOpt = Annotated[float | None, typer.Option(help="Target weight decay.")]
Beta1Opt = Annotated[float | None, typer.Option(help="Target Adam beta1.")]
Beta2Opt = Annotated[float | None, typer.Option(help="Target Adam beta2.")]
EpsOpt = Annotated[float | None, typer.Option(help="Target Adam/RMSprop eps.")]
AlphaOpt = Annotated[float | None, typer.Option(help="Target RMSprop alpha.")]
FreshOptimizerStateOpt = Annotated[
    bool,
    typer.Option(
        "--fresh-optimizer-state",
        help="Adam/RMSprop: start from zero moments instead of the warm start (confirm: when "
        "the checkpoint saved no optimizer state).",
    ),
]


def target_overrides(
    lr: float | None,
    momentum: float | None,
    weight_decay: float | None,
    beta1: float | None,
    beta2: float | None,
    eps: float | None,
    alpha: float | None,
) -> dict[str, float | None]:
    """The target hyperparameters given on the command line (None: not given)."""
    return {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "beta1": beta1,
            "beta2": beta2, "eps": eps, "alpha": alpha}  # fmt: skip


# -- evaluation --------------------------------------------------------------------------------

EvalBatchesOpt = Annotated[
    int,
    typer.Option(
        min=2, max=MAX_EVAL_BATCHES, help="Fixed training batches k (of B') for train loss, G, N."
    ),
]
EvalExamplesOpt = Annotated[
    int, typer.Option(min=1, help="Held-out examples evaluated (a fixed random subset).")
]

# -- output ------------------------------------------------------------------------------------

OutOpt = Annotated[
    Path | None,
    typer.Option("--out", "-o", help="Folder for the results: the JSON and a CSV of the curves."),
]
PlotOpt = Annotated[str | None, typer.Option("--plot", help="Write a PNG of the curves here.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the JSON on stdout.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
YesOpt = Annotated[
    bool,
    typer.Option(
        "--yes", "-y", help="Do not ask before running; run a plan over the cap on its size too."
    ),
]


@dataclass(frozen=True)
class RunOutputs:
    """What the output options of a run command do: ``--out`` and ``--plot`` are refused before
    any work when they could not be written (:meth:`check`); the cost is shown and confirmed
    (``--yes``) and the work runs under a progress bar (``--quiet``, ``--json``: none)
    (:meth:`run`); the results are written, then printed as JSON (``--json``) or for people
    (:meth:`finish`)."""

    out: Path | None
    plot: str | None
    json_out: bool
    quiet: bool
    yes: bool

    def check(
        self,
        paths: Callable[[Path], Sequence[Path]],
        spec: Path | None = None,
        inputs: Sequence[tuple[str, Path | None]] = (),
    ) -> None:
        """Refuse the ``--out`` folder, the files ``paths(out)`` in it, and the ``--plot`` file
        if any could not be written, would replace the ``spec`` (its checkpoint, factory files)
        or one of the other ``inputs`` (``("the checkpoint", path)``), or would replace each other
        (:func:`bscrit.cli.outputs.check_output_path`)."""
        from bscrit.cli.outputs import Inputs, check_output_path, distinct_outputs, spec_file_inputs

        read = Inputs.of(*((what, [p]) for what, p in inputs))
        if spec is not None:
            read = spec_file_inputs(spec) + read
        named: list[tuple[Path | str, str]] = []
        for p in (self.out, *paths(self.out)) if self.out is not None else ():
            check_output_path(p, folder=p is self.out, inputs=read)
            named.append((p, "out"))
        if self.plot is not None:
            check_output_path(self.plot, key="plot", inputs=read)
            named.append((self.plot, "plot"))
        distinct_outputs(named[1:])  # the folder itself is not a file

    def run(
        self,
        what: str,
        cost: Any,
        total: int,
        work: Callable[[Callable[[int], None]], R],
        passes: int = 0,
        sized_by: Sequence[str] = (),
    ) -> R:
        """Show ``cost`` on stderr, refuse a plan of more than
        :data:`~bscrit.cli.limits.MAX_PASSES` forward-backward ``passes`` without ``--yes``
        (naming the options ``sized_by``), ask before running, then ``work(advance)`` with a
        progress bar of ``total`` steps."""
        from bscrit import report
        from bscrit.cli.common import confirm_run
        from bscrit.cli.limits import check_passes

        report.show(cost, stderr=True)
        check_passes(passes, self.yes, f"{what}", **{k: k for k in sized_by})
        confirm_run(self.yes, "Run it?")
        enabled = not self.quiet and not self.json_out
        with report.progress(what, total, unit="step", enabled=enabled) as advance:
            return work(advance)

    def finish(
        self,
        result: Any,
        write: Callable[[Any, Path], object],
        paths: Callable[[Path], Sequence[Path]],
        plot: Callable[[Any, Path], None],
        human: Callable[[Any], Any],
    ) -> None:
        """Write the ``--out`` folder (``write(result, out)``, the files ``paths(out)``) and the
        ``--plot`` PNG, then print ``result.to_dict()`` (``--json``: its warnings on stderr) or
        ``human(result)``, then what was written."""
        from bscrit import report
        from bscrit.cli.outputs import write_outputs

        out, png = self.out, None if self.plot is None else Path(self.plot)
        jobs: list[tuple[Callable[[], object], list[Path]]] = []
        if out is not None:
            jobs.append((lambda: write(result, out), list(paths(out))))
        if png is not None:
            jobs.append((lambda: plot(result, png), [png]))
        wrote = write_outputs(result.to_dict, jobs) if jobs else None
        if self.json_out:
            report.print_json(result.to_dict())
            for w in result.warnings:
                report.warn(w)
        else:
            report.show(human(result))
        if wrote:
            report.info(wrote)
