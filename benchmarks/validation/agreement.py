"""Agreement of the LSR sweep, `bscrit predict`, `bscrit svag` and `bscrit confirm` (issue 15).

From the validation study's settings (``run.py``: mnist1d-si and mnist1d-affine, B0 = 16,
η0 = 0.05, λ = 5e-3, LR decay at epoch 80 of 100; the LSR sweep passes up to B = 512 and fails at
1024 and 2048, docs/validation.md):

1. train the seed-0 base run at B0 to the end of the constant-LR phase (``run.train_run``, epoch
   80 checkpoint; cached under ``--work``);
2. write a bscrit spec for it (model/data factories of this folder, eval_data = the test split);
3. ``bscrit measure`` the checkpoint once and ``bscrit predict`` / ``bscrit check`` every B';
4. for every B' of the sweep (32 … 2048): ``bscrit svag --json`` (defaults: l = 1, 2, 4, four
   relaxation times 1/(2η'λ) at B'), and ``bscrit confirm --json`` when that command exists
   (``--confirm-examples``, ``--seeds``);
5. write ``results/agreement/agreement.{md,json}``: B', sweep says, predict says, svag says
   (with its deciding ratios), confirm says ("—" when the command is missing), runtimes.

The svag JSONs are kept (``--work``/<setting>/svag-B.json), so ``--recalibrate`` re-reads them
under other verdict thresholds (:class:`bscrit.runs.svag.verdict.VerdictConfig`) without rerunning:
that is how the defaults were chosen on mnist1d-si only, then scored on mnist1d-affine.

Everything runs single-threaded (OMP_NUM_THREADS = 1)::

    python benchmarks/validation/agreement.py --setting mnist1d-si
    python benchmarks/validation/agreement.py --setting mnist1d-affine
    python benchmarks/validation/agreement.py --recalibrate        # thresholds grid, no runs
    python benchmarks/validation/agreement.py --smoke              # < 1 min; numbers mean nothing
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

OUT = HERE / "results" / "agreement"
WORK = HERE / "agreement-work"  # git-ignored: checkpoints, spec, measurement, svag JSONs
#: The LSR sweep's answer per setting (docs/validation.md: passes up to 512, fails from 1024).
SWEEP_LAST_PASS = {"mnist1d-si": 512, "mnist1d-affine": 512, "smoke": 128}
TARGETS = (32, 64, 128, 256, 512, 1024, 2048)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CI": "1",
       "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}  # fmt: skip


def setting(name: str):
    """The study's Setting (run.py) of ``name``; "smoke" is a tiny digits variant."""
    from run import _settings

    if name == "smoke":
        st = _settings("smoke")[0]
        return replace(st, name="smoke", epochs=4, decay_epoch=3, batch_sizes=(32, 128, 512))
    found = [s for s in _settings("full") if s.name == name]
    if not found:
        raise SystemExit(f"unknown setting {name!r}")
    return found[0]


def bscrit(*args: str, timeout: float = 3600) -> tuple[int, str, str, float]:
    """Run ``python -m bscrit ARGS`` single-threaded; (exit code, stdout, stderr, seconds)."""
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "bscrit", *args], capture_output=True, text=True,
                       env=ENV, timeout=timeout, cwd=ROOT)  # fmt: skip
    return p.returncode, p.stdout, p.stderr, time.perf_counter() - t0


def base_checkpoint(st, work: Path) -> tuple[Path, float]:
    """Seed-0 run at B0 to the end of the constant-LR phase (cached); (path, seconds)."""
    import torch
    from run import train_run

    torch.set_num_threads(1)
    tag = f"{st.dataset}-{'affine' if st.affine else 'si'}-w{st.width}-B{st.base_batch}"
    path = work / "ckpt" / f"{tag}-lr{st.base_lr:g}-s0-e{st.decay_epoch:04d}.pt"
    if path.exists():
        return path, 0.0
    t0 = time.perf_counter()
    train_run(st.dataset, st.base_batch, st.base_lr, st.decay_epoch, None, 0, affine=st.affine,
              width=st.width, weight_decay=st.weight_decay, ckpt_epochs=(st.decay_epoch,),
              ckpt_dir=work / "ckpt")  # fmt: skip
    assert path.exists(), path
    return path, time.perf_counter() - t0


