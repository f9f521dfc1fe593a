"""Write the hand-designed measurement fixtures of this folder (``python make_fixtures.py``).

Each fixture is a :class:`bscrit.artifacts.measurement.Measurement` whose leave-one-group-out
values are built so that the jackknife can be done by hand: with m = 10 groups, every N_(j)
equals N and the G_(j) alternate G + δ, G − δ. Then the SNR values G_(j)/N are G/N ± δ/N, their
mean is G/N, and

    se(G/N) = sqrt((m − 1)/m · m (δ/N)²) = 3 δ/N,     t_{0.975, 9} = 2.2621571627...

so the 95% interval of G/N is G/N ± 2.26216 · 3δ/N and the NSR interval is its inverse. The tests
in tests/unit/test_theory.py recompute every number from these constants.

| file               | B    | n     | set used        | G     | N    | δ     | NSR  | optimizer   |
|--------------------|------|-------|-----------------|-------|------|-------|------|-------------|
| sgd_b128.json      | 128  | 50000 | scale-invariant | 0.1   | 0.8  | 0.004 | 8    | SGD, ρ=0.05 |
| sgd_b512.json      | 512  | 50000 | scale-invariant | 0.1   | 0.2  | 0.004 | 2    | SGD, ρ=0.8  |
| adam_noisy.json    | 256  | 60000 | all (none s.i.) | 0.002 | 1.0  | 0.001 | 500  | Adam        |
| adam_wide.json     | 256  | 60000 | all (none s.i.) | 0.002 | 1.0  | 0.001 | 500  | Adam β .999 |
| sgd_small_nsr.json | 4096 | 50000 | scale-invariant | 1.0   | 0.25 | 0.01  | 0.25 | SGD         |

adam_noisy: Ĝ's interval includes 0 (no upper bound on B*). sgd_small_nsr: NSR < 1/(C² − 1), so
Thm 5.2 certifies the SDE fails, and Thm 5.5 certifies something.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bscrit.artifacts.measurement import Measurement
from bscrit.artifacts.records import CheckpointStats, Equilibrium, ParameterRow, ParamSetStats
from bscrit.optim.registry import OptimizerInfo
from bscrit.stats.estimators import noise_stats_from_jackknife

HERE = Path(__file__).parent
M = 10  # jackknife groups


def param_set(g: float, n: float, delta: float, *, k: int, r: float, num_params: int):
    g_loo = [g + delta if j % 2 == 0 else g - delta for j in range(M)]
    n_loo = [n] * M
    s = noise_stats_from_jackknife(g, n, g_loo, n_loo, k)
    return ParamSetStats.from_noise_stats(s, R=r, num_params=num_params, num_tensors=4)


def measurement(
    *,
    b: int,
    n_data: int,
    si: ParamSetStats | None,
    all_: ParamSetStats,
    fraction: float,
    opt: OptimizerInfo | None,
    rho: float | None,
    name: str,
) -> Measurement:
    eq = None
    if rho is not None and opt is not None and si is not None:
        lhs = (2 - opt.lr * opt.weight_decay) * opt.weight_decay * si.R
        eq = Equilibrium(
            lr=opt.lr,
            weight_decay=opt.weight_decay,
            R=si.R,
            G=si.G,
            N=si.N,
            lhs=lhs,
            rhs=lhs / (1 + rho),
            residual=rho,
            param_set="scale_invariant",
        )
    k = all_.k
    ck = CheckpointStats(
        path=f"runs/{name}.pt", all=all_, scale_invariant=si, equilibrium=eq, elapsed_s=1.0
    )
    rows = (
        ParameterRow("conv1.weight", (16, 3, 3, 3), 432, 0.01, 0.1, 10.0, True, 1e-6),
        ParameterRow("fc.weight", (10, 16), 160, 0.001, 0.02, 2.0, False, 0.3),
    )
    return Measurement(
        batch_size=b,
        dataset_size=n_data,
        num_batches=k,
        groups=M,
        seed=0,
        device="cpu",
        mode="train",
        elapsed_s=1.0,
        checkpoints=(ck,),
        all=all_,
        scale_invariant=si,
        equilibrium=eq,
        equilibrium_note="fixture",
        optimizer=opt,
        per_parameter=rows,
        scale_invariant_fraction=fraction,
        spec="spec.yaml",
        model="fixture",
        bscrit_version="0.1.0",
    )


def fixtures() -> dict[str, Measurement]:
    sgd = OptimizerInfo("sgd", lr=0.1, momentum=0.9, weight_decay=5e-4)
    adam = OptimizerInfo("adam", lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
    return {
        "sgd_b128.json": measurement(
            b=128,
            n_data=50000,
            si=param_set(0.1, 0.8, 0.004, k=400, r=120.0, num_params=8000),
            all_=param_set(0.11, 0.9, 0.004, k=400, r=150.0, num_params=10000),
            fraction=0.8,
            opt=sgd,
            rho=0.05,
            name="b128",
        ),
        "sgd_b512.json": measurement(
            b=512,
            n_data=50000,
            si=param_set(0.1, 0.2, 0.004, k=200, r=120.0, num_params=8000),
            all_=param_set(0.11, 0.25, 0.004, k=200, r=150.0, num_params=10000),
            fraction=0.8,
            opt=OptimizerInfo("sgd", lr=0.4, momentum=0.9, weight_decay=5e-4),
            rho=0.8,
            name="b512",
        ),
        "adam_noisy.json": measurement(
            b=256,
            n_data=60000,
            si=None,
            all_=param_set(0.002, 1.0, 0.001, k=240, r=300.0, num_params=10000),
            fraction=0.0,
            opt=adam,
            rho=None,
            name="adam",
        ),
        # adam_noisy with betas (0.999, 0.9999): the square-root rule reaches κ < 1000, far past n,
        # so B* (unbounded above) and n are what limit the range
        "adam_wide.json": measurement(
            b=256,
            n_data=60000,
            si=None,
            all_=param_set(0.002, 1.0, 0.001, k=240, r=300.0, num_params=10000),
            fraction=0.0,
            opt=OptimizerInfo("adam", lr=1e-3, betas=(0.999, 0.9999), eps=1e-8),
            rho=None,
            name="adam",
        ),
        "sgd_small_nsr.json": measurement(
            b=4096,
            n_data=50000,
            si=param_set(1.0, 0.25, 0.01, k=200, r=120.0, num_params=8000),
            all_=param_set(1.1, 0.3, 0.01, k=200, r=150.0, num_params=10000),
            fraction=0.8,
            opt=sgd,
            rho=0.1,
            name="b4096",
        ),
    }


def render(m: Measurement) -> str:
    return json.dumps(m.to_dict(), indent=2, allow_nan=False) + "\n"


def main(out: Path = HERE) -> None:
    for name, m in fixtures().items():
        (out / name).write_text(render(m), encoding="utf-8")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
