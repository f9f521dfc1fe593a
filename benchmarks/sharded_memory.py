"""Per-rank peak host memory of ``bscrit measure`` with 1, 2 and 4 CPU processes (gloo), the model
replicated (today's torchrun mode) and sharded (``--shard fsdp``), beside the memory plan.

The same model, spec and batches in every run: an MLP of ``DEPTH`` blocks (``Linear(WIDTH,
WIDTH)`` + ReLU, each an FSDP2 unit: ``measure.shard_blocks: [Block]``) between an input and an
output layer, 19.3M float32 parameters, measured at B = 8 with m = 16 groups and k = 32 batches
(short: the figures are about memory, not statistics). With m = 16 the group sums (m × 4 bytes
× the parameters, 1.15 GiB) are the largest thing a rank allocates: replicated they are the same
on every rank, sharded they shrink as 1/W.

Each rank is a fresh process (``OMP_NUM_THREADS=1``; W > 1 under ``torchrun --standalone``) that
runs ``bscrit measure`` in-process and, at exit, writes its peak resident set size (``VmHWM``,
:func:`bscrit.engine.allocator.peak_rss`) and its RSS before the command (after Python, torch
and bscrit were imported). Every (mode, W) runs twice: the group sums in host memory (the
default), and spilled to a file (``--host-memory 0``, nothing else changed). Columns, per rank
(max over the ranks; min beside it where ranks differ):

- ``peak RSS``: the rank's peak resident size, everything included (runtime, model, data, ...);
- ``Δ``: peak − RSS before the command: what the command itself took (model, checkpoint
  loading, data, distributed/FSDP imports and buffers, activations, the plan's components);
- ``group sums held``: the bytes of the group-sum tensors the rank held at most (distinct
  storages, counted after every ``HostSums.add``), beside the plan's group sums;
- ``plan total``: the memory plan's per-rank total (``extra.memory_plan`` of the JSON: model,
  gradient, running sum, group sums, gathered blocks; activations, data and the runtime not
  included), to read beside Δ;
- ``group sums, measured``: peak in memory − peak spilled, the same rank: what holding the m
  sums in memory costs (the spilled run keeps a read buffer of at most 64 MiB instead);
  ``group sums, plan``: the same difference between the two runs' plans;
- ratios against the 1-process replicated run of the same invocation.

Usage::

    python benchmarks/sharded_memory.py                  # ~8 min on 2 busy cores
    python benchmarks/sharded_memory.py --out benchmarks/sharded_memory_results/results.md
    python benchmarks/sharded_memory.py --smoke          # tiny model, W = 1 only (the test)
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]
#: The model: in_dim -> WIDTH, DEPTH blocks of WIDTH x WIDTH, WIDTH -> CLASSES.
IN_DIM, WIDTH, DEPTH, CLASSES = 256, 1536, 8, 10
BATCH, GROUPS, BATCHES, EXAMPLES = 8, 16, 32, 256
#: (mode, W) in the order they run; W = 1 replicated is the baseline.
RUNS = (("replicated", 1), ("replicated", 2), ("replicated", 4),
        ("sharded", 1), ("sharded", 2), ("sharded", 4))  # fmt: skip
#: Each (mode, W) runs twice: group sums in host memory, and spilled (``--host-memory 0``).
SUMS = ("memory", "spilled")
SMOKE = {"width": 64, "depth": 2, "runs": (("replicated", 1),)}


def make_model(in_dim: int = IN_DIM, width: int = WIDTH, depth: int = DEPTH):  # type: ignore[no-untyped-def]
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(width, width)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.fc(x))

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(in_dim, width), nn.ReLU(), *[Block() for _ in range(depth)],
        nn.Linear(width, CLASSES),
    )  # fmt: skip


def make_dataset(n: int = EXAMPLES, in_dim: int = IN_DIM):  # type: ignore[no-untyped-def]
    import torch

    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, in_dim, generator=g)
    return torch.utils.data.TensorDataset(x, torch.randint(0, CLASSES, (n,), generator=g))


def _write_spec(folder: Path, width: int, depth: int) -> Path:
    import torch

    torch.save(make_model(IN_DIM, width, depth).state_dict(), folder / "model.pt")
    spec = folder / "spec.yaml"
    spec.write_text(
        f"model: {{factory: '{HERE}:make_model', kwargs: {{width: {width}, depth: {depth}}}}}\n"
        "checkpoint: model.pt\n"
        f"data: {{factory: '{HERE}:make_dataset'}}\n"
        f"loss: cross_entropy\nbatch_size: {BATCH}\n"
        "optimizer: {name: sgd, lr: 0.1}\n"
        f"measure: {{groups: {GROUPS}, device: cpu, shard_blocks: [Block]}}\n"
    )
    return spec


def child(out: Path, argv: list[str]) -> None:
    """One rank: ``bscrit measure`` in this process; at exit, its peak RSS to ``out``."""
    import torch  # noqa: F401 - the runtime counts in the RSS before the command

    import bscrit.cli
    from bscrit.engine.allocator import peak_rss
    from bscrit.engine.groups import HostSums

    rank = int(os.environ.get("RANK", "0"))
    status = Path("/proc/self/status").read_text().splitlines()
    before = next(int(s.split()[1]) * 1024 for s in status if s.startswith("VmRSS:"))
    held = [0]  # the most bytes of group sums this rank's tensors held (distinct storages)
    add = HostSums.add

    def counted(self: HostSums, j: int, block: list) -> list:  # type: ignore[type-arg]
        out = add(self, j, block)
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                    for s in self.sums for t in s}  # fmt: skip
        held[0] = max(held[0], sum(storages.values()))
        return out

    HostSums.add = counted  # type: ignore[method-assign]

    def write() -> None:
        peak = peak_rss() or 0
        data = {"peak": peak, "before": before, "sums_held": held[0]}
        (out / f"rank{rank}.json").write_text(json.dumps(data))

    atexit.register(write)
    sys.argv = ["bscrit", "measure", *argv]
    bscrit.cli.main()


def _run(mode: str, world: int, spec: Path, folder: Path, spill: bool) -> dict[str, object]:
    out = folder / f"{mode}-{world}-{'spilled' if spill else 'memory'}"
    out.mkdir()
    args = [str(spec), "-k", str(BATCHES), "-q", "--out", str(out / "m.json")]
    args += ["--per-tensor", "none", *(["--shard", "fsdp"] if mode == "sharded" else [])]
    args += ["--host-memory", "0"] if spill else []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BSCRIT_DEBUG": "1"}
    head = [sys.executable]
    if world > 1:
        head += ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(world)]
    t0 = time.perf_counter()
    cmd = [*head, str(HERE), "--child", str(out), "--", *args]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"{mode} W={world} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    ranks = [json.loads((out / f"rank{i}.json").read_text()) for i in range(world)]
    plan = json.loads((out / "m.json").read_text())["extra"]["memory_plan"]
    return {"ranks": ranks, "plan": plan, "seconds": time.perf_counter() - t0}


def _mib(x: float) -> str:
    return f"{x / 2**20:,.1f}"


def _row(res: dict) -> dict[str, float]:  # type: ignore[type-arg]
    """Per-rank figures of one (mode, W): the in-memory run, and its spilled twin."""
    mem, spl = res["memory"], res["spilled"]
    peaks = [r["peak"] for r in mem["ranks"]]
    held = [r["sums_held"] for r in mem["ranks"]]
    # the sums as RSS sees them: the peak with them in memory minus the peak with them spilled
    by_rss = [a["peak"] - b["peak"] for a, b in zip(mem["ranks"], spl["ranks"])]
    plan = mem["plan"]
    return {
        "peak": max(peaks),
        "peak_min": min(peaks),
        "delta": max(r["peak"] - r["before"] for r in mem["ranks"]),
        "plan": plan["total_bytes"],
        "held": max(held),
        "held_min": min(held),
        "plan_sums": sum(c["bytes"] for c in plan["components"] if c["name"] == "group sums"),
        "rss": max(by_rss),
        "rss_min": min(by_rss),
        "plan_rss": plan["total_bytes"] - spl["plan"]["total_bytes"],
        "seconds": mem["seconds"] + spl["seconds"],
    }


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.3f}" if b > 0 else "—"


def table(results: dict[tuple[str, int], dict]) -> list[str]:  # type: ignore[type-arg]
    """The markdown table: one row per (mode, W), ratios against replicated W = 1."""
    base = _row(results[("replicated", 1)])
    cols = ["mode", "W", "peak RSS (max; min)", "peak / 1-proc", "Δ (max)", "plan total",
            "group sums held (max; min)", "plan", "held / 1-proc",
            "sums by RSS: memory − spilled (max; min)", "plan", "wall s"]  # fmt: skip
    lines = [f"| {' | '.join(cols)} |", "|" + "---|" * len(cols)]
    for (mode, world), res in results.items():
        r = _row(res)
        cells = [mode, str(world), f"{_mib(r['peak'])}; {_mib(r['peak_min'])}",
                 _ratio(r["peak"], base["peak"]), _mib(r["delta"]), _mib(r["plan"]),
                 f"{_mib(r['held'])}; {_mib(r['held_min'])}", _mib(r["plan_sums"]),
                 _ratio(r["held"], base["held"]), f"{_mib(r['rss'])}; {_mib(r['rss_min'])}",
                 _mib(r["plan_rss"]), f"{r['seconds']:.0f}"]  # fmt: skip
        lines.append(f"| {' | '.join(cells)} |")
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, help="also write the markdown (and a .json beside it)")
    ap.add_argument("--smoke", action="store_true", help="tiny model, one process")
    ap.add_argument("--modes", default="replicated,sharded")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args, rest = ap.parse_known_args(argv)
    if args.child is not None:
        child(args.child, [a for a in rest if a != "--"])
        return
    width, depth = (SMOKE["width"], SMOKE["depth"]) if args.smoke else (WIDTH, DEPTH)
    runs = SMOKE["runs"] if args.smoke else RUNS
    runs = [(m, w) for m, w in runs if m in args.modes.split(",")]  # type: ignore[union-attr]
    params = (IN_DIM + 1) * width + depth * (width + 1) * width + (width + 1) * CLASSES
    results: dict[tuple[str, int], dict] = {}  # type: ignore[type-arg]
    with tempfile.TemporaryDirectory(prefix="bscrit-shmem-") as tmp:
        spec = _write_spec(Path(tmp), width, depth)
        for mode, world in runs:
            pair = {s: _run(mode, world, spec, Path(tmp), s == "spilled") for s in SUMS}
            results[(mode, world)] = pair
            print(f"# {mode} W={world}: {_row(pair)['seconds']:.0f} s", file=sys.stderr)
    head = (f"# bscrit measure, per-rank peak host memory: MLP of {params / 1e6:.3g}M float32 "
            f"parameters ({depth} blocks of {width}), B = {BATCH}, k = {BATCHES}, m = {GROUPS}, "
            "CPU, gloo, OMP_NUM_THREADS=1")  # fmt: skip
    lines = [head, "", "MiB per rank.", "", *table(results)]
    print("\n".join(lines))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")
        dump = {f"{m}-{w}": r for (m, w), r in results.items()}
        args.out.with_suffix(".json").write_text(
            json.dumps({"params": params, "width": width, "depth": depth, "groups": GROUPS,
                        "batch": BATCH, "batches": BATCHES, "runs": dump}, indent=1) + "\n"
        )  # fmt: skip


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
