"""The base every run of ``bscrit svag`` and ``bscrit confirm`` stands on. The package imports
nothing itself (``artifact`` and ``result`` stay free of torch); import from the modules:

- :mod:`bscrit.runs.common.plan`: from a spec to what every plan holds (:class:`RunPlan`: the
  checkpoint's model, the data, the optimizer at B and at B', the evaluation batches);
- :mod:`bscrit.runs.common.evaluation`: the test functions every run is judged by
  (:class:`ModelEvaluator`) and the loss gradient;
- :mod:`bscrit.runs.common.optimizer`: PyTorch's optimizer and the LR schedule of a run;
- :mod:`bscrit.runs.common.warm`: the warm start of Adam / RMSprop from the gradient moments;
- :mod:`bscrit.runs.common.loop`: one run on a deep copy under a seed, trained and evaluated
  along a grid of step counts;
- :mod:`bscrit.runs.common.result`: what every result records (:class:`RunResult`) and the test
  functions' labels (pure: no torch);
- :mod:`bscrit.runs.common.artifact`: the ``--out`` folder, its JSON with its own schema and its
  CSV (pure: no torch).
"""
