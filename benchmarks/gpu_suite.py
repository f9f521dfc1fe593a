"""The GPU suite in one command: every performance number of docs/performance.md that needs a GPU.

Runs, each step in its own process with a time budget (the whole suite ends in under 8 minutes
however the steps go; a step that fails or runs out of time is reported as such and the others
still run):

1. overhead: ``measure_overhead.py``, small CNN and ResNet-18, fp32, bf16 (autocast) and
   ``torch.compile``, against a plain forward/backward loop on the same batches;
2. memory: ``measure_memory.py``, peak device and host memory of fresh processes (small CNN,
   ResNet-18, the 100M-parameter MLP), group sums in memory and spilled;
3. free-mode overhead: ``free_overhead.py`` (the capture inside a training loop);
4. bf16 error: ``bf16_error.py``, G, N and NSR of bf16 against fp32 on the same batches;
5. the demo: ``bscrit demo --quick`` on the device (end to end, timed);
6. sharded: ``bscrit measure --shard fsdp`` as a world of one on the device against the same
   measurement unsharded (the 19.3M-parameter MLP of ``sharded_memory.py``): seconds, G and N
   and their relative difference, the memory plan's per-rank total (several GPUs: run
   ``sharded_memory.py``'s command with ``--nproc``; not part of this one-GPU suite).

It writes one markdown file (``--out``, default ``gpu-suite.md``): a summary table (step, status,
seconds) and each step's table, ready to paste into docs/performance.md.

Usage::

    python benchmarks/gpu_suite.py --device cuda              # on a GPU machine: < 8 min
    python benchmarks/gpu_suite.py --device cpu --smoke       # tiny sizes; the test's variant
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT)]  # the benchmark scripts and bscrit
#: The whole suite's budget in seconds (each step gets its own, cut to what is left of this).
TOTAL_S = 470.0
#: (step, budget seconds on a GPU) in the order they run.
STEPS = (("overhead", 150), ("memory", 100), ("free", 50), ("bf16", 40), ("demo", 90),
         ("sharded", 60))  # fmt: skip


def _overhead(device: str, smoke: bool) -> None:
    import measure_overhead as mo

    if smoke:  # (B, k, m): a few tiny batches
        mo.SIZES_CPU = {**mo.SIZES_CPU, "small_cnn": (8, 8, 2)}
        mo.SIZES_CUDA = {**mo.SIZES_CUDA, "small_cnn": (8, 8, 2)}
        args = ["--models", "small_cnn", "--repeats", "1", "--variants", "fp32"]
        args += ["--estimators", "batch", "--threads", "1"]
    else:
        args = ["--models", "small_cnn,resnet18", "--repeats", "3"]
        args += ["--variants", "fp32,bf16,compile", "--estimators", "batch,per-example"]
    mo.main(["--device", device, *args])


def _memory(device: str, smoke: bool) -> None:
    import measure_memory as mm

    if smoke:  # two fresh processes (plain, batch) of the small CNN, k = 20 batches of B = 32
        mm.SIDES = mm.SIDES[:2]
        mm.main(["--device", device, "--models", "small_cnn"])
    else:
        mm.main(["--device", device, "--models", "small_cnn,resnet18,mlp100m"])


def _free(device: str, smoke: bool) -> None:
    """free_overhead.py's text table, as a markdown table."""
    import free_overhead as fo

    if smoke:
        fo.SIZES = {**fo.SIZES, "cpu": (4, 2, 2)}
    args = ["--models", "small_cnn", "--repeats", "1"] if smoke else ["--repeats", "3"]
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        fo.main(["--device", device, *args])
    lines = text.getvalue().splitlines()
    cols = ["model", "params", "plain ms/step", "hooks", "manual", "reading", "estimate"]
    rows = [ln.split() for ln in lines[3:] if len(ln.split()) == len(cols)]
    print("# " + " ".join(x.strip() for x in lines[:2]))
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for cells in rows:
        print("| " + " | ".join(cells) + " |")
    print()
    print(" ".join(ln for ln in lines[3:] if len(ln.split()) != len(cols)))


def _bf16(device: str, smoke: bool) -> None:
    import bf16_error

    if smoke:
        args = ["--models", "digits", "--batches", "20", "--seeds", "1", "--train-steps", "5"]
    else:
        args = ["--batches", "100", "--seeds", "1"]
    bf16_error.main(["--device", device, *args])


def _demo(device: str, smoke: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="bscrit-suite-demo-") as work:
        shown = ["demo", "--quick", "--device", device] + ["--no-svag", "--no-confirm"] * smoke
        cmd = [sys.executable, "-m", "bscrit", *shown, "--workdir", work]
        t0 = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=work)
        seconds = time.perf_counter() - t0
        sys.stderr.write(r.stderr[-4000:])
        print(f"# `bscrit {' '.join(shown)}`: exit {r.returncode}")
        print("| demo | exit code | seconds |")
        print("|---|---|---|")
        print(f"| {' '.join(shown[1:])} | {r.returncode} | {seconds:.1f} |")
        if r.returncode != 0:
            raise SystemExit(r.returncode)


