"""What a prediction says about one target batch size B' besides ``check``'s verdict (pure):
``scale --measurement``'s warnings (:func:`range_context`) and the B' that ``svag`` and
``confirm`` test when given a measurement (:func:`confirmation_target`)."""

from __future__ import annotations

from bscrit.artifacts.measurement import Measurement
from bscrit.errors import UsageError
from bscrit.theory.formulas import DEFAULT_C2, nsr_at_batch
from bscrit.theory.prediction import Prediction, check, predict
from bscrit.theory.scaling import DEFAULT_ADAM_RULE


def range_context(
    source: str,
    m: Measurement,
    batch_size: int,
    target: int,
    c2: float = DEFAULT_C2,
    adam_rule: str = DEFAULT_ADAM_RULE,
) -> tuple[list[str], float | None]:
    """What ``scale --measurement`` adds: warnings about B' and the NSR at B'.

    Returns:
        ``(warnings, nsr_target)``: a warning when B' is beyond the measurement's recommended range
        (the reason :func:`check` gives) or when the measurement's B differs from the base B; and
        NSR^{B'} (docs/theory.md §1) for the adaptive-SDE warning of the square-root rule.
    """
    pred = predict([(source, m)], c2, adam_rule)
    warnings: list[str] = []
    if m.batch_size != batch_size:
        warnings.append(
            f"{source} was measured at B = {m.batch_size}, not the base B = {batch_size}: its "
            "range is about a run at that batch size"
        )
    verdict = check(pred, target)
    if verdict.verdict != "ok":
        warnings.append(f"beyond the recommended range of {source}: {verdict.reason}")
    pb = pred.base
    return warnings, nsr_at_batch(pb.nsr, pb.batch_size, target, pb.dataset_size)


def confirmation_target(prediction: Prediction, *, power_of_two: bool = False) -> tuple[int, str]:
    """The batch size B' at which to confirm a prediction (``svag --from-measurement``, the demo).

    The top of the recommended range
    (:attr:`~bscrit.theory.recommendation.Recommendation.target`), capped at
    n/2: a SVAG step draws two batches, which above n/2 overlap heavily and carry little noise.
    ``power_of_two`` takes the largest power of two at or below that.

    Returns:
        ``(B', why)``: ``why`` says which limit gave B' in plain words.

    Raises:
        UsageError: the range is empty or has no finite top (nothing to confirm there).
    """
    r = prediction.recommended
    if r.empty:
        raise UsageError(
            f"{r.note}; nothing to confirm (give {{target_batch_size}})",
            target_batch_size="target_batch_size",
        )
    if r.target is None:
        raise UsageError(
            f"{r.note}; give {{target_batch_size}}", target_batch_size="target_batch_size"
        )
    n = prediction.base.dataset_size
    target, why = r.target, "the top of the recommended range"
    if target > n // 2:
        target, why = (
            n // 2,
            f"n/2 = {n // 2} (the top of the recommended range, {r.target}, is above it)",
        )
    if power_of_two:
        pow2 = 1 << (target.bit_length() - 1)
        if pow2 != target:
            target, why = pow2, f"the largest power of two within {why}"
    return target, why
