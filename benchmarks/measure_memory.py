"""Benchmark 2: peak memory of a measurement / that of a plain forward+backward loop.

Same model, same batches (in-memory tensors on the device), same process setup; m = 10 groups
(the default), so the group sums that bscrit keeps are those of a real run.

- CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, in one process:
  device memory held by tensors (model, data, activations, gradients, bscrit's running group sum).
  bscrit's m finished group sums live in pinned *host* memory and are not device memory.
- CPU: there is no device allocator to ask, so each loop runs in a fresh child process and the
  figure is its **peak resident set size** (Linux ``VmHWM``, reset with ``/proc/self/clear_refs``
  after the model and data are built and one warm-up batch has run). Two figures are printed:
  the peak RSS itself (includes the Python/torch runtime, the model and the data) and the
  increment over the RSS before the loop (the loop's own working memory). On CPU the host *is*
  the device, so bscrit's m group sums (m × parameter bytes, float32) count here by design.

Target (issue "Measurement speed and precision"): ratio <= 1 + 2 × parameter bytes / plain peak.

Usage::

    python benchmarks/measure_memory.py                   # CPU (RSS-based, labelled)
    python benchmarks/measure_memory.py --device cuda     # device memory
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
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

from bscrit.allocator import tune_cpu_allocator  # noqa: E402
from bscrit.data import sample_batches  # noqa: E402

GROUPS = 10
SIDES = ("plain", "batch", "per-example")


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _setup(name: str, device: torch.device, threads: int | None):  # type: ignore[no-untyped-def]
    if threads:
        torch.set_num_threads(threads)
    b, _, _ = (SIZES_CUDA if device.type == "cuda" else SIZES_CPU)[name]
    k = 2 * GROUPS
    model = MODELS[name]().to(device).train()
    data = make_data(max(2048, 4 * b), device)
    rows = sample_batches(len(data), b, k, seed=0)
    return model, data, rows


def _run(side: str, model: nn.Module, data, rows, device: torch.device) -> None:  # type: ignore[no-untyped-def]
    if side == "plain":
        plain_loop(model, data, rows, device)
    else:
        bscrit_loop(model, data, rows, device, GROUPS, estimator=side)


def child(name: str, side: str, threads: int | None) -> dict[str, float]:
    """One CPU measurement in this (fresh) process: peak RSS during the loop, in bytes."""
    device = torch.device("cpu")
    tune_cpu_allocator()  # as `bscrit measure` does on CPU (both loops alike)
    model, data, rows = _setup(name, device, threads)
    plain_loop(model, data, rows[:1], device)  # warm-up: allocator, kernels, lazy init
    base = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    _run(side, model, data, rows, device)
    peak = _status_kib("VmHWM")
    return {"peak": peak * 1024.0, "base": base * 1024.0, "params": float(param_bytes(model))}


def cuda_side(name: str, side: str, device: torch.device) -> dict[str, float]:
    model, data, rows = _setup(name, device, None)
    plain_loop(model, data, rows[:1], device)
    sync(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    _run(side, model, data, rows, device)
    sync(device)
    peak = torch.cuda.max_memory_allocated(device)
    del model, data
    torch.cuda.empty_cache()
    return {"peak": float(peak), "base": float(base), "params": 0.0}


def mib(x: float) -> str:
    return f"{x / 2**20:.1f}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--models", default="small_cnn,resnet18")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--child", nargs=2, metavar=("MODEL", "SIDE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.threads)))
        return
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    what = "device memory (max_memory_allocated)" if cuda else "CPU: peak RSS of a fresh process"
    print(f"# measure memory, {what}; m = {GROUPS} groups, k = {2 * GROUPS} batches")
    print(
        "| model | estimator | B | param MiB | plain peak MiB | bscrit peak MiB | ratio | target "
        "| met | plain loop Δ MiB | bscrit Δ MiB | Δ ratio |"
    )
    print("|" + "---|" * 12)
    for name in args.models.split(","):
        res = {}
        for side in SIDES:
            if side == "per-example" and name == "resnet18":
                continue  # train-mode BatchNorm: refused by design
            if cuda:
                r = cuda_side(name, side, device)
            else:
                cmd = [
                    sys.executable,
                    __file__,
                    "--child",
                    name,
                    side,
                    "--threads",
                    str(args.threads),
                ]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                r = json.loads(out.strip().splitlines()[-1])
            res[side] = r
        pb = float(param_bytes(MODELS[name]()))
        b = (SIZES_CUDA if cuda else SIZES_CPU)[name][0]
        p = res["plain"]
        target = 1.0 + 2.0 * pb / p["peak"]
        for side in SIDES[1:]:
            if side not in res:
                continue
            r = res[side]
            ratio = r["peak"] / p["peak"]
            d_plain, d_ours = p["peak"] - p["base"], r["peak"] - r["base"]
            print(
                f"| {name} | {side} | {b} | {mib(pb)} | {mib(p['peak'])} | {mib(r['peak'])} | "
                f"{ratio:.3f} | ≤ {target:.3f} | {'yes' if ratio <= target else 'no'} | "
                f"{mib(d_plain)} | {mib(d_ours)} | {d_ours / d_plain:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
