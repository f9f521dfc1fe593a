"""Benchmark: free mode along real training trajectories, against the exact G, N at every step.

An MLP (64 → 32 tanh → 10, float64) is trained on the first n = 500 examples of the digits
training split (:mod:`bscrit.examples.digits`; a small set, so that the model fits it and the
simple noise scale T₁/G is a sizeable fraction of n, where the bias shows) with SGD and weight
decay, each step M micro-batches of b examples
(gradient accumulation, each micro-batch loss divided by M), read by
:class:`bscrit.engine.free_capture.FreeCapture` on the live run. At every step t of the measured
window the exact G(x_t) = ‖∇L(x_t)‖² and T₁(x_t) = (1/n) Σ_i ‖∇ℓ_i(x_t) − ∇L(x_t)‖² come from all
n per-example gradients (closed form for the two-layer net, checked against autograd at start).

Regimes:

- ``epochs``: multi-epoch, the data reshuffled each epoch (n // B steps per epoch), ``dataset_size
  = n``. The same trajectory is pooled two ways: every step (regime ``within_epoch``, what free
  mode did before) and each epoch's first step only (regime ``epoch_start``, free mode's default
  when the epochs are marked). Truth: the training set's N^B = T₁ (n − B)/(B (n − 1)).
- ``stream``: a single pass over a stream, every example drawn once, independently, from the
  distribution D = uniform on the n digits (with replacement), ``dataset_size=None``. Truth: D's
  G and N^B = T₁/B (an i.i.d. batch of B).

Truth of a pooled window S (the steps free mode pooled): the trajectory means
Ḡ = (1/|S|) Σ_{t∈S} G(x_t), N̄ = (1/|S|) Σ_{t∈S} N^B(x_t) and NSR = N̄/Ḡ, the quantities the
window's interval is for (docs/free.md "Regimes"). Coverage: the fraction of runs whose 95%
interval contains the truth, with its Wilson 95% interval.

Usage::

    python benchmarks/free_trajectory.py            # 36 runs per regime (~4 min), writes results
    python benchmarks/free_trajectory.py --quick    # smoke test: 2 runs, short, writes nothing
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bscrit.engine.free_capture import FreeCapture
from bscrit.examples.digits.data import load_tensors
from bscrit.stats.free import pool_steps

OUT = Path(__file__).resolve().parent / "free_trajectory_results"
CONFIGS = [(4, 16), (2, 32), (8, 8), (4, 8)]  # (M micro-batches, b examples each): B = M·b
LR, WD = 0.1, 5e-4


def make_mlp(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10)).double()


def exact(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(G, T₁) over all n examples: per-example gradients of the two-layer net in closed form."""
    w2 = model[2].weight
    with torch.no_grad():
        h = torch.tanh(model[0](x))
        e = F.softmax(model[2](h), dim=1)
        e[torch.arange(len(y)), y] -= 1.0  # dℓ_i/dlogits
        d = (e @ w2) * (1 - h * h)  # dℓ_i/dz1
        n = len(y)
        mean = [e.T @ h / n, e.mean(0), d.T @ x / n, d.mean(0)]
        g = float(sum(m.square().sum() for m in mean))
        sq = e.square().sum(1) * (h.square().sum(1) + 1) + d.square().sum(1) * (
            x.square().sum(1) + 1
        )
    return g, float(sq.mean()) - g


def check_exact(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor) -> None:
    params = list(model.parameters())
    rows = []
    for i in range(len(y)):
        gr = torch.autograd.grad(F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]), params)
        rows.append(torch.cat([t.flatten() for t in gr]))
    per = torch.stack(rows)
    mu = per.mean(0)
    g, t1 = exact(model, x, y)
    assert math.isclose(g, float(mu @ mu), rel_tol=1e-9), (g, float(mu @ mu))
    assert math.isclose(t1, float((per - mu).square().sum(1).mean()), rel_tol=1e-9)


