"""SVAG runs: simulate the SDE of SGD / Adam / RMSprop at the target batch size.

SVAG is the *Stochastic Variance Amplified Gradient* of Li, Malladi & Arora [LMA21 §4, eq. (5)]
and its adaptive version [MLPA22 §6, Defs. 6.1–6.2] — not Balles & Hennig's "SVAG" (stochastic
variance-adapted gradient, the M-SVAG optimiser), which shares the acronym. docs/theory.md §6;
details and the verdict: docs/svag.md. What it shares with ``bscrit confirm`` (the plan's base,
the evaluation, the warm start, the run loop, the output folder) is in :mod:`bscrit.runs.common`.

The package imports nothing itself (``bscrit.runs.svag.results``, ``verdict``, ``tail`` and
``ratios`` stay free of torch); import from the modules:

- :mod:`bscrit.runs.svag.step`: one SVAG step (ĝ = r₁g₁ + r₂g₂, PyTorch's optimizer);
- :mod:`bscrit.runs.svag.oracles`: where the two gradients come from (a model on random batches,
  or an analytic gradient plus Gaussian noise);
- :mod:`bscrit.runs.svag.plan`: from a spec to a :class:`SvagPlan` (target hyperparameters, run
  length in relaxation times, cost);
- :mod:`bscrit.runs.svag.run`: :func:`run_svag` (one l) and :func:`run_plan` (every l, the verdict);
- :mod:`bscrit.runs.svag.tail`: the tail window and a test function's mean over it (pure);
- :mod:`bscrit.runs.svag.ratios`: the SDE's value and the ratio SGD/SDE with its interval (pure);
- :mod:`bscrit.runs.svag.verdict`: the calibrated verdict, SGD against its SDE as C-closeness of
  [LMA21] Def. 5.1 (pure: no torch);
- :mod:`bscrit.runs.svag.results`: runs and ``svag.json``, schema 2 (pure: no torch).

The figure: :mod:`bscrit.report.svag_plot`.
"""
