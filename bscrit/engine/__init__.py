"""The measurement engine (torch): the hot loop and everything it calls per batch: batch plans,
the objective, group sums and Gram matrices, per-example norms, adaptive stopping, torchrun
ranks, continued training for ``--sample-steps``, free-mode capture.
"""