def write_spec(st, ckpt: Path, work: Path) -> Path:
    """A bscrit spec for the base run (SGD at B0 with the study's η0 and λ)."""
    factory = "make_mnist1d_model" if st.dataset == "mnist1d" else "make_digits_model"
    data = "make_mnist1d_dataset" if st.dataset == "mnist1d" else "make_digits_dataset"
    spec = work / "spec.yaml"
    spec.write_text(
        f"model:\n  factory: {HERE / 'models.py'}:{factory}\n"
        f"  kwargs: {{width: {st.width}, affine: {str(st.affine).lower()}, seed: 0}}\n"
        f"checkpoint:\n  path: {ckpt}\n  key: model\n"
        f"data:\n  factory: {HERE / 'data.py'}:{data}\n  kwargs: {{split: train}}\n"
        f"eval_data:\n  factory: {HERE / 'data.py'}:{data}\n  kwargs: {{split: test}}\n"
        f"loss: cross_entropy\nbatch_size: {st.base_batch}\n"
        f"optimizer: {{name: sgd, lr: {st.base_lr}, weight_decay: {st.weight_decay}}}\n"
        "measure: {device: cpu, seed: 0, mode: train}\n"
    )
    return spec


def confirm_available() -> bool:
    return bscrit("confirm", "--help")[0] == 0


def _json(text: str) -> dict[str, Any]:
    return json.loads(text[text.index("{") :])