def _sharded(device: str, smoke: bool) -> None:
    import json

    import sharded_memory as sm

    width, depth = (64, 2) if smoke else (sm.WIDTH, sm.DEPTH)
    size = ["-k", "8", "-m", "4"] if smoke else []
    rows = []
    with tempfile.TemporaryDirectory(prefix="bscrit-suite-shard-") as work:
        spec = sm._write_spec(Path(work), width, depth)
        spec.write_text(spec.read_text().replace("device: cpu", f"device: {device}"))
        for label, extra in (
            ("unsharded", []),
            ("--shard fsdp (world of one)", ["--shard", "fsdp"]),
        ):
            out = Path(work) / f"m{len(rows)}.json"
            cmd = [sys.executable, "-m", "bscrit", "measure", str(spec), "--out", str(out),
                   "--quiet", *size, *extra]  # fmt: skip
            t0 = time.perf_counter()
            r = subprocess.run(cmd, capture_output=True, text=True, cwd=work)
            seconds = time.perf_counter() - t0
            if r.returncode != 0:
                sys.stderr.write(r.stderr[-4000:])
                raise SystemExit(r.returncode)
            m = json.loads(out.read_text())
            plan = (m.get("extra") or {}).get("memory_plan") or {}
            st = m["stats"]["all"]
            rows.append((label, seconds, st["G"], st["N"], plan.get("total_bytes")))
    g0, n0 = rows[0][2], rows[0][3]
    print(f"# sharded (FSDP2) on one device: MLP, {width} wide, {depth} blocks (`bscrit measure`)")
    print("| run | seconds | G | N | G rel. diff | N rel. diff | plan per rank (MiB) |")
    print("|---|---|---|---|---|---|---|")
    for label, sec, g, n, total in rows:
        mib = f"{total / 2**20:,.1f}" if total else "—"
        print(f"| {label} | {sec:.1f} | {g:.6g} | {n:.6g} | {abs(g - g0) / abs(g0):.1e} | "
              f"{abs(n - n0) / abs(n0):.1e} | {mib} |")  # fmt: skip


RUNNERS = {"overhead": _overhead, "memory": _memory, "free": _free, "bf16": _bf16, "demo": _demo,
           "sharded": _sharded}  # fmt: skip


def _run_step(name: str, device: str, smoke: bool, budget: float) -> tuple[str, float, str]:
    """(status, seconds, the step's markdown) of one step in a fresh process."""
    cmd = [sys.executable, __file__, "--step", name, "--device", device] + ["--smoke"] * smoke
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE)])}
    t0 = time.perf_counter()
    # its own process group: a timeout ends the step's children too (memory's fresh processes)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)  # fmt: skip
    try:
        out, err = proc.communicate(timeout=budget)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return f"timed out after {budget:.0f} s", time.perf_counter() - t0, out
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = err.strip().splitlines()[-1:] or ["(no message)"]
        return f"failed (exit {proc.returncode}): {tail[0][:200]}", seconds, out
    return "ok", seconds, out


def _as_section(out: str) -> str:
    """A step's output for a subsection: its ``# title`` lines as plain paragraphs."""
    lines = []
    for line in out.strip().splitlines():
        lines += [line[2:], ""] if line.startswith("# ") else [line]
    return "\n".join(lines).strip() or "(no output)"


def _device_line(device: str) -> str:
    import torch

    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else "CPU"
    cuda = f", CUDA {torch.version.cuda}" if device.startswith("cuda") else ""
    return f"{name}, torch {torch.__version__}{cuda}, Python {sys.version.split()[0]}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument(
        "--smoke", action="store_true", help="tiny sizes (CI): the numbers mean nothing"
    )
    ap.add_argument("--out", type=Path, default=Path("gpu-suite.md"))
    ap.add_argument("--step", choices=sorted(RUNNERS), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.step:  # one step, in this (fresh) process
        RUNNERS[args.step](args.device, args.smoke)
        return 0
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print("gpu_suite: --device cuda but no CUDA device here", file=sys.stderr)
            return 2
    start = time.perf_counter()
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    summary, sections = [], []
    for name, budget in STEPS:
        left = TOTAL_S - (time.perf_counter() - start)
        if left < 5:
            summary.append((name, "skipped: the suite's time budget is spent", 0.0))
            continue
        status, seconds, out = _run_step(name, args.device, args.smoke, min(budget, left))
        summary.append((name, status, seconds))
        print(f"gpu_suite: {name}: {status} ({seconds:.0f} s)", file=sys.stderr, flush=True)
        sections.append(f"### {name}\n\n{_as_section(out)}\n")
    total = time.perf_counter() - start
    head = [
        f"## GPU suite: {_device_line(args.device)}"
        + (" (smoke: tiny sizes, the numbers mean nothing)" if args.smoke else ""),
        "",
        f"`python benchmarks/gpu_suite.py --device {args.device}"
        + (" --smoke" if args.smoke else "")
        + f"`, {when}, {total:.0f} s in all.",
        "",
        "| step | status | seconds |",
        "|---|---|---|",
        *[f"| {n} | {s} | {t:.0f} |" for n, s, t in summary],
        "",
    ]
    text = "\n".join(head) + "\n" + "\n".join(sections)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    print(f"gpu_suite: wrote {args.out}", file=sys.stderr)
    return 0 if all(s == "ok" for n, s, _ in summary if n in RUNNERS) else 1


if __name__ == "__main__":
    sys.exit(main())
