"""Does a batch-size warm-up that follows B*(t) train the digits MLP as well in fewer steps?

1. Train the scale-invariant digits MLP (bscrit/examples/digits) at the small batch B = 32 with
   SGD + weight decay at a constant LR, saving checkpoints at log-spaced epochs (each records its
   step).
2. Measure each checkpoint: ``bscrit measure examples/digits/spec.yaml -c CKPT --step S``.
3. ``bscrit schedule M*.json --json --plot``: B*(t) with intervals, and the warm-up stages.
4. Train K seeds that follow the schedule (stage batch size and linearly scaled LR, switched by
   examples seen) against K seeds at the fixed small batch, for the same number of examples:
   final test loss / error and the number of optimizer steps.

Arms: the fixed small batch; the schedule (``--cap later``, the default); the schedule with
``--cap start`` when it differs; and, as a control, the schedule's largest batch size with its
scaled LR from step 0 (no warm-up). Writes ``benchmarks/schedule_results/`` (results.json,
results.md, runs.csv, baseline.json, the measurements, schedule*.json / .yaml,
fig_schedule.png); docs/schedule.md reports them. ``--reuse`` skips the baseline and the
measurements when they are there already.

    python benchmarks/schedule_study.py            # ~5 min single-threaded
    python benchmarks/schedule_study.py --smoke --out /tmp/s   # seconds; numbers meaningless

Hook for ``bscrit confirm`` (not run here): ``--confirm-points K`` lists, in results.json, the K
points (checkpoint, measurement, B' = the schedule's stage batch size there) to check with
``bscrit confirm`` once that command exists; their checkpoints are kept in ``confirm/``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bscrit.artifacts.schedule_io import stages_from_yaml_dict  # noqa: E402
from bscrit.examples.digits import data as digits_data  # noqa: E402
from bscrit.examples.digits import model as digits_model  # noqa: E402
from bscrit.theory.schedule import Stage, stage_at  # noqa: E402

SPEC = ROOT / "examples" / "digits" / "spec.yaml"
OUT = ROOT / "benchmarks" / "schedule_results"


class Stream:
    """An endless stream of example indices: successive random permutations of the n examples,
    so every example is seen equally often whatever the batch size."""

    def __init__(self, n: int, gen: torch.Generator) -> None:
        self.n, self.gen = n, gen
        self.buf = torch.empty(0, dtype=torch.long)

    def take(self, size: int) -> torch.Tensor:
        while len(self.buf) < size:
            self.buf = torch.cat([self.buf, torch.randperm(self.n, generator=self.gen)])
        out, self.buf = self.buf[:size], self.buf[size:]
        return out


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy and error rate in eval mode (BatchNorm running statistics)."""
    model.eval()
    logits = model(x)
    loss = F.cross_entropy(logits, y).item()
    err = (logits.argmax(1) != y).float().mean().item()
    model.train()
    return loss, err


def train(
    stages: list[Stage],
    total_examples: int,
    seed: int,
    save_at: dict[int, Path] | None = None,
    base_lr: float = 0.1,
    weight_decay: float = 5e-4,
) -> dict[str, Any]:
    """SGD on the digits MLP, the batch size and LR following ``stages`` by examples seen.

    ``save_at`` maps a step to a checkpoint path (``{"model", "optimizer", "step", "epoch",
    "examples_seen", "batch_size"}``, the format examples/digits/spec.yaml reads).
    """
    x, y = digits_data.load_tensors("train")
    xt, yt = digits_data.load_tensors("test")
    n = len(y)
    model = digits_model.make_model(width=64, affine=False, seed=seed)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=base_lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    stream = Stream(n, gen)
    seen, step, current = 0, 0, None
    t0 = time.perf_counter()

    def save(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                    "epoch": seen // n, "examples_seen": seen, "batch_size": stages[0].batch_size},
                   path)  # fmt: skip

    if save_at and 0 in save_at:
        save(save_at[0])
    while seen < total_examples:
        st = stage_at(stages, seen)
        if st is not current:
            current = st
            hp = st.hyperparameters or {"lr": base_lr}
            for g in opt.param_groups:
                g["lr"] = hp["lr"]
                g["weight_decay"] = hp.get("weight_decay", weight_decay)
        b = min(st.batch_size, n)
        idx = stream.take(b)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        seen += b
        if save_at and step in save_at:
            save(save_at[step])
        if not math.isfinite(loss.item()):
            break
    tr_loss, tr_err = evaluate(model, x, y)
    te_loss, te_err = evaluate(model, xt, yt)
    return dict(seed=seed, steps=step, examples=seen, train_loss=tr_loss, train_error=tr_err,
                test_loss=te_loss, test_error=te_err, seconds=time.perf_counter() - t0)  # fmt: skip


