"""Benchmark 3: precision per second of the estimator modes (batch, per-example, adaptive).

At one checkpoint (the small CNN of ``measure_overhead.py`` after a short SGD run on a synthetic
CIFAR-shaped task, so that the gradient has signal and noise like a real checkpoint), each mode is
run for several budgets; for each run the table gives the wall-clock time, the number of batches
and the relative half-width of the 95% interval of NSR and of B* = C²·B·(1 + NSR) [LMA21 Thm
5.6], ``(hi − lo) / 2 / value``. Interval half-widths shrink like 1/sqrt(time), so the last
column, ``time × (half-width / 0.1)²``, is the extrapolated time to ±10% on NSR: the lower, the
more precision per second. Medians over ``--seeds`` runs.

- ``batch``: the default estimator, k fixed.
- ``per-example``: the same batches plus per-example gradient norms (T₁, and N^B from T₁).
- ``adaptive``: the batch estimator with ``--target-rel-error ε`` (groups added until the NSR's
  95% half-width is below ε·NSR); the row reports the ε asked for and the k it took.

Usage::

    python benchmarks/precision.py                  # CPU, ~3 minutes on 2 busy cores
    python benchmarks/precision.py --device cuda
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from measure_overhead import make_data, make_small_cnn  # noqa: E402

from bscrit.engine.adaptive import adaptive_hooks, adaptive_plan
from bscrit.engine.allocator import tune_cpu_allocator
from bscrit.engine.loop import measure_model
from bscrit.engine.per_example import measure_per_example
from bscrit.stats.estimators import noise_stats, per_example_stats
from bscrit.stats.summary import set_sums

C2 = 2.0
GROUPS = 10


def checkpoint(device: torch.device, n: int, b: int, steps: int) -> tuple[nn.Module, object]:
    """The small CNN after ``steps`` of SGD (lr 0.05, momentum 0.9) on the synthetic task.

    Labels from softmax(teacher logits / 2): a learnable task, so that after ~60 steps NSR at
    B = 32 is about 10 (a regime where 100-ish batches bound it; at NSR ~ 100 they do not).
    """
    data = make_data(n, device, seed=1, temperature=2.0)
    model = make_small_cnn(seed=1).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    x_all, y_all = data.tensors
    for _ in range(steps):
        idx = torch.randint(0, n, (b,), generator=gen).to(device)
        loss = nn.functional.cross_entropy(model(x_all[idx]), y_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model, data


def rel_widths(nsr: float, ci: tuple[float, float]) -> tuple[float, float]:
    """Relative 95% half-widths of NSR and of B* = C²B(1 + NSR) (monotone in NSR)."""
    lo, hi = ci
    if not (math.isfinite(nsr) and math.isfinite(hi)) or nsr <= 0:
        return math.inf, math.inf
    return (hi - lo) / 2 / nsr, (hi - lo) / 2 / (1 + nsr)


def run(
    mode: str,
    budget: float,
    model: nn.Module,
    data: object,
    b: int,
    seed: int,
    device: torch.device,
) -> dict[str, float]:
    n = len(data)  # type: ignore[arg-type]
    ce = nn.functional.cross_entropy
    kw = dict(batch_size=b, groups=GROUPS, seed=seed, device=device)
    t0 = time.perf_counter()
    extra = {}
    if mode == "batch":
        raw = measure_model(model, data, ce, num_batches=int(budget), **kw)
        s = noise_stats(set_sums(raw.tensors))
        nsr, ci, nn_ = s.nsr, s.nsr_ci95, s.N
    elif mode == "per-example":
        raw, pe = measure_per_example(model, data, ce, num_batches=int(budget), **kw)
        ps = per_example_stats(set_sums(raw.tensors), pe.set_c(range(len(raw.tensors))), n, b)
        nsr, ci, nn_ = ps.noise.nsr, ps.noise.nsr_ci95, ps.noise.N
    else:
        st = adaptive_plan(budget, 4000, None, GROUPS, n, b)
        assert st is not None
        hooks = adaptive_hooks(st, n, b, seed)
        raw = measure_model(model, data, ce, num_batches=st.start, hooks=hooks, **kw)
        s = noise_stats(set_sums(raw.tensors))
        nsr, ci, nn_ = s.nsr, s.nsr_ci95, s.N
        extra["stop"] = 1.0 if st.reason == "target reached" else 0.0
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - t0
    w_nsr, w_b = rel_widths(nsr, ci)
    w_n = (nn_.ci95[1] - nn_.ci95[0]) / 2 / nn_.value
    return {
        "t": elapsed,
        "k": raw.num_batches,
        "nsr": nsr,
        "w_nsr": w_nsr,
        "w_b": w_b,
        "w_n": w_n,
        **extra,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--train-steps", type=int, default=60)
    ap.add_argument("--budgets", default="40,80,160", help="k for the batch / per-example modes")
    ap.add_argument("--targets", default="0.3,0.2", help="ε for the adaptive mode")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cpu":
        tune_cpu_allocator()  # as `bscrit measure` does
    b = args.batch_size
    model, data = checkpoint(device, args.n, b, args.train_steps)
    print(
        f"# precision per second: small CNN after {args.train_steps} SGD steps, n = {args.n}, "
        f"B = {b}, m = {GROUPS} groups, {device} ({torch.get_num_threads()} threads); "
        f"medians over {args.seeds} seeds"
    )
    print(
        "| mode | k asked / ε | k used | seconds | NSR | NSR ±rel (95%) | B* ±rel (95%) "
        "| N (and T1) ±rel | s to ±10% NSR | s to ±10% N |"
    )
    print("|" + "---|" * 10)
    plan = [("batch", float(k)) for k in args.budgets.split(",")]
    plan += [("per-example", float(k)) for k in args.budgets.split(",")]
    plan += [("adaptive", float(e)) for e in args.targets.split(",")]
    for mode, budget in plan:
        rs = [run(mode, budget, model, data, b, seed, device) for seed in range(args.seeds)]

        def med(key: str, rs: list[dict[str, float]] = rs) -> float:
            return statistics.median(r[key] for r in rs)

        t, w = med("t"), med("w_nsr")
        asked = f"ε = {budget:g}" if mode == "adaptive" else f"{int(budget)}"
        if mode == "adaptive":
            reached = sum(r["stop"] for r in rs)
            asked += f" ({int(reached)}/{len(rs)} reached)"
        print(
            f"| {mode} | {asked} | {med('k'):.0f} | {t:.1f} | {med('nsr'):.3g} | {w:.3f} | "
            f"{med('w_b'):.3f} | {med('w_n'):.3f} | {t * (w / 0.1) ** 2:.3g} | "
            f"{t * (med('w_n') / 0.1) ** 2:.2g} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
