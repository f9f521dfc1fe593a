"""What a bscrit callback costs: training time with ``BscritCallback`` against the same run
without it, in the same process.

The run: a Lightning MLP (64 → 128 → 128 → 10, BatchNorm, dropout) on 2,048 synthetic
digits-like examples, B = 32, AdamW, CPU, one thread. Each row trains the same ``--steps``
steps from the same seed; the baseline runs first and last (its spread is the noise of the
table). The overhead of the every-n mode is, to first order, k batch gradients every n steps:
k/n × (a forward+backward) / (a training step), so with the default k = max(200, ⌈n/B⌉) it
stays small only when n ≫ k (or with a smaller ``num_batches``). ``mode="free"`` (the step's
own micro-batch gradients, no extra pass) has a row that reads "n/a" until bscrit has it.

Columns: milliseconds per training step, ratio to the baseline, overhead fraction (ratio − 1),
measurements made, seconds per measurement and their sum over the baseline's training time
(both from ``series.jsonl``: the part of the overhead that is bscrit's own work, less noisy
than wall-time differences on a shared machine).

Usage::

    python benchmarks/callback_overhead.py                  # ~1-2 minutes on a busy core
    python benchmarks/callback_overhead.py --steps 2000 --every 100 500 1000
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

warnings.filterwarnings("ignore")


def data(n: int = 2048) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 64, generator=g)
    y = (x @ torch.randn(64, 10, generator=g) + 0.5 * torch.randn(n, 10, generator=g)).argmax(1)
    return TensorDataset(x, y)


def run(steps: int, callback, batch_size: int) -> float:
    """Seconds of ``trainer.fit`` for ``steps`` optimizer steps."""
    import lightning as L

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(
                nn.Linear(64, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Dropout(0.1),
                nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10),
            )  # fmt: skip

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-3, weight_decay=0.01)

    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        callbacks=[callback] if callback is not None else [],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    loader = DataLoader(data(), batch_size=batch_size, shuffle=True)
    t0 = time.perf_counter()
    trainer.fit(Module(), loader)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--every", type=int, nargs="+", default=[250, 500, 1000])
    ap.add_argument("--num-batches", type=int, nargs="+", default=[200, 50])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3, help="runs of each row (the fastest kept)")
    args = ap.parse_args()
    if importlib.util.find_spec("lightning") is None:
        sys.exit("needs Lightning: pip install 'bscrit[lightning]'")
    from bscrit.integrations.lightning import BscritCallback
    from bscrit.integrations.recorder import read_series

    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    steps, b = args.steps, args.batch_size
    run(20, None, b)  # warm-up: imports, allocator, first Trainer
    configs = [(k, n) for k in args.num_batches for n in args.every]
    base: list[float] = []
    idle: list[float] = []  # the callback's hooks alone: every_n_steps past the run's end
    times: dict[tuple[int, int], list[float]] = {c: [] for c in configs}
    spent: dict[tuple[int, int], tuple[int, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):  # interleaved: a busy machine slows every row alike
            base.append(run(steps, None, b))
            idle.append(run(steps, BscritCallback(Path(tmp) / "idle", every_n_steps=steps + 1), b))
            for k, n in configs:
                out = Path(tmp) / f"k{k}-n{n}-{r}"
                cb = BscritCallback(out, every_n_steps=n, num_batches=k, groups=10)
                times[(k, n)].append(run(steps, cb, b))
                series = read_series(out / "series.jsonl")
                total = sum(row["seconds"] for row in series)
                if (k, n) not in spent or total < spent[(k, n)][1]:
                    spent[(k, n)] = (len(series), total)
    t_base = min(base)
    print(
        f"{steps} steps of B = {b}, {args.repeats} runs per row (fastest kept); baseline "
        f"{t_base / steps * 1e3:.2f} ms/step (runs: {', '.join(f'{t:.2f}' for t in base)} s)"
    )
    head = (
        f"{'mode':<28}{'ms/step':>9}{'ratio':>8}{'overhead':>10}{'points':>8}{'s/point':>9}"
        f"{'measured/base':>15}"
    )
    print(head)
    print("-" * len(head))
    print(f"{'none (baseline)':<28}{t_base / steps * 1e3:>9.2f}{1.0:>8.3f}{0.0:>10.1%}")
    t_idle = min(idle)
    print(
        f"{'hooks only (no point)':<28}{t_idle / steps * 1e3:>9.2f}{t_idle / t_base:>8.3f}"
        f"{t_idle / t_base - 1:>10.1%}{0:>8}"
    )
    for k, n in configs:
        t = min(times[(k, n)])
        count, total = spent[(k, n)]
        ratio = t / t_base
        print(
            f"{f'every_n, k = {k}, n = {n}':<28}{t / steps * 1e3:>9.2f}{ratio:>8.3f}"
            f"{ratio - 1:>10.1%}{count:>8}{total / max(count, 1):>9.2f}{total / t_base:>15.1%}"
        )
    free = importlib.util.find_spec("bscrit.free_capture") is not None
    note = "n/a (not wired into the callback yet)" if free else "n/a (no bscrit.free_capture)"
    print(f"{'free':<28}{note}")
    print(
        "overhead = wall time with the callback / without - 1; measured/base = the seconds "
        "the measurements took (series.jsonl) / the baseline's training time"
    )


if __name__ == "__main__":
    main()
