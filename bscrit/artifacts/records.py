"""The records a measurement is made of: one parameter set's G, N and NSR with their jackknife
values (:class:`ParamSetStats`), the equilibrium check of [LMA21] eq. (11), the per-tensor rows and
one checkpoint's measurement; each with its JSON form (``to_dict`` / ``from_dict``).

No torch import. JSON cannot hold ``inf``: an unbounded value (NSR when Ĝ ≤ 0, the upper end of an
interval with no upper bound) is written as ``null`` (:mod:`bscrit.artifacts.jsonvalues`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from bscrit.artifacts.jsonvalues import finite_or_none, finite_pair, none_to_inf
from bscrit.stats.estimators import NoiseStats, noise_stats_from_jackknife


@dataclass(frozen=True)
class ParamSetStats:
    """G, N, NSR (with 95% intervals and the jackknife values) and R of one parameter set."""

    G: float
    G_se: float
    G_ci95: tuple[float, float]
    N: float
    N_se: float
    N_ci95: tuple[float, float]
    nsr: float  # inf when Ĝ <= 0
    nsr_ci95: tuple[float, float]  # hi may be inf
    R: float  # ‖x‖² of the set's weights
    num_params: int
    num_tensors: int
    jackknife_G: tuple[float, ...]
    jackknife_N: tuple[float, ...]
    k: int

    @property
    def signal_detected(self) -> bool:
        return self.G_ci95[0] > 0

    def noise_stats(self) -> NoiseStats:
        """Rebuild the :class:`~bscrit.stats.estimators.NoiseStats` (intervals from the
        jackknife)."""
        return noise_stats_from_jackknife(
            self.G, self.N, self.jackknife_G, self.jackknife_N, self.k
        )

    @staticmethod
    def from_noise_stats(
        s: NoiseStats, *, R: float, num_params: int, num_tensors: int
    ) -> ParamSetStats:
        return ParamSetStats(
            G=s.G.value,
            G_se=s.G.se,
            G_ci95=s.G.ci95,
            N=s.N.value,
            N_se=s.N.se,
            N_ci95=s.N.ci95,
            nsr=s.nsr,
            nsr_ci95=s.nsr_ci95,
            R=R,
            num_params=num_params,
            num_tensors=num_tensors,
            jackknife_G=s.jackknife_G,
            jackknife_N=s.jackknife_N,
            k=s.k,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "G": self.G,
            "G_se": self.G_se,
            "G_ci95": list(self.G_ci95),
            "N": self.N,
            "N_se": self.N_se,
            "N_ci95": list(self.N_ci95),
            "nsr": finite_or_none(self.nsr),
            "nsr_ci95": finite_pair(self.nsr_ci95),
            "signal_detected": self.signal_detected,
            "R": self.R,
            "num_params": self.num_params,
            "num_tensors": self.num_tensors,
            "k": self.k,
            "jackknife": {"G": list(self.jackknife_G), "N": list(self.jackknife_N)},
        }

    @staticmethod
    def from_dict(d: dict[str, Any]) -> ParamSetStats:
        jk = d["jackknife"]
        return ParamSetStats(
            G=float(d["G"]),
            G_se=float(d["G_se"]),
            G_ci95=(float(d["G_ci95"][0]), float(d["G_ci95"][1])),
            N=float(d["N"]),
            N_se=float(d["N_se"]),
            N_ci95=(float(d["N_ci95"][0]), float(d["N_ci95"][1])),
            nsr=none_to_inf(d["nsr"]),
            nsr_ci95=(none_to_inf(d["nsr_ci95"][0]), none_to_inf(d["nsr_ci95"][1])),
            R=float(d["R"]),
            num_params=int(d["num_params"]),
            num_tensors=int(d["num_tensors"]),
            jackknife_G=tuple(float(x) for x in jk["G"]),
            jackknife_N=tuple(float(x) for x in jk["N"]),
            k=int(d["k"]),
        )


@dataclass(frozen=True)
class Equilibrium:
    """[LMA21] eq. (11) on the scale-invariant part: (2 − ηλ) λ R = η (G + N).

    ``residual`` ρ = (2 − ηλ) λ R / (η (G + N)) − 1; |ρ| large means "not at equilibrium".
    """

    lr: float
    weight_decay: float
    R: float
    G: float
    N: float
    lhs: float
    rhs: float
    residual: float
    param_set: str  # "scale_invariant" | "all"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Equilibrium:
        return Equilibrium(**{k: (v if k == "param_set" else float(v)) for k, v in d.items()})


@dataclass(frozen=True)
class ParameterRow:
    """Per-tensor breakdown (no intervals: one row per trainable tensor)."""

    name: str
    shape: tuple[int, ...]
    numel: int
    G: float
    N: float
    R: float
    scale_invariant: bool
    invariance_ratio: float  # Σ|⟨W, g⟩| / Σ‖W‖‖g‖ (docs/theory.md §3); ~0: scale-invariant

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        d["invariance_ratio"] = finite_or_none(self.invariance_ratio)
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> ParameterRow:
        ir = d.get("invariance_ratio")
        return ParameterRow(
            name=str(d["name"]),
            shape=tuple(int(s) for s in d["shape"]),
            numel=int(d["numel"]),
            G=float(d["G"]),
            N=float(d["N"]),
            R=float(d["R"]),
            scale_invariant=bool(d["scale_invariant"]),
            invariance_ratio=math.nan if ir is None else float(ir),
        )


@dataclass(frozen=True)
class CheckpointStats:
    """One checkpoint's measurement (before pooling)."""

    path: str
    all: ParamSetStats
    scale_invariant: ParamSetStats | None
    equilibrium: Equilibrium | None
    elapsed_s: float
    step: int | None = None  # the training step saved with it (or after it, when sampled)
    examples_seen: int | None = None  # training examples consumed before it (null: unknown)
    tokens_seen: int | None = None  # training tokens consumed before it (HF Trainer; null: unknown)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "step": self.step,
            "examples_seen": self.examples_seen,
            "tokens_seen": self.tokens_seen,
            "elapsed_s": self.elapsed_s,
            "stats": {
                "all": self.all.to_dict(),
                "scale_invariant": (
                    self.scale_invariant.to_dict() if self.scale_invariant else None
                ),
            },
            "equilibrium": self.equilibrium.to_dict() if self.equilibrium else None,
        }

    @staticmethod
    def from_dict(d: dict[str, Any]) -> CheckpointStats:
        st = d["stats"]
        return CheckpointStats(
            path=str(d["path"]),
            all=ParamSetStats.from_dict(st["all"]),
            scale_invariant=(
                ParamSetStats.from_dict(st["scale_invariant"])
                if st.get("scale_invariant")
                else None
            ),
            equilibrium=Equilibrium.from_dict(d["equilibrium"]) if d.get("equilibrium") else None,
            elapsed_s=float(d.get("elapsed_s", 0.0)),
            step=None if d.get("step") is None else int(d["step"]),
            examples_seen=None if d.get("examples_seen") is None else int(d["examples_seen"]),
            tokens_seen=None if d.get("tokens_seen") is None else int(d["tokens_seen"]),
        )
