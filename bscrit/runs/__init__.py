"""Training from a checkpoint: :mod:`.svag` (a short SVAG run) and :mod:`.confirm` (branches at B
and B') on one shared base, :mod:`.common` (plan, evaluation grid, run loop, artifact folder).
"""
