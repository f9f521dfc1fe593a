"""Benchmark 2: peak memory of a measurement / that of a plain forward+backward loop.

Same model, same batches (in-memory tensors on the device), same process setup; m = 10 groups
(the default), so the group sums that bscrit keeps are those of a real run. The bscrit side
runs twice: with the m group sums in host memory (``sums: memory``) and spilled to a temporary
file (``sums: spilled``, ``host_memory=0``; bscrit.engine.groups.plan_sums), to show what the spill
saves. Each loop runs in a fresh child process.

- Host memory, both devices: the child's **peak resident set size** (Linux ``VmHWM``, reset with
  ``/proc/self/clear_refs`` after the model and data are built and one warm-up batch has run).
  Two figures: the peak RSS itself (includes the Python/torch runtime, the model and the data)
  and the increment over the RSS before the loop (the loop's own working memory). On CPU the
  host *is* the device, so the m group sums (m × parameter bytes) count here unless spilled.
- CUDA, in addition: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``:
  device memory held by tensors (model, data, activations, gradients, bscrit's running group
  sum). The m finished group sums live in pinned *host* memory (or the spill file), not on it.

Target (issue "Measurement speed and precision"): ratio <= 1 + 2 × parameter bytes / plain peak
(device memory; on CPU, the RSS).

``mlp100m`` is a ~102M-parameter model (four Linear layers on CIFAR-shaped inputs, torch only),
GPT-2-small sized: its group sums take 10 × 407 MB = 4 GB at m = 10.

Usage::

    python benchmarks/measure_memory.py                   # CPU (RSS-based, labelled)
    python benchmarks/measure_memory.py --device cuda     # device memory and host RSS
    python benchmarks/measure_memory.py --models mlp100m  # the 100M-parameter row only
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from measure_overhead import (  # noqa: E402
    MODELS,
    SIZES_CPU,
    SIZES_CUDA,
    bscrit_loop,
    make_data,
    param_bytes,
    plain_loop,
    sync,
)

from bscrit.engine.allocator import tune_cpu_allocator
from bscrit.engine.data import sample_batches
from bscrit.engine.loop import measure_model

GROUPS = 10
#: (side, estimator, where the group sums live) in the order they run.
SIDES = (
    ("plain", "", ""),
    ("batch", "batch", "memory"),
    ("batch-spill", "batch", "spilled"),
    ("per-example", "per-example", "memory"),
)


def make_mlp100m(num_classes: int = 10, seed: int = 0) -> nn.Module:
    """~102M parameters (GPT-2 small has 124M) in four Linear layers on CIFAR-shaped inputs."""
    torch.manual_seed(seed)
    width = 6400
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(3 * 32 * 32, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, num_classes),
    )


MEMORY_MODELS = {**MODELS, "mlp100m": make_mlp100m}
#: B per model; the 100M model runs few small batches (k = 2m = 20 of B = 4 on CPU).
BATCH = {"cpu": {**{k: v[0] for k, v in SIZES_CPU.items()}, "mlp100m": 4},
         "cuda": {**{k: v[0] for k, v in SIZES_CUDA.items()}, "mlp100m": 32}}  # fmt: skip
#: Sides skipped per model: train-mode BatchNorm refuses per-example; the 100M rows are about
#: where the group sums live.
SKIP = {"resnet18": {"per-example"}, "mlp100m": {"per-example"}}


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _setup(name: str, device: torch.device, threads: int | None):  # type: ignore[no-untyped-def]
    if threads:
        torch.set_num_threads(threads)
    b = BATCH[device.type][name]
    k = 2 * GROUPS
    model = MEMORY_MODELS[name]().to(device).train()
    data = make_data(max(2048, 4 * b), device)
    rows = sample_batches(len(data), b, k, seed=0)
    return model, data, rows


def _run(side: str, model: nn.Module, data, rows, device: torch.device) -> None:  # type: ignore[no-untyped-def]
    if side == "plain":
        plain_loop(model, data, rows, device)
    elif side == "batch-spill":  # host_memory=0: every group sum goes to the spill file
        measure_model(
            model, data, nn.functional.cross_entropy, batch_size=rows.shape[1], batch_rows=rows,
            groups=GROUPS, device=device, host_memory=0,
        )  # fmt: skip
        sync(device)
    else:
        bscrit_loop(model, data, rows, device, GROUPS, estimator=side)


def child(name: str, side: str, device_name: str, threads: int | None) -> dict[str, float]:
    """One measurement in this (fresh) process: peak RSS (and CUDA memory) during the loop."""
    device = torch.device(device_name)
    tune_cpu_allocator()  # as `bscrit measure` does on CPU (both loops alike)
    model, data, rows = _setup(name, device, threads)
    plain_loop(model, data, rows[:1], device)  # warm-up: allocator, kernels, lazy init
    cuda = device.type == "cuda"
    if cuda:
        sync(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    dev_base = torch.cuda.memory_allocated(device) if cuda else 0
    base = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    t0 = time.perf_counter()
    _run(side, model, data, rows, device)
    seconds = time.perf_counter() - t0
    peak = _status_kib("VmHWM")
    out = {"peak": peak * 1024.0, "base": base * 1024.0, "seconds": seconds}
    if cuda:
        out |= {"dev_peak": float(torch.cuda.max_memory_allocated(device)), "dev_base": dev_base}
    return out


def mib(x: float) -> str:
    return f"{x / 2**20:,.1f}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--models", default="small_cnn,resnet18,mlp100m")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--child", nargs=2, metavar=("MODEL", "SIDE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.device, args.threads)))
        return
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    what = "device memory (max_memory_allocated) and host peak RSS" if cuda else "CPU: peak RSS"
    print(f"# measure memory, {what} of fresh processes; m = {GROUPS} groups, k = {2 * GROUPS}")
    cols = ["model", "estimator", "sums", "B", "param MiB", "plain peak MiB", "bscrit peak MiB",
            "ratio", "target", "met", "plain Δ MiB", "bscrit Δ MiB", "Δ ratio",
            "loop s"]  # fmt: skip
    if cuda:
        cols += ["plain host peak MiB", "bscrit host peak MiB", "host ratio"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for name in args.models.split(","):
        res = {}
        for side, _, _ in SIDES:
            if side in SKIP.get(name, set()):
                continue
            cmd = [sys.executable, __file__, "--child", name, side, "--device", args.device,
                   "--threads", str(args.threads)]  # fmt: skip
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            res[side] = json.loads(out.strip().splitlines()[-1])
        pb = float(param_bytes(MEMORY_MODELS[name]()))
        b = BATCH[device.type][name]
        p = res["plain"]
        key, base = ("dev_peak", "dev_base") if cuda else ("peak", "base")
        target = 1.0 + 2.0 * pb / p[key]
        for side, estimator, sums in SIDES[1:]:
            if side not in res:
                continue
            r = res[side]
            ratio = r[key] / p[key]
            d_plain, d_ours = p[key] - p[base], r[key] - r[base]
            cells = [name, estimator, sums, str(b), mib(pb), mib(p[key]), mib(r[key]),
                     f"{ratio:.3f}", f"≤ {target:.3f}", "yes" if ratio <= target else "no",
                     mib(d_plain), mib(d_ours), f"{d_ours / max(d_plain, 1.0):.2f}",
                     f"{r['seconds']:.1f}"]  # fmt: skip
            if cuda:
                cells += [mib(p["peak"]), mib(r["peak"]), f"{r['peak'] / p['peak']:.3f}"]
            print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
