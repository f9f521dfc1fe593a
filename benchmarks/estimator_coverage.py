"""Estimator against closed-form truth: bias and 95% interval coverage over many seeds.

A tiny float64 MLP (3 → 4 → 1, tanh) on n = 48 examples, where the per-example gradients over the
whole dataset give the exact G and N^B = T₁ (n − B)/(B (n − 1)) (docs/theory.md §1). Runs
``bscrit.engine.loop.measure_model`` R times with different seeds (k batches in m groups each) and
prints the mean of Ĝ and N̂ against the truth (in units of their Monte-Carlo standard error) and
how often the 95% jackknife intervals of G, N and NSR cover the truth.

    python benchmarks/estimator_coverage.py                 # R = 400, k = 40, m = 10 (~15 s)
    python benchmarks/estimator_coverage.py --reps 1000 --batches 200
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "torch"))

from reference import mse, tiny_problem, truth  # noqa: E402

from bscrit.engine.loop import measure_model
from bscrit.stats.summary import param_set_stats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=400)
    p.add_argument("--batches", type=int, default=40)
    p.add_argument("--groups", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=6)
    a = p.parse_args()
    model, ds = tiny_problem()
    g_true, _, n_true = truth(model, ds, a.batch_size)
    gs, ns, cover = [], [], {"G": 0, "N": 0, "NSR": 0}
    for seed in range(a.reps):
        raw = measure_model(
            model, ds, mse, batch_size=a.batch_size, num_batches=a.batches, groups=a.groups,
            seed=seed,
        )  # fmt: skip
        s = param_set_stats(raw.tensors)
        gs.append(s.G)
        ns.append(s.N)
        cover["G"] += s.G_ci95[0] <= g_true <= s.G_ci95[1]
        cover["N"] += s.N_ci95[0] <= n_true <= s.N_ci95[1]
        cover["NSR"] += s.nsr_ci95[0] <= n_true / g_true <= s.nsr_ci95[1]
    print(f"n = {len(ds)}, B = {a.batch_size}, k = {a.batches}, m = {a.groups}, {a.reps} seeds\n")
    print("| quantity | truth | mean of estimates | (mean − truth)/s.e. | 95% CI coverage |")
    print("|---|---|---|---|---|")
    for name, xs, t in (("G", gs, g_true), ("N^B", ns, n_true)):
        mean = statistics.fmean(xs)
        se = statistics.stdev(xs) / math.sqrt(a.reps)
        key = "G" if name == "G" else "N"
        z = (mean - t) / se
        print(f"| {name} | {t:.5f} | {mean:.5f} | {z:+.2f} | {cover[key] / a.reps:.3f} |")
    print(f"| NSR | {n_true / g_true:.4f} | — | — | {cover['NSR'] / a.reps:.3f} |")


if __name__ == "__main__":
    main()
