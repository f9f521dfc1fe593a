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
