"""`bscrit confirm` against B*(t): branched runs at the schedule study's confirm points (issue 16).

``benchmarks/schedule_study.py`` lists, in ``schedule_results/results.json``, K checkpoints along
the digits run (first, middle, last; kept in ``schedule_results/confirm/``) with the batch size
the schedule uses there. At each, this script runs ``bscrit confirm`` from that checkpoint at
B' = that batch size, twice it and four times it (those that fit the 1500 training examples),
for the same short window of examples (``--examples``, default 10 epochs: the question is what
holds *at that point of training*, so the window must be short against how fast B*(t) moves),
3 seeds, and compares with B*(t) and the recommended top measured at the point.

    python benchmarks/schedule_confirm.py                # ~5 min on one CPU thread
    python benchmarks/schedule_confirm.py --smoke        # seconds, numbers meaningless

Writes ``schedule_results/confirm.json`` and ``confirm.md`` (the table docs/schedule.md quotes).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "schedule_results"
SPEC = ROOT / "examples" / "digits" / "spec.yaml"
N_TRAIN = 1500


def bscrit(*args: str) -> tuple[int, str, str, float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CI": "1"}
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "bscrit", *args], capture_output=True, text=True,
                       env=env, cwd=ROOT)  # fmt: skip
    return r.returncode, r.stdout, r.stderr, time.perf_counter() - t0


def _point(measurement: Path) -> dict[str, Any]:
    code, out, err, _ = bscrit("predict", str(measurement), "--json")
    if code != 0:
        raise SystemExit(f"predict {measurement}: {err}")
    p = json.loads(out)
    b = p["measurements"][0]
    return {"b_star": b["b_star"], "b_star_ci95": b["b_star_ci95"],
            "recommended_max": p["recommended"]["max"]}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=10 * N_TRAIN, help="per branch and seed")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="one point, tiny budget")
    a = ap.parse_args(argv)
    results = json.loads((OUT / "results.json").read_text())
    points = results["confirm_points"][:1] if a.smoke else results["confirm_points"]
    examples, seeds = (600, 2) if a.smoke else (a.examples, a.seeds)
    rows = []
    for pt in points:
        info = _point(ROOT / pt["measurement"])
        for kappa in (1, 2) if a.smoke else (1, 2, 4):
            target = pt["batch_size"] * kappa
            if target > N_TRAIN:
                continue
            code, out, err, secs = bscrit(
                "confirm", str(SPEC), "-c", str(ROOT / pt["checkpoint"]), "-t", str(target),
                "--examples", str(examples), "--seeds", str(seeds), "--start-step", "0",
                "--yes", "--json", "--quiet",
            )  # fmt: skip
            if code not in (0, 1, 5):  # holds, fails, inconclusive
                rows.append({**pt, **info, "target": target, "verdict": "error",
                             "error": err.strip().splitlines()[-1:]})  # fmt: skip
                continue
            v = json.loads(out)["relative_difference"]
            rows.append({**pt, **info, "target": target, "verdict": v["code"], "d": v["mean"],
                         "d_ci95": v["ci95"], "seconds": secs})  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    (OUT / ("confirm-smoke.json" if a.smoke else "confirm.json")).write_text(
        json.dumps({"examples": examples, "seeds": seeds, "rows": rows}, indent=1)
    )
    md = [f"confirm from the schedule study's points: {examples} examples per branch and seed, "
          f"{seeds} seeds, δ = 5% on the held-out loss.", "",
          "| step | B*(t) [95%] | recommended top | schedule's B | B' | confirm | d [95%] | time |",
          "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        ci = r["b_star_ci95"]
        d = r.get("d")
        dci = r.get("d_ci95") or [None, None]
        ds = (
            "—"
            if d is None
            else (
                f"{100 * d:+.1f}% [{100 * (dci[0] or float('nan')):+.1f}, "
                f"{100 * (dci[1] or float('nan')):+.1f}]"
            )
        )
        md.append(f"| {r['step']} | {r['b_star']:.0f} [{ci[0]:.0f}, {ci[1] or float('inf'):.0f}] "
                  f"| {r['recommended_max']:.0f} | {r['batch_size']} | {r['target']} | "
                  f"{r['verdict']} | {ds} | {r.get('seconds', 0):.0f} s |")  # fmt: skip
    text = "\n".join(md) + "\n"
    if not a.smoke:
        (OUT / "confirm.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