def sgd_step(model, opt, x, y, idx, m: int, cap: FreeCapture | None, step: int) -> None:
    b = len(idx) // m
    for j in range(m):
        sl = idx[j * b : (j + 1) * b]
        (F.cross_entropy(model(x[sl]), y[sl]) / m).backward()
    if cap is not None:
        cap.on_step_end(b, step=step)
    opt.step()
    opt.zero_grad()


def run(x, y, regime: str, m: int, b: int, seed: int, burn: int, window: int) -> dict:
    """Train ``burn`` then ``window`` epochs (n // B steps each; a stream draws as many); the
    capture reads every window step and keeps the exact (G, T₁) of each."""
    n, big_b = len(y), m * b
    per_epoch = n // big_b
    model = make_mlp(seed)
    opt = torch.optim.SGD(model.parameters(), lr=LR, weight_decay=WD)
    gen = torch.Generator().manual_seed(1000 + seed)
    stream = regime == "stream"
    cap = None
    truth: dict[int, tuple[float, float]] = {}
    t = 0
    for epoch in range(burn + window):
        if epoch == burn:
            cap = FreeCapture(model, dataset_size=None if stream else n, within_epoch=True)
        perm = torch.randperm(n, generator=gen)
        if cap is not None and not stream:
            cap.epoch_begin()
        for k in range(per_epoch):
            if stream:
                idx = torch.randint(n, (big_b,), generator=gen)
            else:
                idx = perm[k * big_b : (k + 1) * big_b]
            if cap is not None:
                truth[t] = exact(model, x, y)
            sgd_step(model, opt, x, y, idx, m if cap is not None else 1, cap, t)
            t += 1
    assert cap is not None
    steps, _ = cap.steps()
    tau = 1 / (2 * LR * WD)
    pools = {"stream": "auto"} if stream else {"within_epoch": "all", "epoch_start": "auto"}
    out = {}
    for name, pool in pools.items():
        est = pool_steps(steps, None if stream else n, relaxation_steps=tau, pool=pool)
        assert est.regime == name
        used = [s.step for s in steps if pool == "all" or stream or s.epoch_start]
        g_true = statistics.fmean(truth[s][0] for s in used)
        t1_true = statistics.fmean(truth[s][1] for s in used)
        f = 1 / big_b if stream else (n - big_b) / (big_b * (n - 1))
        n_true = t1_true * f
        nsr_true = n_true / g_true
        lo, hi = est.nsr_ci95
        out[name] = {
            "config": [m, b],
            "seed": seed,
            "steps_pooled": est.steps,
            "covered_regime": est.covered,
            "G": est.G.value,
            "G_true": g_true,
            "N": est.N.value,
            "N_true": n_true,
            "nsr": est.nsr,
            "nsr_true": nsr_true,
            "nsr_ci95": [lo, hi if math.isfinite(hi) else None],
            "nsr_covers": lo <= nsr_true <= hi,
            "nsr_bounded": math.isfinite(hi),
            "G_covers": est.G.ci95[0] <= g_true <= est.G.ci95[1],
            "N_covers": est.N.ci95[0] <= n_true <= est.N.ci95[1],
        }
    return out


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score 95% interval of a proportion k/n."""
    p = k / n
    mid = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, mid - half), min(1.0, mid + half)


def summarise(rows: list[dict]) -> dict:
    k, n = sum(r["nsr_covers"] for r in rows), len(rows)
    lo, hi = wilson(k, n)
    med = statistics.median
    return {
        "runs": n,
        "nsr_coverage": k / n,
        "nsr_coverage_wilson95": [lo, hi],
        "nsr_bounded": sum(r["nsr_bounded"] for r in rows),
        "nsr_coverage_bounded": [
            sum(r["nsr_covers"] and r["nsr_bounded"] for r in rows),
            sum(r["nsr_bounded"] for r in rows),
        ],
        "G_coverage": sum(r["G_covers"] for r in rows) / n,
        "N_coverage": sum(r["N_covers"] for r in rows) / n,
        "median_N_ratio": med(r["N"] / r["N_true"] for r in rows),
        "median_G_ratio": med(r["G"] / r["G_true"] for r in rows),
        "median_nsr_ratio": med(r["nsr"] / r["nsr_true"] for r in rows),
        "N_above_truth": sum(r["N"] > r["N_true"] for r in rows),
        "steps_pooled_median": med(r["steps_pooled"] for r in rows),
        "covered_regime": rows[0]["covered_regime"],
    }


def table(summary: dict[str, dict]) -> str:
    head = (
        "| regime | runs | steps pooled | NSR coverage [Wilson 95%] | bounded: covered | G cov. "
        "| N cov. | N̂/N | Ĝ/G | NSR ratio | free mode says |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for name, s in summary.items():
        lo, hi = s["nsr_coverage_wilson95"]
        says = "covered" if s["covered_regime"] else "labelled NOT COVERED"
        lines.append(
            f"| {name} | {s['runs']} | {s['steps_pooled_median']:.0f} | "
            f"{s['nsr_coverage']:.0%} [{lo:.0%}, {hi:.0%}] | "
            f"{s['nsr_coverage_bounded'][1]}: {s['nsr_coverage_bounded'][0]} | "
            f"{s['G_coverage']:.0%} | {s['N_coverage']:.0%} | {s['median_N_ratio']:.3f} | "
            f"{s['median_G_ratio']:.3f} | {s['median_nsr_ratio']:.3f} | {says} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=9, help="seeds per (M, b) configuration")
    ap.add_argument("--n", type=int, default=500, help="training examples (digits train split)")
    ap.add_argument("--burn", type=int, default=40, help="epochs before the window")
    ap.add_argument("--window", type=int, default=40, help="epochs in the measured window")
    ap.add_argument("--stream-window", type=int, default=20, help="the stream's window (epochs)")
    ap.add_argument("--quick", action="store_true", help="smoke test: tiny, writes nothing")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    x, y = load_tensors("train")
    x, y = x[: args.n].double(), y[: args.n]
    check_exact(make_mlp(0), x[:50], y[:50])
    seeds, burn, configs = args.seeds, args.burn, CONFIGS
    windows = {"epochs": args.window, "stream": args.stream_window}
    if args.quick:
        seeds, burn, windows, configs = 1, 2, {"epochs": 3, "stream": 3}, CONFIGS[:2]
    t0 = time.perf_counter()
    rows: dict[str, list[dict]] = {"within_epoch": [], "epoch_start": [], "stream": []}
    for c, (m, b) in enumerate(configs):
        for seed in range(100 * c, 100 * c + seeds):  # every run its own trajectory
            for regime in ("epochs", "stream"):
                for name, r in run(x, y, regime, m, b, seed, burn, windows[regime]).items():
                    rows[name].append(r)
    summary = {k: summarise(v) for k, v in rows.items()}
    md = table(summary)
    print(
        f"digits MLP, n = {len(y)}, SGD η = {LR}, λ = {WD}, (M, b) in {configs}, "
        f"{seeds} seeds each; {burn} epochs, then a window of {windows['epochs']} epochs "
        f"({windows['stream']} for the stream) "
        f"({time.perf_counter() - t0:.0f} s)"
    )
    print(md)
    if args.quick:
        return
    OUT.mkdir(exist_ok=True)
    meta = {
        "command": "python benchmarks/free_trajectory.py",
        "n": len(y),
        "lr": LR,
        "weight_decay": WD,
        "configs": configs,
        "seeds": seeds,
        "burn_epochs": burn,
        "window_epochs": windows,
    }
    (OUT / "results.json").write_text(
        json.dumps({"meta": meta, "summary": summary, "runs": rows}, indent=1) + "\n"
    )
    (OUT / "results.md").write_text(
        f"`{meta['command']}` ({len(y)} digits, SGD η = {LR}, λ = {WD}, (M, b) in "
        f"{configs}, {seeds} seeds each, {burn} epochs then a window of {windows['epochs']} "
        f"epochs, {windows['stream']} for the stream)\n\n{md}\n"
    )


if __name__ == "__main__":
    main()
