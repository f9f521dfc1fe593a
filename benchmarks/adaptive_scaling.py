"""Benchmark 4: does an adaptive run (``--target-rel-error``) stay as fast per batch as it grows?

An adaptive run checks the NSR interval every few batches. Each check reads the group sums and
their Gram matrices; if every check added a group (bscrit ≤ 0.1), a check cost more the longer
the run, and 10,000 batches took 30× as long as a fixed ``-k 10000``. Now the groups stop growing
at max(m, 32) and later batches are dealt into them, so a check costs the same at batch 10,000 as
at batch 400.

The model is the tiny spec of the tests (tests/assets/tiny.py: 4 → 8 → 3 with BatchNorm, B = 8),
where the per-batch work is smallest and the checks weigh the most. The table gives the time per
batch in consecutive windows of the run, for a fixed k and for an adaptive run whose target is
never reached (so it runs to its budget), and the ratio of the last window to the first.

``--coverage N`` adds the check of the intervals: N adaptive runs (seeds 0..N−1) on the float64
regression problem of tests/torch/reference.py, with the groups capped at 32 (the default) and
with a fixed m = 8 (``max_groups`` = m), each against the exact NSR: the share of 95% intervals
that contain it, with its binomial standard error.

Usage::

    python benchmarks/adaptive_scaling.py                   # ~1 minute on 2 busy cores
    python benchmarks/adaptive_scaling.py --batches 10000 --coverage 1000
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "assets"))
sys.path.insert(0, str(ROOT / "tests" / "torch"))

from tiny import make_dataset, make_model  # noqa: E402

from bscrit.engine.adaptive import adaptive_hooks, adaptive_plan  # noqa: E402
from bscrit.engine.loop import measure_model  # noqa: E402


def timed_run(k: int, adaptive: bool, groups: int, seed: int) -> list[tuple[int, float]]:
    """(batches done, seconds) at every progress call of one run of k batches."""
    torch.manual_seed(0)
    model, ds = make_model(width=8), make_dataset(n=64)
    marks: list[tuple[int, float]] = []
    done = [0]
    t0 = time.perf_counter()

    def progress(n: int) -> None:
        done[0] += n
        marks.append((done[0], time.perf_counter() - t0))

    kw: dict = {"num_batches": k, "groups": groups}
    if adaptive:
        start = 10 * groups
        st = adaptive_plan(1e-9, k, start, groups, len(ds), 8)  # never reached: runs to k
        kw = {"num_batches": start, "groups": groups, "hooks": adaptive_hooks(st, len(ds), 8, seed)}
    measure_model(model, ds, torch.nn.functional.cross_entropy, batch_size=8, seed=seed,
                  progress=progress, **kw)  # fmt: skip
    return marks


def per_window(marks: list[tuple[int, float]], k: int, windows: int) -> list[float]:
    """Milliseconds per batch in ``windows`` consecutive windows of the run."""
    edges = [round(k * i / windows) for i in range(windows + 1)]

    def time_at(b: int) -> float:  # linear interpolation between progress marks
        prev = (0, 0.0)
        for n, t in marks:
            if n >= b:
                return prev[1] + (t - prev[1]) * (b - prev[0]) / max(n - prev[0], 1)
            prev = (n, t)
        return marks[-1][1]

    return [
        1000 * (time_at(hi) - time_at(lo)) / (hi - lo)
        for lo, hi in zip(edges, edges[1:], strict=False)
    ]


def coverage(reps: int, max_groups: int) -> tuple[float, float, float]:
    """Share of adaptive 95% NSR intervals that contain the exact NSR, its s.e., mean k."""
    from reference import mse, tiny_problem, truth

    from bscrit.stats.estimators import noise_stats
    from bscrit.stats.summary import set_sums

    model, ds = tiny_problem(64)
    b, n = 6, 64
    g, _, n_b = truth(model, ds, b)
    cover, ks = 0, 0
    for seed in range(reps):
        st = adaptive_plan(0.3, 2000, 32, 8, n, b)
        st.max_groups = max_groups
        raw = measure_model(model, ds, mse, batch_size=b, num_batches=32, groups=8, seed=seed,
                            hooks=adaptive_hooks(st, n, b, seed))  # fmt: skip
        lo, hi = noise_stats(set_sums(raw.tensors)).nsr_ci95
        cover += lo <= n_b / g <= hi
        ks += raw.num_batches
    p = cover / reps
    return p, math.sqrt(0.95 * 0.05 / reps), ks / reps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=4000, help="k of each run")
    ap.add_argument("--groups", type=int, default=10, help="m (the adaptive run starts 10 m)")
    ap.add_argument("--windows", type=int, default=5)
    ap.add_argument("--coverage", type=int, default=0, help="adaptive runs for the coverage")
    args = ap.parse_args()
    torch.set_num_threads(1)
    k = args.batches
    print(f"time per batch (ms) in {args.windows} windows of {k} batches, tiny model, CPU")
    header = " | ".join(f"{round(k * i / args.windows)}–{round(k * (i + 1) / args.windows)}"
                        for i in range(args.windows))  # fmt: skip
    print(f"| run | total s | {header} | last / first |")
    print("|---|---|" + "---|" * args.windows + "---|")
    for name, adaptive in (("fixed -k", False), ("adaptive (target never reached)", True)):
        marks = timed_run(k, adaptive, args.groups, seed=0)
        w = per_window(marks, k, args.windows)
        cells = " | ".join(f"{x:.3f}" for x in w)
        print(f"| {name} | {marks[-1][1]:.1f} | {cells} | {w[-1] / w[0]:.2f} |")
    if args.coverage:
        print(f"\ncoverage of the exact NSR by 95% intervals, {args.coverage} adaptive runs "
              "(target 0.3, 32 batches in 8 groups to start, 4 more per check)")  # fmt: skip
        print("| groups | coverage | ± s.e. | mean k |")
        print("|---|---|---|---|")
        for label, cap in (("grow to 32, then dealt (default)", 32), ("fixed m = 8", 8)):
            p, se, mk = coverage(args.coverage, cap)
            print(f"| {label} | {p:.3f} | {se:.3f} | {mk:.0f} |")


if __name__ == "__main__":
    main()