def rel(p: Path) -> str:
    """A path relative to the repository (the artifacts name their files that way)."""
    return os.path.relpath(p, ROOT)


def bscrit(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m bscrit ARGS`` from the repository root (paths relative to it)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", COLUMNS="200")
    r = subprocess.run([sys.executable, "-m", "bscrit", *args], capture_output=True, text=True,
                       env=env, timeout=900, cwd=ROOT)  # fmt: skip
    if r.returncode != 0:
        raise SystemExit(f"bscrit {' '.join(args)} failed ({r.returncode}):\n{r.stderr}")
    return r


def mean_sd(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def schedule_arm(out: Path, mfiles: list[Path], name: str, *extra: str) -> tuple[dict, list[Stage]]:
    """``bscrit schedule`` on the measurements: its JSON (saved) and its stages (from its YAML)."""
    import yaml

    y = out / f"{name}.yaml"
    r = bscrit("schedule", *map(rel, mfiles), "--json", "--out", rel(y), *extra)
    d = json.loads(r.stdout)
    (out / f"{name}.json").write_text(json.dumps(d, indent=1) + "\n")
    return d, stages_from_yaml_dict(yaml.safe_load(y.read_text()), str(y))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--epochs", type=int, default=1000, help="training length (epochs at B = 32)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--batches", default="auto", help="bscrit measure --batches")
    p.add_argument("--confirm-points", type=int, default=3, help="points listed for confirm")
    p.add_argument("--reuse", action="store_true", help="reuse the baseline and measurements")
    p.add_argument("--smoke", action="store_true", help="tiny run; numbers mean nothing")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    if a.smoke:
        a.epochs, a.seeds, a.batches = 6, 2, "20"
    out: Path = a.out
    (out / "measurements").mkdir(parents=True, exist_ok=True)
    b0 = a.batch_size
    n = len(digits_data.load_tensors("train")[1])
    steps_per_epoch = n / b0
    total = int(a.epochs * n)  # examples
    epochs = sorted({e for e in (1, 2, 4, 8, 16, 32, 64, 128, 256, 400, 600, 800)
                     if e <= a.epochs} | {a.epochs})  # fmt: skip
    early = [0, 4, 12, 24]  # steps within the first epoch: B*(t) near initialisation
    if a.smoke:
        epochs, early = [1, 3, 6], [0]
    names = {s: f"step{s:06d}" for s in early}
    names |= {max(1, round(e * steps_per_epoch)): f"epoch{e:04d}" for e in epochs}
    save_at = {s: out / "ckpt" / f"{name}.pt" for s, name in names.items()}
    mfiles = [out / "measurements" / f"{ck.stem}.json" for _, ck in sorted(save_at.items())]
    fixed = [Stage(0, 0, None, b0, None, {"lr": 0.1, "weight_decay": 5e-4})]
    t0 = time.perf_counter()
    reuse = a.reuse and (out / "baseline.json").exists() and all(m.exists() for m in mfiles)
    if reuse:
        print("1-2. reusing the baseline and its measurements", flush=True)
        base = json.loads((out / "baseline.json").read_text())
    else:
        print(f"1. baseline B = {b0}, {a.epochs} epochs, checkpoints at epochs {epochs}",
              flush=True)  # fmt: skip
        base = train(fixed, total, seed=0, save_at=save_at)
        (out / "baseline.json").write_text(json.dumps(base, indent=1) + "\n")
        print(f"   {base}", flush=True)
        print("2. bscrit measure each checkpoint (--step)", flush=True)
        for (step, ck), m in zip(sorted(save_at.items()), mfiles, strict=True):
            bscrit("measure", rel(SPEC), "-c", rel(ck), "--step", str(step), "--batches",
                   a.batches, "--quiet", "--per-tensor", "none", "--out", rel(m))  # fmt: skip
            m.with_name(f"{m.stem}.params.csv").unlink(missing_ok=True)

    pooled = out / "pooled_equilibrium.json"  # the plateau pooled: an interval over it
    tau = 1 / (2 * 0.1 * 5e-4)  # 1/(2ηλ) steps [LMA21 eq. 10]
    last = [ck for st, ck in sorted(save_at.items()) if st >= 1.2 * tau][-5:]
    if len(last) >= 2 and not (reuse and pooled.exists()):
        print("2b. the last checkpoints pooled (interval over the equilibrium)", flush=True)
        args = [a_ for ck in last for a_ in ("-c", rel(ck))]
        bscrit("measure", rel(SPEC), *args, "--quiet", "--per-tensor", "none", "--batches",
               a.batches, "--out", rel(pooled))  # fmt: skip
        pooled.with_name(f"{pooled.stem}.params.csv").unlink(missing_ok=True)

    print("3. bscrit schedule (--cap later, the default; and --cap start)", flush=True)
    sched, stages = schedule_arm(out, mfiles, "schedule")
    sched_start, stages_start = schedule_arm(out, mfiles, "schedule_start", "--cap", "start")
    bscrit("schedule", *map(rel, mfiles), "--plot", rel(out / "fig_schedule.png"))
    text = bscrit("schedule", *map(rel, mfiles)).stdout
    (out / "schedule.txt").write_text(text)
    print(text, flush=True)
    top = stages_start[-1]
    arms: dict[str, list[Stage]] = {"fixed": fixed, "schedule": stages}
    if [s.batch_size for s in stages_start] != [s.batch_size for s in stages]:
        arms["schedule (cap start)"] = stages_start
    # control: the largest stage's batch size and LR from step 0 (no warm-up)
    arms[f"fixed {top.batch_size}"] = [Stage(0, 0, None, top.batch_size, None,
                                             top.hyperparameters)]  # fmt: skip

    print(f"4. {a.seeds} seeds per arm ({total} examples each): {', '.join(arms)}", flush=True)
    runs: list[dict[str, Any]] = []
    for seed in range(a.seeds):
        for arm, st in arms.items():
            res = train(st, total, seed=100 + seed) | {"arm": arm}
            runs.append(res)
            print(f"   {arm:22s} seed {seed}: steps {res['steps']}, test loss "
                  f"{res['test_loss']:.4f}, test error {res['test_error']:.4f}",
                  flush=True)  # fmt: skip
    keys = ("steps", "test_loss", "test_error", "train_loss", "train_error")
    summary = {arm: {k: mean_sd([r[k] for r in runs if r["arm"] == arm]) for k in keys}
               for arm in arms}  # fmt: skip
    by_seed = {(r["arm"], r["seed"]): r for r in runs}
    diff = {
        arm: {k: mean_sd([by_seed[(arm, 100 + s)][k] - by_seed[("fixed", 100 + s)][k]
                          for s in range(a.seeds)]) for k in ("test_loss", "test_error")}
        for arm in arms if arm != "fixed"
    }  # fmt: skip
    saved = {arm: 1 - summary[arm]["steps"][0] / summary["fixed"]["steps"][0] for arm in arms}
    pts = sched["points"]
    confirm = []  # the hook for `bscrit confirm`: checkpoints kept in out/confirm/
    k = min(a.confirm_points, len(pts))  # evenly spaced, first and last included
    for pt in [pts[round(i * (len(pts) - 1) / max(1, k - 1))] for i in range(k)]:
        ck = save_at.get(pt["step"])
        if ck is not None and ck.exists():
            (out / "confirm").mkdir(exist_ok=True)
            shutil.copy(ck, out / "confirm" / ck.name)
        confirm.append({
            "checkpoint": None if ck is None else rel(out / "confirm" / ck.name),
            "measurement": pt["source"], "step": pt["step"],
            "batch_size": stage_at(stages, pt["examples_seen"] or 0).batch_size,
        })  # fmt: skip
    plateau = None
    if pooled.exists():
        from bscrit.theory.prediction import predict_files

        pb = predict_files([pooled])
        ci = [x if math.isfinite(x) else None for x in pb.base.b_star_ci95]
        plateau = {"checkpoints": [rel(c) for c in last], "b_star": pb.base.b_star,
                   "b_star_ci95": ci, "recommended_max": pb.recommended.max,
                   "interval": pb.base.interval_note}  # fmt: skip
    result = dict(pooled_equilibrium=plateau, epochs=a.epochs, seeds=a.seeds, batch_size=b0,
                  total_examples=total,
                  baseline=base, schedule=sched, schedule_start=sched_start, runs=runs,
                  summary=summary, paired_difference=diff, steps_saved=saved,
                  confirm_points=confirm, seconds=time.perf_counter() - t0,
                  smoke=a.smoke)  # fmt: skip
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    with open(out / "runs.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(runs[0]))
        w.writeheader()
        w.writerows(runs)
    md = [
        f"# Schedule study (digits MLP, SGD, B = {b0}, {a.epochs} epochs, {a.seeds} seeds)",
        "",
        "| arm | optimizer steps | steps saved | test loss | test error | train loss | "
        "Δ test loss vs fixed | Δ test error vs fixed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for arm in arms:
        s, d = summary[arm], diff.get(arm)
        dl = "—" if d is None else f"{d['test_loss'][0]:+.4f} ± {d['test_loss'][1]:.4f}"
        de = "—" if d is None else f"{d['test_error'][0]:+.4f} ± {d['test_error'][1]:.4f}"
        md.append(f"| {arm} | {s['steps'][0]:.0f} | {100 * saved[arm]:.1f}% | "
                  f"{s['test_loss'][0]:.4f} ± {s['test_loss'][1]:.4f} | "
                  f"{s['test_error'][0]:.4f} ± {s['test_error'][1]:.4f} | "
                  f"{s['train_loss'][0]:.4f} ± {s['train_loss'][1]:.4f} | {dl} | {de} |"
                  )  # fmt: skip
    md += ["", "Mean ± sd over seeds; Δ: paired by seed (same initialisation and data order).", ""]
    for title, sc in (("schedule (--cap later)", sched), ("schedule (--cap start)", sched_start)):
        md += [f"| {title}: from step (measured run) | from examples | batch size | lr |",
               "|---|---|---|---|"]  # fmt: skip
        md += [f"| {s['start_step']} | {s['start_examples']} | {s['batch_size']} | "
               f"{(s['hyperparameters'] or {}).get('lr', float('nan')):.4g} |"
               for s in sc["stages"]]  # fmt: skip
        md.append("")
    md += ["| step | examples | B* | B* 95% CI | range top | ρ | heuristic |",
           "|---|---|---|---|---|---|---|"]  # fmt: skip

    def num(x: float | None) -> str:
        return "∞" if x is None else f"{x:.0f}"

    for pt in pts:
        rho = pt["equilibrium_residual"]
        md.append(f"| {pt['step']} | {pt['examples_seen']} | {num(pt['b_star'])} | "
                  f"[{num(pt['b_star_ci95'][0])}, {num(pt['b_star_ci95'][1])}] | "
                  f"{num(pt['recommended_max'])} | {'—' if rho is None else f'{rho:+.2f}'} | "
                  f"{'yes' if pt['heuristic'] else ''} |")  # fmt: skip
    if plateau is not None:
        lo, hi = plateau["b_star_ci95"]
        md += ["", f"Plateau, the last {len(last)} checkpoints pooled: B* = "
               f"{plateau['b_star']:.0f}, 95% [{num(lo)}, {num(hi)}] "
               f"({plateau['interval']})."]  # fmt: skip
    md += ["", f"Total time {result['seconds']:.0f} s."]
    (out / "results.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
