"""Caps on the work one command line may start (``measure``, ``svag``, ``confirm``).

A typo (``--examples 10000000000``, ``--l 1,2,40000``, ``--sample-steps 1e9``) must not start
weeks of work in a CI job, where nobody is asked. Each command shows its cost first; a plan over
:data:`MAX_PASSES` forward-backward passes is then refused unless ``--yes`` says to go on
(:func:`check_passes`). The counts that size what is built *before* the cost is known (the
evaluation batches, the seeds, the grid, the sampled points) have hard caps, enforced by the
options themselves (``--seeds`` at most :data:`MAX_SEEDS`, ...). ``bscrit demo`` has fixed sizes
and prints its plan. The Python API has no caps: its caller chose the numbers.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from bscrit.errors import UsageError

#: Forward-backward passes a command starts without ``--yes``: svag and confirm (all runs and
#: evaluations), ``measure --sample-steps`` (training and sampled points), and ``measure``'s
#: batches per checkpoint (``--batches``, ``--max-batches``, the spec's ``measure.batches``).
#: Ten million passes are days of work even at 10 ms a pass.
MAX_PASSES = 10_000_000
#: ``confirm --seeds``: seeds per branch (each a full training run of the branch).
MAX_SEEDS = 1_000
#: ``confirm --points``: intervals of the evaluation grid.
MAX_POINTS = 10_000
#: ``svag`` / ``confirm --eval-batches``: fixed batches of B' drawn before the cost is shown.
MAX_EVAL_BATCHES = 100_000
#: ``measure --samples``: points measured over ``--sample-steps``.
MAX_SAMPLES = 10_000


def check_passes(passes: int, yes: bool, what: str, **options: str) -> None:
    """Refuse (exit 2), after the cost was shown, a plan of more than :data:`MAX_PASSES`
    forward-backward passes unless ``yes``; ``options`` name the options that set its size
    (``effective_steps="effective_steps"``) for the message."""
    if yes or passes <= MAX_PASSES:
        return
    names = ", ".join("{" + k + "}" for k in options)
    raise UsageError(
        f"{what} plans {passes:,} forward-backward passes, more than the {MAX_PASSES:,} a "
        f"command starts without {{yes}}: reduce {names}, or add {{yes}} to run it anyway",
        yes="yes",
        **options,
    )


def check_nproc(nproc: int, yes: bool) -> None:
    """``measure --nproc N``: more processes than CPU cores (a typo starting thousands of ranks)
    is refused unless ``yes``."""
    cores = os.cpu_count() or 1
    if nproc > cores and not yes:
        raise UsageError(
            f"{{nproc}} {nproc} starts more processes than the {cores} CPU cores of this machine "
            "(one per GPU is the usual); add {yes} to start them anyway",
            nproc="nproc",
            yes="yes",
        )


def sampling_gate(batch_size: int, yes: bool) -> Callable[[Any, Any], None]:
    """What ``--sample-steps`` does once planned: its cost, then the cap, then (maybe) ask."""

    def on_sampling(plan: Any, opt: Any) -> None:
        from bscrit import report
        from bscrit.stats.sample_plan import sample_cost_lines

        report.info("\n".join(sample_cost_lines(plan, opt, batch_size)))
        sized_by = {k: k for k in ("sample_steps", "samples", "batches")}
        check_passes(plan.forward_backward, yes, "measure --sample-steps", **sized_by)
        from bscrit.cli.common import confirm_run

        confirm_run(yes, "Train and measure?")

    return on_sampling


def check_measure_size(
    batches: int | None, in_spec: object, max_batches: int | None, nproc: int | None, yes: bool
) -> None:
    """Before any work: the batches per checkpoint (``--batches``, else the spec's
    ``measure.batches``; ``--max-batches``) within :data:`~bscrit.cli.limits.MAX_PASSES`, and
    ``--nproc`` within the CPU cores, unless ``--yes``."""
    from bscrit.engine.data import MAX_BATCHES

    spec_k = in_spec if batches is None and isinstance(in_spec, int) else None
    for value, key, what in (
        (batches, "batches", "{batches}"),
        (spec_k, "batches", "the spec's measure.batches"),
        (max_batches, "max_batches", "{max_batches}"),
    ):
        if value is not None and value <= MAX_BATCHES:  # above: refused by the plan, --yes or not
            check_passes(value, yes, f"{what} {value:,} (batches a checkpoint)", **{key: key})
    if nproc is not None:
        check_nproc(nproc, yes)
