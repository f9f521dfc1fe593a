"""The pre-registered settings and criteria (fixed before any truth was measured).

Every field here is part of the protocol written into ``registered/<setting>.json``. Changing a
field after its registration commit is a new registration (a new setting name), never an edit.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

#: The commit whose defaults are frozen (predict's C² = 2, check's gate, svag's verdict rules,
#: confirm's δ = 10%, budgets): the head of main when the study began.
FREEZE_COMMIT = "e3312c2"

#: How each answer counts, fixed before the truth (docs/validation.md, "Pre-registered validation").
COUNTING = {
    "check": {
        "approve": "exit 0, or exit 6 (provisional approval: B' ≤ the lower 95% bound of B* on the "
        "measured checkpoint(s); what a user with --allow-provisional runs). Counting 6 as an "
        "approval is the harsher choice for the false-OK rate.",
        "refuse": "exit 1 (above the point estimate of B*, past the rule's reach, or above n)",
        "undecided": "exit 5: not an approval; reported as its own column, and in a second "
        "reading (--gate point) counted as an approval",
    },
    "svag": "holds / fails as printed; inconclusive is its own column (neither right nor wrong)",
    "confirm": "holds / fails as printed; inconclusive is its own column (neither right nor wrong)",
    "predict": "the range [recommended min, max]; compared with the observed boundary (the ratio "
    "of predict's max to the last B' where the rule holds)",
}


@dataclass(frozen=True)
class SgdSetting:
    """[LMA21]'s protocol: a from-scratch LSR sweep; bscrit measures the B0 run at the decay."""

    name: str
    data: str  # "teacher" | "mnist1d-v2"
    arch: str  # "si" | "affine" | "cnn"
    width: int = 96
    B0: int = 16
    lr0: float = 0.05
    weight_decay: float = 5e-3
    epochs: int = 60
    decay_epoch: int = 48  # the LR ×0.1 after this epoch; bscrit's checkpoint is taken here
    grid: tuple[int, ...] = (32, 64, 128, 256, 512, 1024, 2048)
    seeds: tuple[int, ...] = (0, 1, 2)
    criterion: str = (
        "LSR fails at B' when the mean final test error over the seeds exceeds 1.2 × the best mean "
        "test error of the sweep (B0 and every B' of the grid) [LMA21] Fig. 3"
    )
    kind: str = "sgd"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LmSetting:
    """The branched protocol (Merrill et al. 2025): branches at κ·B0 from a base checkpoint."""

    name: str
    d_model: int
    layers: int
    branch_step: int  # the base run's step where the branches start (early or late)
    B0: int = 16  # sequences of 64 tokens
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.1  # matrices only; biases, LayerNorm and positions: a no-decay group
    warmup_steps: int = 50  # linear warm-up, then constant
    branch_examples: int = 4096  # sequences per branch (= 256 steps at B0), the same at every κ
    kappas: tuple[int, ...] = (2, 4, 8, 16, 32)
    rules: tuple[str, ...] = ("full", "lr-only")
    seeds: tuple[int, ...] = (0, 1, 2)
    tolerances: dict[str, float] = field(
        default_factory=lambda: {"abs_0.01": 0.01, "rel_0.10": 0.10}
    )
    criterion: str = (
        "D = mean held-out loss at κ·B0 − mean at B0 (branches, 3 seeds each, nats/token). "
        "The rule "
        "fails at κ when D > max(tol, 2·SE(D)); tol = 0.01 nats/token (Merrill et al. 2025) or "
        "0.10 × the mean at B0 (bscrit confirm's default δ, relative). A κ where a rule gives no "
        "valid hyperparameters (β' ≤ 0) is 'undefined' and not scored."
    )
    kind: str = "lm"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


SETTINGS: dict[str, SgdSetting | LmSetting] = {
    s.name: s
    for s in (
        SgdSetting("teacher-si", data="teacher", arch="si"),
        SgdSetting("teacher-affine", data="teacher", arch="affine"),
        SgdSetting("mnist1d-v2-cnn", data="mnist1d-v2", arch="cnn", epochs=40, decay_epoch=32),
        LmSetting("prose-s-early", d_model=64, layers=2, branch_step=150),
        LmSetting("prose-s-late", d_model=64, layers=2, branch_step=1200),
        LmSetting("prose-m-early", d_model=96, layers=3, branch_step=150),
        LmSetting("prose-m-late", d_model=96, layers=3, branch_step=1200),
    )
}

#: A tiny variant of each kind for the CI smoke (numbers mean nothing).
SMOKE: dict[str, SgdSetting | LmSetting] = {
    "smoke-sgd": SgdSetting(
        "smoke-sgd",
        data="teacher",
        arch="si",
        width=16,
        epochs=3,
        decay_epoch=2,
        grid=(64, 256),
        seeds=(0,),
    ),  # fmt: skip
    "smoke-lm": LmSetting(
        "smoke-lm",
        d_model=16,
        layers=1,
        branch_step=10,
        warmup_steps=2,
        branch_examples=64,
        kappas=(2, 4),
        seeds=(0,),
    ),  # fmt: skip
}


def get(name: str) -> SgdSetting | LmSetting:
    if name in SETTINGS:
        return SETTINGS[name]
    if name in SMOKE:
        return SMOKE[name]
    raise SystemExit(f"unknown setting {name!r}; expected one of {sorted(SETTINGS)}")
