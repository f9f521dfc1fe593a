"""B*(t) over a tiny GPT-2 run, measured by the HF callback, and its schedule (issue 16).

The run of ``examples/callbacks/hf_tiny_gpt2.py`` (a 2-layer byte-level GPT-2 on Python's standard
library sources, AdamW, B = 16 as 2 micro-batches of 8), longer: ``--steps`` optimizer steps with
``BscritCallback`` measuring every ``--every`` steps (k = 40 batches: a cheap, noisy reading), then
``bscrit schedule series.jsonl`` on its series. Writes ``schedule_results/gpt2/`` (the series,
``schedule.json``, ``bstar.png``, ``table.md``).

    python benchmarks/schedule_gpt2.py                 # ~5 min on one CPU thread
    python benchmarks/schedule_gpt2.py --steps 40 --every 20   # smoke
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "schedule_results" / "gpt2"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT / "examples" / "callbacks"))
    from hf_tiny_gpt2 import main as train  # the example, longer

    if a.out.exists():
        shutil.rmtree(a.out)
    t0 = time.perf_counter()
    rows = train(str(a.out), steps=a.steps, every=a.every)
    seconds = time.perf_counter() - t0
    shutil.rmtree(a.out / "trainer", ignore_errors=True)
    r = subprocess.run(
        [sys.executable, "-m", "bscrit", "schedule", str(a.out / "series.jsonl"), "--json",
         "--plot", str(a.out / "bstar.png")],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    if r.returncode != 0:
        raise SystemExit(r.stderr)
    sched = json.loads(r.stdout)
    text = json.dumps(sched, indent=1).replace(str(ROOT) + "/", "")  # paths relative to the repo
    (a.out / "schedule.json").write_text(text)
    md = [f"tiny GPT-2 (2 layers, d = 32, byte vocabulary), AdamW lr 1e-3, wd 0.01, B = 16; "
          f"{a.steps} steps, measured every {a.every} (k = 40), {seconds:.0f} s in all.", "",
          "| step | examples | NSR | B* | B* 95% |", "|---|---|---|---|---|"]  # fmt: skip
    for row in rows:
        ci = row.get("b_star_ci95") or [None, None]
        md.append(f"| {row['step']} | {row.get('examples_seen')} | {row['nsr']:.3g} | "
                  f"{row['b_star']:.0f} | [{ci[0] or float('nan'):.0f}, "
                  f"{ci[1] or float('inf'):.0f}] |")  # fmt: skip
    md += [
        "",
        "stages: "
        + ", ".join(f"{s['batch_size']} from step {s['start_step']}" for s in sched["stages"]),
    ]
    (a.out / "table.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