def run_setting(name: str, args: argparse.Namespace) -> dict[str, Any]:
    from bscrit.optim.registry import OptimizerInfo
    from bscrit.runs.confirm.verdict import DEFAULT_TOLERANCE, ConfirmVerdict, decide
    from bscrit.runs.svag.results import SvagRun, svag_verdict
    from bscrit.runs.svag.verdict import DECIDE_ON, VerdictConfig

    st = setting(name)
    work = args.work / name
    work.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    ckpt, t_train = base_checkpoint(st, work)
    spec = write_spec(st, ckpt, work)
    # --equilibrium: predict from equilibrium draws (the run continued from the checkpoint,
    # `--sample-steps auto` = 10 relaxation times, 20 points; docs/theory.md §8), not one draw
    m = work / ("measurement-eq.json" if args.equilibrium else "measurement.json")
    eq = ["--sample-steps", "auto", "--yes"] if args.equilibrium else []
    t0 = time.perf_counter()
    if not m.exists():
        code, _, err, _ = bscrit("measure", str(spec), "-c", str(ckpt), "--out", str(m), *eq,
                                 *(["-k", "20"] if args.smoke else []))  # fmt: skip
        if code != 0:
            raise SystemExit(f"measure failed: {err[-2000:]}")
    t_measure = time.perf_counter() - t0
    pred = _json(bscrit("predict", str(m), "--json")[1])
    has_confirm = confirm_available()
    targets = [b for b in TARGETS if b in st.batch_sizes or args.smoke]
    targets = [b for b in targets if b in st.batch_sizes]
    rows = []
    for b in targets:
        row: dict[str, Any] = {"target": b}
        row["sweep"] = "holds" if b <= SWEEP_LAST_PASS[name] else "fails"
        code, out, err, _ = bscrit("check", str(m), "--batch-size", str(b), "--json")
        chk = _json(out)
        row["predict"] = {"ok": "holds", "warn": "borderline", "fail": "fails"}[chk["verdict"]]
        svag_json = work / f"svag-{b}.json"
        extra = ["--effective-steps", "40", "--eval-batches", "4"] if args.smoke else []
        if not svag_json.exists() or args.force:
            code, out, err, secs = bscrit("svag", str(spec), "-c", str(ckpt), "-t", str(b),
                                          "--json", "--yes", "--quiet", *extra)  # fmt: skip
            if code not in (0, 1, 5):  # a verdict exits 0, 1 or 5 (README, exit codes)
                row["svag"], row["svag_error"] = "error", err.strip().splitlines()[-1:]
                rows.append(row)
                continue
            d = _json(out)
            d["wall_s"] = secs
            svag_json.write_text(json.dumps(d))
        d = json.loads(svag_json.read_text())
        # the verdict under today's defaults (the runs are kept; the thresholds may have moved)
        runs = [SvagRun.from_dict(r) for r in d["runs"]]
        opt = OptimizerInfo.from_dict(d["target_optimizer"])
        d["verdict"] = svag_verdict(runs, opt, b, VerdictConfig(), d["eval_batches"])[0].to_dict()
        strict = svag_verdict(runs, opt, b, VerdictConfig(decide_on=DECIDE_ON["def5.1"]),
                              d["eval_batches"])[0]  # fmt: skip
        row["svag"] = d["verdict"]["code"]
        row["svag_def51"] = strict.code
        row["svag_s"] = d.get("wall_s", d["elapsed_s"])
        row["svag_effective_steps"] = d["effective_steps"]
        row["relaxation_steps"] = d["relaxation_steps"]
        row["ratios"] = {r["metric"]: [r["ratio"], *r["ci95"]] for r in d["verdict"]["ratios"]}
        row["extrapolated"] = d["verdict"]["extrapolated"]
        row["confirm"] = "—"
        if has_confirm:
            row["confirm"] = {}
            for n in args.confirm_examples:
                tag = "-decay" if args.decay else ""
                cached = work / f"confirm-{b}-{n}-k{args.seeds}{tag}.json"
                if not cached.exists() or args.force:
                    code, out, err, secs = bscrit(
                        "confirm", str(spec), "-c", str(ckpt), "--target-batch-size", str(b),
                        "--examples", str(n), "--seeds", str(args.seeds), "--yes", "--json",
                        *(["--decay"] if args.decay else []),
                    )  # fmt: skip
                    if code not in (0, 1, 5):  # holds, fails, inconclusive
                        row["confirm"][str(n)] = "error"
                        continue
                    c = _json(out)
                    c["wall_s"] = secs
                    cached.write_text(json.dumps(c))
                c = json.loads(cached.read_text())
                # the verdict under today's default δ (the per-seed d are kept; δ may have moved)
                kept = ConfirmVerdict.from_dict(c["relative_difference"])
                v = decide(list(kept.per_seed), DEFAULT_TOLERANCE, metric=kept.metric,
                           diverged=list(kept.diverged), target_batch_size=b).to_dict()  # fmt: skip
                row["confirm"][str(n)] = v["code"]
                row.setdefault("confirm_d", {})[str(n)] = [v["mean"], *(v["ci95"] or [None, None])]
                row[f"confirm_s_{n}"] = c["wall_s"]
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "ratios"}), flush=True)
    return {
        "setting": name,
        "label": st.label,
        "base": {
            "B0": st.base_batch,
            "lr": st.base_lr,
            "weight_decay": st.weight_decay,
            "checkpoint_epoch": st.decay_epoch,
        },  # fmt: skip
        "predict": {
            "b_star": pred["measurements"][0]["b_star"],
            "b_star_ci95": pred["measurements"][0]["b_star_ci95"],
            "recommended_max": pred["recommended"]["max"],
        },  # fmt: skip
        "confirm_available": has_confirm,
        "equilibrium": bool(args.equilibrium),
        "rows": rows,
        "runtime_s": {
            "train": t_train,
            "measure": t_measure,
            "total": time.perf_counter() - t_all,
        },  # fmt: skip
    }


# ----------------------------------------------------------------------------------------------
# Recalibration: re-read the kept svag JSONs under other thresholds
# ----------------------------------------------------------------------------------------------


def _truncate(run: Any, end: float) -> Any:
    """The run as if it had stopped at effective step ``end`` (emulates a shorter run)."""
    idx = [i for i, e in enumerate(run.effective_steps) if e <= end + 1e-9]
    return replace(run, effective_steps=tuple(run.effective_steps[i] for i in idx),
                   values={m: tuple(v[i] for i in idx) for m, v in run.values.items()})  # fmt: skip


