"""Benchmark 1: time per batch of ``bscrit measure`` / a plain forward+backward loop.

Both loops see the same model, the same batches (the same k × B index rows into the same
in-memory tensors on the device) and the same train/eval mode, in the same process; runs are
interleaved (plain, bscrit, bscrit, plain, ...) and repeated, and the table reports medians, so
that load from other processes hits both sides alike. The bscrit side is the whole
:func:`bscrit.engine.loop.measure_model` call (setup, the Gram matrices at the end, restoring the
buffers), divided by k.

The plain loop is what a user pays anyway: ``loss = loss_fn(model(x), y); loss.backward()`` with
``.grad`` set to None between batches (a training step without the optimizer).

Usage::

    python benchmarks/measure_overhead.py                       # CPU: small CNN and ResNet-18
    python benchmarks/measure_overhead.py --device cuda         # + bf16 / torch.compile variants
    python benchmarks/measure_overhead.py --models small_cnn --repeats 7

Targets (issue "Measurement speed and precision"): ratio <= 1.10 on CPU, <= 1.05 on GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bscrit.engine.allocator import tune_cpu_allocator
from bscrit.engine.data import sample_batches
from bscrit.engine.loop import measure_model

# ----------------------------------------------------------------------------------------------
# Models and data (shared with measure_memory.py and precision.py)
# ----------------------------------------------------------------------------------------------


def make_small_cnn(num_classes: int = 10, seed: int = 0) -> nn.Module:
    """A small CIFAR-sized CNN without BatchNorm (so the per-example estimator applies): 0.32M."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 4 * 4, 256),
        nn.ReLU(inplace=True),
        nn.Linear(256, num_classes),
    )


def make_resnet18(num_classes: int = 10, seed: int = 0) -> nn.Module:
    """torchvision ResNet-18 (11.2M parameters, train-mode BatchNorm) on 32×32 inputs."""
    import torchvision

    torch.manual_seed(seed)
    return torchvision.models.resnet18(num_classes=num_classes)


MODELS: dict[str, Callable[[], nn.Module]] = {
    "small_cnn": make_small_cnn,
    "resnet18": make_resnet18,
}

#: (batch size B, batches k, groups m) per model on CPU (2 cores here) and on CUDA.
SIZES_CPU = {"small_cnn": (32, 100, 5), "resnet18": (32, 60, 6)}
SIZES_CUDA = {"small_cnn": (128, 400, 10), "resnet18": (128, 200, 10)}


def make_data(
    n: int, device: torch.device, seed: int = 0, temperature: float = 55.0
) -> TensorDataset:
    """CIFAR-shaped inputs with labels from a fixed random linear teacher (learnable signal).

    Labels are drawn from softmax(teacher logits / temperature): lower is less label noise.
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 32, 32, generator=g)
    teacher = torch.randn(3 * 32 * 32, 10, generator=g)
    logits = x.reshape(n, -1) @ teacher / temperature
    y = torch.multinomial(torch.softmax(logits, dim=1), 1, generator=g).squeeze(1)
    return TensorDataset(x.to(device), y.to(device))


def param_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------------------------
# The two loops
# ----------------------------------------------------------------------------------------------


def plain_loop(
    model: nn.Module,
    data: TensorDataset,
    rows: Tensor,
    device: torch.device,
    amp: str | None = None,
    compiled: nn.Module | None = None,
) -> None:
    """The baseline: forward + backward over the same batches, ``.grad`` set to None between."""
    x_all, y_all = data.tensors
    fwd = compiled if compiled is not None else model
    ctx = (
        torch.autocast("cuda", dtype=torch.bfloat16) if amp == "bf16" else contextlib.nullcontext()
    )
    for row in rows:
        idx = row.to(device)
        x, y = x_all[idx], y_all[idx]
        with ctx:
            loss = nn.functional.cross_entropy(fwd(x), y)
        loss.backward()
        model.zero_grad(set_to_none=True)
    sync(device)


def bscrit_loop(
    model: nn.Module,
    data: TensorDataset,
    rows: Tensor,
    device: torch.device,
    groups: int,
    amp: str | None = None,
    compile: bool = False,
    estimator: str = "batch",
) -> None:
    """``bscrit measure``'s engine on the same rows (batch or per-example estimator)."""
    kw = dict(batch_rows=rows, groups=groups, device=device, amp=amp)
    if compile:
        kw["compile"] = True
    if estimator == "per-example":
        from bscrit.engine.per_example import measure_per_example

        measure_per_example(
            model, data, nn.functional.cross_entropy, batch_size=rows.shape[1], **kw
        )
    else:
        measure_model(model, data, nn.functional.cross_entropy, batch_size=rows.shape[1], **kw)
    sync(device)


