"""Per-rank memory of a measurement from 10M to 70B parameters, from the memory plan
(:mod:`bscrit.stats.memory_plan`), sharded (FSDP2) against replicated, with the measured points.

For each model (standard configurations: a small GPT, GPT-2 small, GPT-3 XL, Llama-2 7B, 13B and
70B; the parameter count is computed from d, the layers, the MLP width and the vocabulary, biases
and norms left out) and each weight dtype (fp32; bf16 as a sharded run keeps them: stored in
bf16, gradient in bf16 then cast to float32, sums in float32), the per-rank total of the plan at
m = 10 groups on a GPU: replicated (every rank a whole replica; the same for any W: the group
sums in host memory), and sharded over W = 1, 2, 4, 8, 64 ranks (everything on the device, 1/W
of it per rank, plus the largest unit FSDP all-gathers: a layer, or the root's embeddings and
head when larger). No preconditioner (the preconditioned reading adds 4 bytes × P / W). The
activations, the data and the runtime are not included: the totals are lower bounds.

The measured points come from ``benchmarks/sharded_memory.py``'s committed output (``--measured``,
default ``benchmarks/sharded_memory_results/results.json``): its MLP at m = 4 on CPU, the plan's
group sums per rank beside the measured ones (peak with the sums in memory − peak spilled).

Usage::

    python benchmarks/memory_plan_table.py                # prints the markdown
    python benchmarks/memory_plan_table.py --out benchmarks/memory_plan_results/table.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bscrit.stats.memory_plan import MemoryInputs, format_bytes, plan_memory  # noqa: E402

GROUPS = 10
WORLDS = (1, 2, 4, 8, 64)
MEASURED = HERE / "sharded_memory_results" / "results.json"
#: (name, d, layers, MLP width, vocabulary, tied embeddings, KV width): standard configurations.
MODELS = (
    ("small GPT", 256, 12, 1024, 8192, True, 256),
    ("GPT-2 small", 768, 12, 3072, 50257, True, 768),
    ("GPT-3 XL", 2048, 24, 8192, 50257, True, 2048),
    ("Llama-2 7B", 4096, 32, 11008, 32000, False, 4096),
    ("Llama-2 13B", 5120, 40, 13824, 32000, False, 5120),
    ("Llama-2 70B", 8192, 80, 28672, 32000, False, 1024),
)


def model_size(d: int, layers: int, mlp: int, vocab: int, tied: bool, kv: int) -> tuple[int, int]:
    """(parameters, largest unit all-gathered at once): a layer is attention (q, o: d × d; k,
    v: d × kv) and an MLP (2 matrices d × mlp with tied GPT embeddings' GELU MLP, 3 for Llama's
    SwiGLU); the root holds the embeddings (and the untied head)."""
    swiglu = not tied
    layer = 2 * d * d + 2 * d * kv + (3 if swiglu else 2) * d * mlp
    root = vocab * d * (1 if tied else 2)
    return layers * layer + root, max(layer, root)


def _short(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:,.0f}"


def _cell(plan, measured: float | None = None) -> str:  # type: ignore[no-untyped-def]
    sums = plan.component("group sums")
    text = f"{format_bytes(plan.total)} (sums {format_bytes(sums)})"
    return text + (f" · **measured sums {format_bytes(measured)}**" if measured else "")


def plan_rows(measured: Path = MEASURED) -> list[str]:
    """The table from 10M to 70B parameters, and the measured model's row (✱)."""
    cols = ["model", "parameters", "largest unit", "weights", "replicated, any W"]
    cols += [f"sharded W = {w}" for w in WORLDS]
    lines = [f"| {' | '.join(cols)} |", "|" + "---|" * len(cols)]
    for name, *config in MODELS:
        params, block = model_size(*config)  # type: ignore[arg-type]
        for weights, size in (("fp32", 4), ("bf16", 2)):
            common = dict(params=params, trainable=params, weight_bytes=size, groups=GROUPS)
            rep = plan_memory(MemoryInputs(**common, on_cpu=False))  # type: ignore[arg-type]
            cells = [name, _short(params), _short(block), weights, _cell(rep)]
            for w in WORLDS:
                kw = dict(world_size=w, sharded=True, sums="device", largest_block=block)
                cells.append(_cell(plan_memory(MemoryInputs(**common, **kw, on_cpu=False))))  # type: ignore[arg-type]
            lines.append(f"| {' | '.join(cells)} |")
    data = _measured(measured)
    return lines + ([measured_row(data)] if data is not None else [])


