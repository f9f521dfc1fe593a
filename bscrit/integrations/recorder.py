"""What a bscrit callback does at a measured step, whatever the framework (docs/api.md).

Every ``every_n_steps`` optimizer steps, after the step (at the new weights), the callback calls
:func:`bscrit.measure` on the training dataset and hands the result here:
:class:`SeriesRecorder` writes ``out_dir/step-XXXXXXX.json`` (the JSON ``bscrit measure``
writes, with ``checkpoints[0].step``) and appends one line to ``out_dir/series.jsonl``
(:func:`series_row`), and returns the metrics the callback logs (:func:`measurement_metrics`:
``bscrit/nsr_raw``, ``bscrit/b_star_raw``, … one name per reading, the same in both modes;
:data:`METRICS`). Only the process of rank 0 records (the callbacks check).

The measurement changes nothing of the run (the guarantees of :func:`bscrit.measure`): a run
with the callback ends with the same weights, bitwise, as one without it.

Imports neither torch nor a framework at module level.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bscrit.artifacts.files import append_line
from bscrit.artifacts.jsonvalues import finite_or_none, finite_pair
from bscrit.errors import UsageError

if TYPE_CHECKING:
    from bscrit.artifacts.measurement import Measurement
    from bscrit.theory.prediction import Prediction

#: ``mode``: measure every n steps with independent batches ("every_n"), or read the
#: micro-batch gradients the step already computes ("free", docs/free.md, :mod:`.free`).
MODES = ("every_n", "free")
#: The name of one measured step's JSON in ``out_dir``.
STEP_FILE = "step-{step:07d}.json"
SERIES_FILE = "series.jsonl"
#: The keys of a ``series.jsonl`` line, in order (a fixed contract: ``bscrit schedule`` reads it).
SERIES_KEYS = (
    "step", "examples_seen", "G", "N", "nsr", "b_star", "b_star_ci95", "G_ci95", "N_ci95",
    "nsr_ci95", "batch_size", "seconds", "param_set", "file",
)  # fmt: skip


#: The metrics the callbacks log, one name per meaning, in both modes (docs/api.md, "Metrics"):
#: NSR = N^B/G and B* = C²B(1 + NSR) ([LMA21] Thm 5.6) of each reading measured: ``raw`` the
#: gradient of every parameter the optimizer updates; ``scale_invariant`` the scale-invariant
#: ones (every-n mode, when some are found); ``preconditioned`` P∇L, the noise the adaptive
#: update sees (every-n mode, adaptive optimizers: Adam family, RMSprop). Free mode adds
#: ``drift`` (the relative weight drift over the window) and ``free_covered`` (1 when the
#: window's regime has intervals that cover the trajectory mean, else 0; docs/free.md
#: "Regimes"). What was not measured is not logged.
METRICS = (
    "bscrit/nsr_raw", "bscrit/b_star_raw",
    "bscrit/nsr_scale_invariant", "bscrit/b_star_scale_invariant",
    "bscrit/nsr_preconditioned", "bscrit/b_star_preconditioned",
    "bscrit/drift", "bscrit/free_covered",
)  # fmt: skip
#: The readings of :data:`METRICS` and the parameter sets of a measurement they come from.
_READINGS = (("raw", "all"), ("scale_invariant", "scale_invariant"),
             ("preconditioned", "preconditioned"))  # fmt: skip


def measurement_metrics(m: Measurement, c2: float) -> dict[str, float]:
    """``bscrit/nsr_<reading>`` and ``bscrit/b_star_<reading>`` for each reading ``m`` has
    (:data:`METRICS`), each as ``bscrit predict`` computes it (the same intervals' point values;
    inf when Ĝ ≤ 0: B* unbounded); a reading with N ≤ 0 (no noise measured) is left out."""
    from bscrit.theory.bounds import interval_scope
    from bscrit.theory.formulas import critical_batch_size

    out: dict[str, float] = {}
    for reading, param_set in _READINGS:
        stats = getattr(m, param_set)
        if stats is None or not stats.N > 0:
            continue
        ns, _, _ = interval_scope(m, param_set, stats.noise_stats())
        out[f"bscrit/nsr_{reading}"] = ns.nsr
        out[f"bscrit/b_star_{reading}"] = critical_batch_size(m.batch_size, ns.nsr, c2)
    return out


def check_mode(mode: str) -> None:
    """Refuse an unknown mode (before training).

    Raises:
        UsageError: naming the modes.
    """
    if mode not in MODES:
        raise UsageError(f"mode: expected one of {', '.join(map(repr, MODES))}, got {mode!r}")


def check_every(every_n_steps: Any) -> int:
    if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 1:
        raise UsageError(f"every_n_steps: expected a positive integer, got {every_n_steps!r}")
    return every_n_steps


def series_row(
    m: Measurement,
    p: Prediction,
    step: int,
    examples_seen: int | None,
    seconds: float,
    file: str,
) -> dict[str, Any]:
    """One line of ``series.jsonl``: G, N, NSR and B* with their 95% intervals, of the parameter
    set ``predict`` uses (the scale-invariant one when there is one, else all), NaN/inf → null.

    B* = C²(B + B·N^B/G) is [LMA21] Thm 5.6's critical batch size as ``bscrit predict``
    reports it (docs/theory.md §4); its interval is the NSR's mapped through that formula.
    """
    b = p.base
    ns = b.noise
    return {
        "step": step,
        "examples_seen": examples_seen,
        "G": finite_or_none(ns.G.value),
        "N": finite_or_none(ns.N.value),
        "nsr": finite_or_none(ns.nsr),
        "b_star": finite_or_none(b.b_star),
        "b_star_ci95": finite_pair(b.b_star_ci95),
        "G_ci95": finite_pair(ns.G.ci95),
        "N_ci95": finite_pair(ns.N.ci95),
        "nsr_ci95": finite_pair(ns.nsr_ci95),
        "batch_size": m.batch_size,
        "seconds": seconds,  # measuring, writing the JSON and predicting
        "param_set": b.param_set,
        "file": file,
    }


class SeriesRecorder:
    """The measured steps of one run: when to measure, and what to write and log.

    Args:
        out_dir: where ``step-XXXXXXX.json`` and ``series.jsonl`` go (created on the first
            record; ``series.jsonl`` is appended to, so a resumed run continues it).
        every_n_steps: measure after every n-th optimizer step.
        num_batches, groups, seed, c2: as in :func:`bscrit.measure` / :func:`bscrit.predict`;
            the batches of step t are drawn with seed ``seed + t`` (a fresh draw each time).
    """

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        every_n_steps: int,
        *,
        num_batches: int | None = None,
        groups: int = 10,
        seed: int = 0,
        c2: float = 2.0,
    ) -> None:
        from bscrit.theory.formulas import check_c2

        self.out_dir = Path(out_dir)
        self.every_n_steps = check_every(every_n_steps)
        self.num_batches, self.groups, self.seed = num_batches, groups, seed
        self.c2 = check_c2(c2)
        self.last_step: int | None = None
        self.rows: list[dict[str, Any]] = []

    def due(self, step: int) -> bool:
        """True after every n-th optimizer step, once per step (accumulation calls again)."""
        return step > 0 and step % self.every_n_steps == 0 and step != self.last_step

    def record(
        self,
        *,
        model: Any,
        data: Any,
        loss_fn: Any,
        batch_size: int,
        step: int,
        examples_seen: int | None = None,
        optimizer: Any = None,
        micro_batch_size: int | None = None,
    ) -> dict[str, float]:
        """Measure at the current weights, write the JSON and the series line; returns the
        metrics to log (:func:`measurement_metrics`; inf when B* is unbounded)."""
        from bscrit.api import measure, predict

        self.last_step = step
        t0 = time.perf_counter()
        m = measure(
            model,
            data,
            loss_fn,
            batch_size,
            num_batches=self.num_batches,
            groups=self.groups,
            seed=self.seed + step,
            optimizer=optimizer,
            micro_batch_size=micro_batch_size,
            step=step,
            examples_seen=examples_seen,
            label=f"step {step}",
        )
        name = STEP_FILE.format(step=step)
        m.save(self.out_dir / name)
        p = predict(m, self.c2)
        seconds = time.perf_counter() - t0  # all the callback's work at this step
        row = series_row(m, p, step, examples_seen, seconds, name)
        append_line(self.out_dir / SERIES_FILE, json.dumps(row, allow_nan=False))
        self.rows.append(row)
        return measurement_metrics(m, self.c2)


def read_series(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The lines of a ``series.jsonl``, each a dict with :data:`SERIES_KEYS`, every line checked
    before any is returned (:func:`bscrit.artifacts.series.read_lines`: bounded parsing, values
    and ranges, B* inside its interval, steps increasing).

    Raises:
        ArtifactError: unreadable, or a line that is not a series record (names the line and key).
    """
    from bscrit.artifacts.series import read_lines

    return [dict(d) for _, d in read_lines(path, required=SERIES_KEYS)]