@dataclass
class Row:
    model: str
    variant: str
    batch_size: int
    k: int
    plain_ms: float
    bscrit_ms: float
    ratio: float  # wall-clock, median over repeats
    ratio_spread: tuple[float, float]
    cpu_ratio: float  # process CPU time, median over repeats
    target: float


def time_pair(
    plain: Callable[[], None], ours: Callable[[], None], repeats: int
) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """Interleaved (wall, CPU) timings in seconds of the two callables, after a warm-up each."""
    plain()
    ours()
    tp: list[tuple[float, float]] = []
    to: list[tuple[float, float]] = []
    for r in range(repeats):
        order = [(plain, tp), (ours, to)] if r % 2 == 0 else [(ours, to), (plain, tp)]
        for fn, acc in order:
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            acc.append((time.perf_counter() - t0, time.process_time() - c0))
    return tp, to


def bench_model(
    name: str, device: torch.device, repeats: int, variants: list[str], estimators: list[str]
) -> list[Row]:
    b, k, m = (SIZES_CUDA if device.type == "cuda" else SIZES_CPU)[name]
    target = 1.05 if device.type == "cuda" else 1.10
    model = MODELS[name]().to(device).train()
    data = make_data(max(2048, 4 * b), device)
    rows = sample_batches(len(data), b, k, seed=0)
    out = []
    for variant in variants:
        amp = "bf16" if "bf16" in variant else None
        comp = "compile" in variant
        compiled = torch.compile(model) if comp else None
        for est in estimators:
            if est == "per-example" and (name == "resnet18" or comp):
                continue  # train-mode BatchNorm / compiled graphs: per-example mode refuses
            tp, to = time_pair(
                lambda: plain_loop(model, data, rows, device, amp, compiled),  # noqa: B023
                lambda: bscrit_loop(model, data, rows, device, m, amp, comp, est),  # noqa: B023
                repeats,
            )
            ratios = sorted(o[0] / p[0] for o, p in zip(to, tp))
            cpu_ratios = [o[1] / p[1] for o, p in zip(to, tp)]
            label = variant + ("" if est == "batch" else f" ({est})")
            out.append(
                Row(
                    model=name,
                    variant=label,
                    batch_size=b,
                    k=k,
                    plain_ms=1e3 * statistics.median(t[0] for t in tp) / k,
                    bscrit_ms=1e3 * statistics.median(t[0] for t in to) / k,
                    ratio=statistics.median(ratios),
                    ratio_spread=(ratios[0], ratios[-1]),
                    cpu_ratio=statistics.median(cpu_ratios),
                    target=target,
                )
            )
            print_row(out[-1], flush=True)
    return out


HEADER = (
    "| model | variant | B | k | plain ms/batch | bscrit ms/batch | ratio (wall) "
    "| min–max | ratio (CPU time) | target | met |"
)


def print_row(r: Row, flush: bool = False) -> None:
    met = "yes" if r.ratio <= r.target else "no"
    print(
        f"| {r.model} | {r.variant} | {r.batch_size} | {r.k} | {r.plain_ms:.2f} | "
        f"{r.bscrit_ms:.2f} | {r.ratio:.3f} | {r.ratio_spread[0]:.3f}–{r.ratio_spread[1]:.3f} "
        f"| {r.cpu_ratio:.3f} | ≤ {r.target:.2f} | {met} |",
        flush=flush,
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--models", default="small_cnn,resnet18")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--variants",
        default=None,
        help="comma list of fp32, bf16, compile, bf16+compile (default: fp32 on CPU, all on CUDA)",
    )
    ap.add_argument("--estimators", default="batch,per-example", help="batch and/or per-example")
    ap.add_argument(
        "--threads", type=int, default=None, help="torch threads (1 is steadier on a busy machine)"
    )
    ap.add_argument(
        "--no-malloc-tuning",
        action="store_true",
        help="leave glibc malloc alone (bscrit measure tunes it on CPU; both loops share it)",
    )
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    tuned = device.type == "cpu" and not args.no_malloc_tuning and tune_cpu_allocator()
    if args.variants:
        variants = args.variants.split(",")
    else:
        variants = (
            ["fp32", "bf16", "compile", "bf16+compile"] if device.type == "cuda" else ["fp32"]
        )
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"# measure overhead on {dev} ({torch.get_num_threads()} threads), torch "
        f"{torch.__version__}; medians of {args.repeats} interleaved repeats"
        + ("; glibc malloc tuned as by `bscrit measure` (both loops)" if tuned else "")
    )
    print(HEADER)
    print("|" + "---|" * 11)
    for name in args.models.split(","):
        bench_model(name, device, args.repeats, variants, args.estimators.split(","))


if __name__ == "__main__":
    main()
