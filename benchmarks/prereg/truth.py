"""Step 2 of the pre-registered validation: the truth, measured AFTER the registration commit.

- SGD settings: the from-scratch LSR sweep (``common.train_classifier``) at B0 and every B' of
  the grid, LR = lr0 · B'/B0, the same epochs and decay epoch, every seed.
- LM settings: branches from the registered base checkpoint (``lm_runs.branch``) at κ = 1 and
  every κ of the grid under both rules, every seed.

Refuses to run for a setting whose registration file is missing (register first, commit, then
measure). Resumable: every finished run is one line of ``truth/<setting>.jsonl``; a rerun skips
the runs already there. ``--max-minutes`` stops cleanly between runs.

    python benchmarks/prereg/truth.py --setting teacher-si
    python benchmarks/prereg/truth.py --all --max-minutes 60
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from settings import SETTINGS, LmSetting, SgdSetting, get  # noqa: E402


def jobs(st: SgdSetting | LmSetting) -> list[dict[str, Any]]:
    """Every run of the setting's truth, as a key dict."""
    if isinstance(st, SgdSetting):
        return [{"B": b, "seed": s} for b in (st.B0, *st.grid) for s in st.seeds]
    out = [{"kappa": 1, "rule": "base", "seed": s} for s in st.seeds]
    return out + [{"kappa": k, "rule": r, "seed": s} for r in st.rules for k in st.kappas
                  for s in st.seeds]  # fmt: skip


def run_job(st: SgdSetting | LmSetting, job: dict[str, Any], work: Path) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    if isinstance(st, SgdSetting):
        from common import train_classifier

        lr = st.lr0 * job["B"] / st.B0
        r = train_classifier(st.data, st.arch, job["B"], lr, st.weight_decay, st.epochs,
                             st.decay_epoch, job["seed"], st.width)  # fmt: skip
        return job | {"lr": lr} | r | {"seconds": round(time.perf_counter() - t0, 2)}
    from lm_runs import branch

    ckpt = work / f"base-s{st.branch_step}.pt"
    if not ckpt.exists():  # the registered base run (deterministic), when work/ was cleaned
        from lm_runs import train_base

        train_base(st, ckpt)
    return branch(st, ckpt, job["kappa"], job["rule"] if job["kappa"] > 1 else "full", job["seed"])


def measure(name: str, out: Path, registered: Path, work_root: Path, deadline: float) -> bool:
    """Run the setting's missing jobs; True when all are done."""
    st = get(name)
    if not (registered / f"{name}.json").exists():
        raise SystemExit(f"{name}: not registered ({registered}/{name}.json); register first")
    dest = out / f"{name}.jsonl"
    done = []
    if dest.exists():
        done = [json.loads(x) for x in dest.read_text().splitlines() if x.strip()]
    key = lambda d: json.dumps({k: d[k] for k in sorted(d) if k in ("B", "seed", "kappa", "rule")})  # noqa: E731
    have = {key(d) for d in done}
    todo = [j for j in jobs(st) if key(j) not in have]
    out.mkdir(parents=True, exist_ok=True)
    for j in todo:
        if time.time() > deadline:
            print(f"{name}: stopped at the time cap, {len(todo)} run(s) left", flush=True)
            return False
        row = run_job(st, j, work_root / name)
        row.update({k: v for k, v in j.items()})  # the job's own key (rule "base" at κ = 1)
        with dest.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(name, json.dumps({k: v for k, v in row.items() if k != "hyperparameters"}),
              flush=True)  # fmt: skip
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--setting", action="append", default=[])
    ap.add_argument("--all", action="store_true")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", type=Path, default=HERE / "truth")
    ap.add_argument("--registered", type=Path, default=HERE / "registered")
    ap.add_argument("--work", type=Path, default=HERE / "work")
    ap.add_argument("--max-minutes", type=float, default=600.0)
    a = ap.parse_args(argv)
    names = (
        ["smoke-sgd", "smoke-lm"] if a.smoke else (a.setting or (list(SETTINGS) if a.all else []))
    )
    if not names:
        ap.error("name --setting NAME (repeatable), --all or --smoke")
    deadline = time.time() + 60 * a.max_minutes
    ok = all([measure(n, a.out, a.registered, a.work, deadline) for n in names])
    return 0 if ok else 3


if __name__ == "__main__":
    raise SystemExit(main())