def recalibrate(names: list[str]) -> list[dict[str, Any]]:
    """Every setting's svag verdicts under a grid of VerdictConfigs, and under the defaults for
    runs cut to 3, 2.5 and 2 relaxation times (no runs)."""
    from bscrit.optim.registry import OptimizerInfo
    from bscrit.runs.svag.results import SvagRun, svag_verdict
    from bscrit.runs.svag.verdict import DECISION_METRICS, VerdictConfig

    sets = {"def5.1+losses": DECISION_METRICS, "losses": ("train_loss", "eval_loss"),
            "R+losses": ("norm_sq", "train_loss", "eval_loss")}  # fmt: skip
    grid = [VerdictConfig(fail_rule=f, extrapolate=e, skip=s, decide_on=m)
            for m in sets.values() for f in ("interval", "point") for e in ("auto", "never")
            for s in (0.5, 1.0, 2.0)]  # fmt: skip
    grid = [(cfg, None) for cfg in grid] + [(VerdictConfig(), k) for k in (3.0, 2.5, 2.0)]
    out = []
    for name in names:
        for cfg, length in grid:
            calls = []
            for b in TARGETS:
                p = WORK / name / f"svag-{b}.json"
                if not p.exists():
                    continue
                d = json.loads(p.read_text())
                runs = [SvagRun.from_dict(r) for r in d["runs"]]
                if length is not None:
                    runs = [_truncate(r, length * d["relaxation_steps"]) for r in runs]
                opt = OptimizerInfo.from_dict(d["target_optimizer"])
                v, _ = svag_verdict(runs, opt, b, cfg, d["eval_batches"])
                sweep = "holds" if b <= SWEEP_LAST_PASS[name] else "fails"
                calls.append((b, sweep, v.code))
            agree = sum(("sde_" + s) == c for _, s, c in calls)
            out.append({"setting": name, "config": cfg.to_dict(), "agree": agree,
                        "relaxation_times": length or 4.0, "of": len(calls),
                        "calls": calls})  # fmt: skip
    return out


