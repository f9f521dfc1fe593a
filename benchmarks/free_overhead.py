"""Benchmark: the free mode's overhead on a gradient-accumulation training loop.

One training loop (SGD with momentum, M micro-batches of b examples per step, gradient clipping,
``zero_grad``) runs with and without :class:`bscrit.engine.free_capture.FreeCapture`; the capture
variants are the default (``boundaries="hooks"``: the micro-batch ends are found inside
``backward()``) and ``"manual"`` (``on_backward_end()`` after each backward). Every variant
starts from the same weights and sees the same batches; runs are interleaved (plain, hooks,
manual, plain, ...) and repeated, and the table reports medians of the time per step, so that
load from other processes hits all sides alike. The capture's time includes one
``estimate()`` per window of ``--every`` steps (its pooling, the drift, a host copy of the weights
at the window's start).

Usage::

    python benchmarks/free_overhead.py                        # CPU: small CNN and ResNet-18
    python benchmarks/free_overhead.py --device cuda
    python benchmarks/free_overhead.py --models small_cnn --repeats 7 --steps 20

Target (issue 16, "Free where the run already has the samples"): overhead < 1% of step time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from measure_overhead import MODELS, make_data, param_bytes, sync  # noqa: E402

from bscrit.engine.free_capture import FreeCapture

#: (micro-batch b, micro-batches M, steps per timed run) on CPU (2 cores here) and on CUDA.
SIZES = {"cpu": (16, 4, 8), "cuda": (64, 4, 40)}


def _timed(fn, spent: list[float], device: torch.device):  # noqa: ANN001, ANN202
    """``fn`` that adds its own wall time (device synchronised) to ``spent[0]``."""

    def wrapper(*a, **k):  # noqa: ANN002, ANN003, ANN202
        sync(device)
        t0 = time.perf_counter()
        out = fn(*a, **k)
        sync(device)
        spent[0] += time.perf_counter() - t0
        return out

    return wrapper


def train(
    model: nn.Module,
    data: torch.utils.data.TensorDataset,
    rows: torch.Tensor,
    device: torch.device,
    capture: str | None,
    every: int,
    inside: bool = False,
) -> tuple[float, float, float]:
    """Seconds per optimizer step; ``rows`` (steps, M, b) holds the example indices. With
    ``inside`` also the seconds per step spent reading (the capture's per-micro-batch and
    per-step calls) and per window in ``estimate()``."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x_all, y_all = data.tensors
    m, b = rows.shape[1], rows.shape[2]
    cap = None
    if capture is not None:
        cap = FreeCapture(model, dataset_size=len(x_all), boundaries=capture)  # type: ignore[arg-type]
    spent, spent_est = [0.0], [0.0]
    windows = max(1, len(rows) // every)
    if cap is not None and inside:
        cap._read_micro_batch = _timed(cap._read_micro_batch, spent, device)  # type: ignore[method-assign]
        cap.on_step_end = _timed(cap.on_step_end, spent, device)  # type: ignore[method-assign]
        cap.estimate = _timed(cap.estimate, spent_est, device)  # type: ignore[method-assign]
    sync(device)
    t0 = time.perf_counter()
    for t, step_rows in enumerate(rows):
        for row in step_rows:
            idx = row.to(device)
            loss = nn.functional.cross_entropy(model(x_all[idx]), y_all[idx])
            (loss / m).backward()
            if cap is not None and capture == "manual":
                cap.on_backward_end()
        if cap is not None:
            cap.on_step_end(b, step=t)
            if cap.steps_recorded >= every:
                cap.estimate(reset=True)
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync(device)
    elapsed = time.perf_counter() - t0
    if cap is not None:
        cap.close()
    return elapsed / len(rows), spent[0] / len(rows), spent_est[0] / windows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--models", default="small_cnn,resnet18")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps per timed run")
    ap.add_argument("--every", type=int, default=8, help="steps per estimate() window")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)
    b, m, steps = SIZES["cuda" if device.type == "cuda" else "cpu"]
    steps = args.steps or steps
    n = 4096
    data = make_data(n, device)
    g = torch.Generator().manual_seed(0)
    rows = torch.randperm(n, generator=g)[: steps * m * b].reshape(steps, m, b)
    print(f"device {device}, micro-batch b = {b}, M = {m}, {steps} steps per run, ")
    print(f"estimate() every {args.every} steps, medians of {args.repeats} interleaved runs")
    print(
        f"{'model':<10} {'params':>8} {'plain ms':>9} {'hooks':>7} {'manual':>7} "
        f"{'reading':>8} {'estimate':>9}"
    )
    for name in args.models.split(","):
        base = MODELS[name]().to(device)
        state = {k: v.clone() for k, v in base.state_dict().items()}
        times: dict[str | None, list[float]] = {None: [], "hooks": [], "manual": []}
        reading: list[float] = []
        estimating: list[float] = []
        variants: list[str | None] = [None, "hooks", "manual"]
        for r in range(args.repeats + 1):
            for variant in variants[r % 3 :] + variants[: r % 3]:  # rotate the order
                base.load_state_dict(state)
                s, _, _ = train(base, data, rows, device, variant, args.every)
                if r > 0:  # the first round warms up
                    times[variant].append(s)
            base.load_state_dict(state)
            _, read, est = train(base, data, rows, device, "hooks", args.every, inside=True)
            reading.append(read)
            estimating.append(est)
        plain = statistics.median(times[None])
        hooks = statistics.median(times["hooks"]) / plain
        manual = statistics.median(times["manual"]) / plain
        own = statistics.median(reading) / plain
        est = statistics.median(estimating) / plain
        mib = param_bytes(base) / 2**20
        print(
            f"{name:<10} {mib:>6.1f}Mi {plain * 1e3:>9.1f} {hooks:>7.3f} {manual:>7.3f} "
            f"{own:>8.4f} {est:>9.3f}",
            flush=True,
        )
    print("hooks / manual: time per step with FreeCapture over the plain loop (1.000 = free);")
    print("reading: time per step inside the capture's per-micro-batch and per-step calls, over")
    print("the plain step; estimate: one estimate() per window (pooling, drift), in plain steps.")
    print("Device memory added: one buffer the size of the trainable parameters (params column).")


if __name__ == "__main__":
    main()
