"""Benchmark: the free mode on the digits MLP, corrected vs plain formulas vs the truth.

The digits MLP (:mod:`bscrit.examples.digits`, n = 1500 training examples) is trained for
``--epochs`` epochs with SGD at B = 32 (η = 0.1, λ = 5e-4, the demo's base run). At the end, with
the weights frozen (lr = 0) and BatchNorm in eval mode (so that examples are independent and a
per-example gradient is defined), the exact G, T₁ and NSR^B at B = M·b come from all n
per-example gradients. Then ``--steps`` training steps of M micro-batches of b examples (random
reshuffling, one shuffle per epoch) are read by :class:`bscrit.engine.free_capture.FreeCapture`, and
the pooled estimate with the finite-population correction is compared with the plain
independent-batch forms (N̂ = s², Ĝ = ‖h̄‖² − s²/M) on the same steps.

Usage::

    python benchmarks/free_bias.py                  # 150 epochs, M = 4, b = 8, 400 steps
    python benchmarks/free_bias.py --epochs 30 --micro 4 --slices 8
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bscrit.engine.free_capture import FreeCapture
from bscrit.examples.digits.data import load_tensors
from bscrit.examples.digits.model import make_model
from bscrit.stats.free import FreeStep, plain_step_estimate, pool_steps


def truth(model: nn.Module, x: torch.Tensor, y: torch.Tensor, big_b: int) -> dict[str, float]:
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for i in range(len(x)):
        grads = torch.autograd.grad(F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]), params)
        rows.append(torch.cat([g.flatten() for g in grads]).double())
    per = torch.stack(rows)
    mu = per.mean(0)
    n = len(x)
    g = float(mu @ mu)
    t1 = float((per - mu).square().sum(1).mean())
    nb = t1 * (n - big_b) / (big_b * (n - 1))
    return {"G": g, "T1": t1, "N": nb, "NSR": nb / g, "B_simple": t1 / g}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=150)
    ap.add_argument("--micro", type=int, default=8, help="micro-batch size b")
    ap.add_argument("--slices", type=int, default=4, help="micro-batches per step M")
    ap.add_argument("--steps", type=int, default=400)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    x, y = load_tensors("train")
    n, b, m = len(x), args.micro, args.slices
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(0)
    for _ in range(args.epochs):  # the demo's base run, B = 32
        perm = torch.randperm(n, generator=gen)
        for s in range(n // 32):
            idx = perm[s * 32 : (s + 1) * 32]
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()  # frozen BatchNorm statistics: examples are independent
    t = truth(model, x, y, m * b)
    cap = FreeCapture(model, dataset_size=n)
    per_epoch = n // (m * b)
    step = 0
    while step < args.steps:
        perm = torch.randperm(n, generator=gen)
        for s in range(min(per_epoch, args.steps - step)):
            for j in range(m):
                idx = perm[(s * m + j) * b : (s * m + j + 1) * b]
                (F.cross_entropy(model(x[idx]), y[idx]) / m).backward()
            cap.on_step_end(b, step=step)
            model.zero_grad()
            step += 1
    steps, _ = cap.steps()
    est = pool_steps(steps, n)
    plain = [plain_step_estimate(s) for s in steps]
    g_plain = sum(p[0] for p in plain) / len(plain)
    n_plain = sum(p[1] for p in plain) / len(plain) / m  # s²/M: the plain N at B
    inf = pool_steps([FreeStep(s.sum_sq, s.mean_sq, s.slices, s.slice_size) for s in steps], None)
    print(
        f"digits MLP after {args.epochs} epochs (B = 32), frozen; n = {n}, M = {m} micro-batches "
        f"of b = {b} (B = {m * b}), {len(steps)} steps pooled"
    )
    print(f"truth: G = {t['G']:.4g}, T1 = {t['T1']:.4g}, B_simple = T1/G = {t['B_simple']:.0f}")
    print(f"{'':<22} {'G':>10} {'N^B':>10} {'NSR^B':>9} {'NSR 95% CI':>20} {'NSR/true':>9}")
    print(f"{'truth':<22} {t['G']:>10.4g} {t['N']:>10.4g} {t['NSR']:>9.3g}")
    lo, hi = est.nsr_ci95
    print(
        f"{'free, corrected':<22} {est.G.value:>10.4g} {est.N.value:>10.4g} {est.nsr:>9.3g} "
        f"{f'[{lo:.3g}, {hi:.3g}]':>20} {est.nsr / t['NSR']:>9.3g}"
    )
    nsr_plain = n_plain / g_plain if g_plain > 0 else float("inf")
    print(
        f"{'free, plain forms':<22} {g_plain:>10.4g} {n_plain:>10.4g} {nsr_plain:>9.3g} "
        f"{'':>20} {nsr_plain / t['NSR']:>9.3g}"
    )
    print(f"(plain = the n → ∞ forms; pool_steps with n = None gives NSR {inf.nsr:.3g})")


if __name__ == "__main__":
    main()
