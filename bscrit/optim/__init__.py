"""The optimizer registry (names, hyperparameters, rules, references) and what a saved
optimizer state says (param groups, shapes, which optimizer). Pure: no torch.
"""
