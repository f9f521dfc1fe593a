"""The bounds of [LMA21] (Thms 5.2, 5.5, 5.6), the recommended range, predictions and checks,
the linear and square-root scaling rules, and the schedule's math. Pure: no torch.
"""
