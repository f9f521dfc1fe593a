"""``bscrit confirm``: the direct check of a scaling rule by branched training (docs/confirm.md).

From one checkpoint, train two branches for the same number of *examples*: the base branch at the
run's batch size B with its hyperparameters, the target branch at B' = κB with the
hyperparameters scaled by the optimizer's rule (linear for SGD, square-root for Adam / AdamW /
RMSprop), K seeds each; the rule holds from B to B' when the target reaches the same loss
(Merrill et al. 2025, "Critical Batch Size Revisited", branched training). What it shares with
``bscrit svag`` (the plan's base, the evaluation, the run loop, the output folder) is in
:mod:`bscrit.runs.common`. The package imports nothing itself (``budget``, ``verdict`` and
``results`` must stay free of torch); import from the modules:

- :mod:`bscrit.runs.confirm.budget`: the examples per branch and the grid of example counts;
- :mod:`bscrit.runs.confirm.verdict`: d per seed, its interval, the verdict (pure: no torch);
- :mod:`bscrit.runs.confirm.results`: branches and ``confirm.json``, its own schema (pure);
- :mod:`bscrit.runs.confirm.plan`: from a spec to a :class:`~bscrit.runs.confirm.plan.ConfirmPlan`
  (both branches' hyperparameters, the grid of example counts, the cost);
- :mod:`bscrit.runs.confirm.run`: :func:`~bscrit.runs.confirm.run.run_confirm` (every seed, both
  branches).

The figure: :mod:`bscrit.report.confirm_plot`.
"""
