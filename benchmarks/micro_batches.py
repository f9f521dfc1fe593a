"""Benchmark: what ``micro_batch_size`` changes in a measurement (the numbers: nothing; the time).

A tiny GPT-2 (transformers, random init, no dropout) on padded dict examples (``input_ids``,
``attention_mask``, ``labels`` with −100 on the padding), ``loss: model``, B = 32: the same k
batches (same seed) measured in one pass per batch and in micro-batches of 16, 8 and 4. G and N
must agree up to float rounding (the chunks are weighted by their token counts); the time per
batch grows with the number of passes, by how much depends on how well one pass of B fills the
device. Rows: relative differences of G and N to the one-pass run, and the time as a ratio to it.

Usage::

    python benchmarks/micro_batches.py                       # ~1 minute on one CPU core
    python benchmarks/micro_batches.py --device cuda --n-embd 256 --n-layer 4 --batch-size 64
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "assets"))

from lm import make_gpt2, make_tokens  # noqa: E402

from bscrit.engine.loop import measure_model  # noqa: E402
from bscrit.engine.objective import ModelLoss  # noqa: E402
from bscrit.stats.summary import param_set_stats  # noqa: E402


def run(model, ds, args, micro: int | None) -> tuple[float, float, float]:
    """(G, N, seconds per batch) of one measurement."""
    t0 = time.perf_counter()
    raw = measure_model(
        model, ds, ModelLoss(), batch_size=args.batch_size, num_batches=args.batches,
        groups=args.groups, seed=0, device=args.device, micro_batch_size=micro,
    )  # fmt: skip
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    s = param_set_stats(raw.tensors)
    return s.G, s.N, (time.perf_counter() - t0) / args.batches


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--micro", default="16,8,4", help="micro-batch sizes to compare")
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--groups", type=int, default=4)
    ap.add_argument("--n", type=int, default=512, help="examples in the dataset")
    ap.add_argument("--length", type=int, default=32, help="tokens per example (padded)")
    ap.add_argument("--n-embd", type=int, default=16)
    ap.add_argument("--n-layer", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = make_gpt2(n_embd=args.n_embd, n_layer=args.n_layer, n_positions=args.length)
    model.to(args.device)
    ds = make_tokens(args.n, args.length, min_len=2)
    params = sum(p.numel() for p in model.parameters())
    print(f"GPT-2 {params:,} parameters, B = {args.batch_size}, k = {args.batches}, "
          f"m = {args.groups}, {args.length} tokens (padded), device {args.device}")  # fmt: skip
    run(model, ds, args, None)  # warm-up
    g0, n0, t0 = run(model, ds, args, None)
    print(f"{'micro_batch_size':>16} {'G':>12} {'N':>12} {'|ΔG|/G':>10} {'|ΔN|/N':>10} "
          f"{'time/batch':>11} {'ratio':>6}")  # fmt: skip
    print(f"{'none':>16} {g0:12.6g} {n0:12.6g} {'':>10} {'':>10} {t0 * 1e3:9.2f}ms {1:6.2f}")
    for micro in (int(x) for x in args.micro.split(",")):
        g, n, t = run(model, ds, args, micro)
        print(f"{micro:>16} {g:12.6g} {n:12.6g} {abs(g - g0) / abs(g0):10.2e} "
              f"{abs(n - n0) / n0:10.2e} {t * 1e3:9.2f}ms {t / t0:6.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
