"""Pure estimators: G, N, NSR and their jackknife intervals, intervals over the equilibrium,
the ``--sample-steps`` plan, free-mode estimators, raw sums -> records. No torch.
"""