def _pct(d: list[float | None]) -> str:
    m, lo, hi = d
    if m is None:
        return "a target branch diverged"
    if lo is None or hi is None:
        return f"{100 * m:+.1f}%"
    return f"{100 * m:+.1f}% [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def markdown(results: list[dict[str, Any]]) -> str:
    lines = ["# Agreement: LSR sweep, predict, svag, confirm (issue 15)", "",
             "Generated by `benchmarks/validation/agreement.py`; svag with its defaults "
             "(l = 1, 2, 4; 4 relaxation times; C² = 2; the losses decide; 'def5.1': R, G, ηN "
             "decide too). predict: `bscrit check` of the base measurement (ok → holds, warn → "
             "borderline, fail → fails). Ratios SGD/SDE with 95% intervals; [1/C, C] = "
             "[0.707, 1.41].", ""]  # fmt: skip
    for r in results:
        rs = r["runtime_s"]
        lines += [f"## {r['setting']}: {r['label']}", "",
                  f"B* = {r['predict']['b_star']:.0f} (95% interval "
                  f"{r['predict']['b_star_ci95'][0]:.0f}–{r['predict']['b_star_ci95'][1]:.0f}) "
                  + ("pooled over 20 equilibrium draws (`measure --sample-steps auto`) continued "
                     if r.get("equilibrium") else "")
                  + f"from the epoch-{r['base']['checkpoint_epoch']} checkpoint at B0 = "
                  f"{r['base']['B0']}; runtime (one thread on a shared 2-core machine): svag "
                  f"{sum(x.get('svag_s', 0) for x in r['rows']):.0f} s over the "
                  f"{len(r['rows'])} B'" + (f", train {rs['train']:.0f} s, measure "
                  f"{rs['measure']:.0f} s" if rs["train"] else " (base run and measurement "
                  "cached)") + ".", "",
                  "| B' | τ (steps) | sweep says | predict says | svag says | svag, def5.1 | R | G "
                  "| ηN/N̄ | train loss | held-out loss | svag time | confirm says |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for row in r["rows"]:
            rat = row.get("ratios", {})

            def f(m: str, rat=rat, row=row) -> str:
                if m not in rat or rat[m][0] is None:
                    return "—"
                v, lo, hi = rat[m]
                star = "†" if m in row.get("extrapolated", []) else ""
                hi_s = "∞" if hi is None else f"{hi:.2f}"
                return f"{v:.2f}{star} [{lo:.2f}, {hi_s}]"

            conf = row.get("confirm", "—")
            if not isinstance(conf, str):
                ds = row.get("confirm_d", {})
                conf = ", ".join(
                    f"{k}: {v}" + (f" (d {_pct(ds[k])})" if k in ds else "")
                    for k, v in conf.items()
                )
            conf_s = conf
            tau = row.get("relaxation_steps")
            lines.append(
                f"| {row['target']} | {'—' if tau is None else f'{tau:.0f}'} | {row['sweep']} | "
                f"{row['predict']} | {row['svag']} | {row.get('svag_def51', '—')} | "
                f"{f('norm_sq')} | {f('G')} | {f('N')} | "
                f"{f('train_loss')} | {f('eval_loss')} | {row.get('svag_s', 0):.0f} s | "
                f"{conf_s} |"
            )
        conf = "`bscrit confirm --json`" if r["confirm_available"] else "not in this checkout (—)"
        lines += ["", "† extrapolated in 1/l (the runs showed the trend); else the largest l.",
                  f"confirm: {conf}.", ""]  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setting", action="append", help="mnist1d-si, mnist1d-affine (repeat)")
    ap.add_argument("--confirm-examples", default="64000",
                    help="examples per confirm branch, comma-separated")  # fmt: skip
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument(
        "--equilibrium",
        action="store_true",
        help="predict from equilibrium draws (measure --sample-steps auto)",
    )
    ap.add_argument("--decay", action="store_true",
                    help="confirm --decay: both branches end with the same LR decay")  # fmt: skip
    ap.add_argument(
        "--out", type=Path, default=None, help="results folder (default results/agreement)"
    )
    ap.add_argument("--work", type=Path, default=WORK, help="cache of runs (default: git-ignored)")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--force", action="store_true", help="rerun svag even when cached")
    ap.add_argument("--recalibrate", action="store_true")
    args = ap.parse_args(argv)
    args.confirm_examples = [int(x) for x in args.confirm_examples.split(",")]
    if args.smoke:  # seconds, numbers meaningless: what CI runs
        args.confirm_examples, args.seeds = [2000], 2
    names = ["smoke"] if args.smoke else (args.setting or ["mnist1d-si", "mnist1d-affine"])
    if args.recalibrate:
        res = recalibrate(names)
        for r in res:
            c = r["config"]
            calls = " ".join(f"{b}:{code.replace('sde_', '')[:4]}" for b, _, code in r["calls"])
            print(f"{r['setting']:15s} {'+'.join(c['decide_on']):45s} {c['fail_rule']:8s} "
                  f"{c['extrapolate']:5s} skip={c['skip_relaxation_times']:g} "
                  f"length={r['relaxation_times']:g}τ  "
                  f"{r['agree']}/{r['of']}  {calls}")  # fmt: skip
        (OUT / "recalibration.json").write_text(json.dumps(res, indent=1))
        return 0
    out = (args.out or OUT) / "smoke" if args.smoke else (args.out or OUT)
    out.mkdir(parents=True, exist_ok=True)
    old = out / "agreement.json"
    results = {r["setting"]: r for r in (json.loads(old.read_text()) if old.exists() else [])}
    for name in names:
        results[name] = run_setting(name, args)
    ordered = list(results.values())
    (out / "agreement.json").write_text(json.dumps(ordered, indent=1))
    (out / "agreement.md").write_text(markdown(ordered))
    print(markdown(ordered))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