def _measured(path: Path) -> dict | None:  # type: ignore[type-arg]
    return json.loads(path.read_text()) if path.is_file() else None


def measured_row(data: dict) -> str:  # type: ignore[type-arg]
    """The benchmark's MLP as a row of the table: its plan (CPU, its m) per W, marked with the
    group sums the ranks measurably held (max over the ranks); "—" where not measured."""
    runs, cells = data["runs"], []
    for key in ["replicated-1", *(f"sharded-{w}" for w in WORLDS)]:
        if key not in runs:
            cells.append("—")
            continue
        plan = runs[key]["memory"]["plan"]
        held = max(r["sums_held"] for r in runs[key]["memory"]["ranks"])
        sums = sum(c["bytes"] for c in plan["components"] if c["name"] == "group sums")
        cells.append(
            f"{format_bytes(plan['total_bytes'])} (sums {format_bytes(sums)}) "
            f"✱ held {format_bytes(held)}"
        )
    name = f"✱ MLP, m = {data['groups']}, CPU (measured)"
    return f"| {name} | {_short(data['params'])} | — | fp32 | {' | '.join(cells)} |"


def measured_rows(path: Path) -> list[str]:
    """The benchmark's MLP in detail: the plan beside the measured group sums per rank."""
    data = _measured(path)
    if data is None:
        return [f"(no measured points: {path} does not exist; run benchmarks/sharded_memory.py)"]
    cols = ["mode", "W", "plan total per rank", "group sums per rank: plan", "held (tensors)",
            "held / plan", "by RSS: memory − spilled (max)", "its plan",
            "peak RSS (max)"]  # fmt: skip
    lines = [f"| {' | '.join(cols)} |", "|" + "---|" * len(cols)]
    for key, pair in data["runs"].items():
        mode, world = key.rsplit("-", 1)
        mem, spl = pair["memory"], pair["spilled"]
        plan = mem["plan"]
        sums = sum(c["bytes"] for c in plan["components"] if c["name"] == "group sums")
        held = max(r["sums_held"] for r in mem["ranks"])
        rss = max(a["peak"] - b["peak"] for a, b in zip(mem["ranks"], spl["ranks"]))
        rss_plan = plan["total_bytes"] - spl["plan"]["total_bytes"]
        peak = max(r["peak"] for r in mem["ranks"])
        cells = [mode, world, format_bytes(plan["total_bytes"]), format_bytes(sums),
                 format_bytes(held), f"{held / sums:.3f}" if sums else "—", format_bytes(rss),
                 format_bytes(rss_plan), format_bytes(peak)]  # fmt: skip
        lines.append(f"| {' | '.join(cells)} |")
    head = (f"✱ Measured (CPU, {data['params'] / 1e6:.1f}M-parameter MLP, m = {data['groups']}, "
            "`benchmarks/sharded_memory.py`, `benchmarks/sharded_memory_results/`): held = the "
            "bytes of the group-sum tensors a rank held (max over ranks); by RSS = peak RSS with "
            "the sums in memory − peak RSS spilled, same rank, beside the same difference of the "
            "two runs' plans (the sums − the spilled run's read buffer).")  # fmt: skip
    return [head, "", *lines]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, help="also write the markdown here")
    ap.add_argument("--measured", type=Path, default=MEASURED)
    args = ap.parse_args(argv)
    head = (f"Per-rank memory of `bscrit measure` from the plan, m = {GROUPS}, on GPUs: total "
            "(group sums). Replicated: model, gradient, running sum on the device, the sums in "
            "host memory. Sharded: all on the device. Activations, data and the runtime not "
            "included (lower bounds); no preconditioner (+4 bytes × P / W with one).")  # fmt: skip
    lines = [head, "", *plan_rows(args.measured), "", *measured_rows(args.measured)]
    print("\n".join(lines))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
