"""``bscrit confirm``: the direct check of a scaling rule by branched training (docs/confirm.md).

From one checkpoint, train two branches for the same number of *examples*: the base branch at the
run's batch size B with its hyperparameters, the target branch at B' = κB with the
hyperparameters scaled by the optimizer's rule (linear for SGD, square-root for Adam / AdamW /
RMSprop), K seeds each; the rule holds from B to B' when the target reaches the same loss
(Merrill et al. 2025, "Critical Batch Size Revisited", branched training). The package imports
nothing itself (``bscrit.runs.confirm.results`` must stay free of torch); import from the modules:

- :mod:`bscrit.runs.confirm.results`: branches, the verdict, ``confirm.json`` (pure: no torch);
- :mod:`bscrit.runs.confirm.plan`: from a spec to a :class:`~bscrit.runs.confirm.plan.ConfirmPlan`
  (both branches' hyperparameters, the grid of example counts, the cost);
- :mod:`bscrit.runs.confirm.run`: :func:`~bscrit.runs.confirm.run.run_confirm` (every seed, both branches);
- :mod:`bscrit.runs.confirm.plot`: loss against examples for both branches (matplotlib).
"""
