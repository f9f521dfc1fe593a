"""Coverage of bscrit's intervals for the equilibrium NSR (docs/theory.md §8), measured.

The case of the equilibrium issue: a scale-invariant MLP on MNIST-1D (non-affine BatchNorm, fixed
last layer; benchmarks/validation/models.py), SGD at a constant LR 1.6 with weight decay 2e-3,
B = 64, so τ = 1/(2ηλ) = 156 steps ≈ 2.5 epochs. It is trained once past equilibrium (40 epochs),
then for ``--keep-epochs`` more with a checkpoint every epoch, and every checkpoint is measured
with bscrit (scale-invariant parameters, k = 200). The **truth** is the long-run NSR, the ratio of
the means of N and G over all kept checkpoints.

1. **K checkpoints** (K = 1, 3, 5, 10; one epoch apart, and three epochs ≈ 1.2τ apart): how often
   the interval bscrit reports now (the equilibrium interval when there are several draws, else the
   batch-noise one) covers the truth, against the interval bscrit reported before (the batch
   noise of one checkpoint, or of the pooled checkpoints), over disjoint windows of the run.
2. **Defaults for sampling**, emulated on the kept checkpoints: windows of T relaxation times with
   K points (the nearest epochs), coverage and median width against the interval from 50
   well-separated checkpoints (4 epochs ≈ 1.6τ apart).
3. **``measure --sample-steps``** with its defaults (T = 10τ, K = 20, k/4 batches per point), run
   through ``bscrit.workflows.measure.run_measurement`` from ``--reps`` checkpoints of the run
   (each its own seed): coverage with the Wilson 95% interval of the rate, median width, cost.

Everything runs on one CPU thread; the run's checkpoints and the measurements are cached under
``--out`` (git-ignored, except the tables):

    python benchmarks/equilibrium_coverage.py               # full: about 15 min on one core
    python benchmarks/equilibrium_coverage.py --smoke       # about a minute; numbers mean nothing
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "validation"))

from data import load_tensors  # noqa: E402
from models import make_mnist1d_model  # noqa: E402

from bscrit.artifacts.records import ParamSetStats  # noqa: E402
from bscrit.optim.registry import OptimizerInfo  # noqa: E402
from bscrit.specfile.document import load_spec  # noqa: E402
from bscrit.stats.equilibrium import equilibrium_interval, relaxation_steps  # noqa: E402
from bscrit.stats.estimators import NoiseStats, pool, t_quantile  # noqa: E402
from bscrit.workflows.measure import run_measurement  # noqa: E402
from bscrit.workflows.plan import MeasureOptions  # noqa: E402

SET = "scale_invariant"  # the set the bounds use (here every trainable tensor)
START_EVERY = 3  # epochs between the checkpoints the --sample-steps repetitions start from


@dataclass(frozen=True)
class Config:
    width: int = 128
    lr: float = 1.6
    weight_decay: float = 2e-3
    batch_size: int = 64
    warmup_epochs: int = 40
    keep_epochs: int = 300
    seed: int = 0

    @property
    def opt(self) -> OptimizerInfo:
        return OptimizerInfo("sgd", lr=self.lr, weight_decay=self.weight_decay)


SMOKE = Config(width=32, warmup_epochs=2, keep_epochs=30)


# ----------------------------------------------------------------------------------------------
# The run: train once, keep a checkpoint every epoch
# ----------------------------------------------------------------------------------------------


def make_dataset(path: str) -> torch.utils.data.TensorDataset:
    """Spec factory: MNIST-1D's training set, saved once (generating it takes seconds)."""
    x, y = torch.load(path)
    return torch.utils.data.TensorDataset(x, y)


def train(cfg: Config, out: Path) -> list[Path]:
    """SGD with weight decay at a constant LR, random reshuffling, the last batch dropped; a
    checkpoint ``{"model", "optimizer", "step", "epoch"}`` after every kept epoch."""
    run = out / "run"
    meta = run / "config.json"
    paths = [run / f"epoch{e:04d}.pt" for e in range(cfg.warmup_epochs, cfg.warmup_epochs +
                                                       cfg.keep_epochs)]  # fmt: skip
    if meta.exists() and json.loads(meta.read_text()) == asdict(cfg):
        if all(p.exists() for p in paths):
            return paths
    run.mkdir(parents=True, exist_ok=True)
    x, y = load_tensors("mnist1d")
    torch.save((x, y), out / "mnist1d.pt")
    model = make_mnist1d_model(cfg.width, seed=cfg.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    n, b = len(y), cfg.batch_size
    step = 0
    for epoch in range(cfg.warmup_epochs + cfg.keep_epochs):
        perm = torch.randperm(n, generator=gen)
        for i in range(n // b):
            idx = perm[i * b : (i + 1) * b]
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
        if epoch + 1 > cfg.warmup_epochs:
            state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                     "epoch": epoch + 1}  # fmt: skip
            torch.save(state, paths[epoch - cfg.warmup_epochs])
    meta.write_text(json.dumps(asdict(cfg)))
    return paths


def write_spec(cfg: Config, out: Path) -> Path:
    spec = out / "spec.yaml"
    spec.write_text(
        f"model:\n  factory: {HERE / 'validation' / 'models.py'}:make_mnist1d_model\n"
        f"  kwargs: {{width: {cfg.width}, seed: {cfg.seed}}}\n"
        f"data:\n  factory: {Path(__file__).resolve()}:make_dataset\n"
        f"  kwargs: {{path: {out / 'mnist1d.pt'}}}\n"
        f"loss: cross_entropy\nbatch_size: {cfg.batch_size}\n"
        f"optimizer: {{name: sgd, lr: {cfg.lr}, weight_decay: {cfg.weight_decay}}}\n"
        "measure: {device: cpu, seed: 0}\n"
    )
    return spec


def measure_all(spec: Path, paths: list[Path], out: Path) -> list[dict[str, Any]]:
    """Every kept checkpoint measured by bscrit (k = 200), cached in ``measurements.json``."""
    cache = out / "measurements.json"
    if cache.exists():
        records = json.loads(cache.read_text())
        if [r["path"] for r in records] == [str(p) for p in paths]:
            return records
    m = run_measurement(load_spec(spec), paths)
    records = [{"path": str(p), "step": c.step, "stats": c.scale_invariant.to_dict()}  # type: ignore[union-attr]
               for p, c in zip(paths, m.checkpoints)]  # fmt: skip
    cache.write_text(json.dumps(records))
    return records


# ----------------------------------------------------------------------------------------------
# Intervals
# ----------------------------------------------------------------------------------------------


def wilson(hits: int, n: int) -> tuple[float, float]:
    """Wilson 95% interval of a binomial rate."""
    if n == 0:
        return math.nan, math.nan
    z, p = 1.959964, hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def intervals(
    stats: list[NoiseStats], steps: list[int], tau: float
) -> tuple[tuple[float, float], tuple[float, float], str]:
    """(today's interval, the equilibrium interval bscrit reports, its scope) for K points."""
    pooled = pool(stats)
    e = equilibrium_interval({SET: (pooled, stats)}, steps, tau)
    return pooled.nsr_ci95, e.sets[SET].nsr_ci95, e.scope


def covers(ci: tuple[float, float], truth: float) -> bool:
    return ci[0] <= truth <= ci[1]


def width(ci: tuple[float, float], truth: float) -> float:
    return (ci[1] - ci[0]) / truth


@dataclass
class Row:
    label: str
    reps: int
    draws: str
    today: float
    now: float
    now_ci: tuple[float, float]
    width_now: float
    width_today: float
    cost: str = ""

    def md(self, ref: float) -> str:
        lo, hi = self.now_ci
        return (
            f"| {self.label} | {self.reps} | {self.draws} | {self.today:.0%} | **{self.now:.0%}** "
            f"[{lo:.0%}, {hi:.0%}] | {self.width_today:.2f} | {self.width_now:.2f} | "
            f"{self.width_now / ref:.2f} | {self.cost} |"
        )


def summarise(label: str, results: list[tuple[tuple, tuple, str]], truth: float,
              cost: str = "") -> Row:  # fmt: skip
    n = len(results)
    hits_now = sum(covers(now, truth) for _, now, _ in results)
    draws = [scope for _, _, scope in results]
    eq = sum(s == "equilibrium" for s in draws)
    return Row(
        label,
        n,
        f"{eq}/{n}",
        sum(covers(today, truth) for today, _, _ in results) / n,
        hits_now / n,
        wilson(hits_now, n),
        statistics.median(width(now, truth) for _, now, _ in results),
        statistics.median(width(today, truth) for today, _, _ in results),
        cost,
    )


def windows(records: list[dict], k: int, every: int, tau: float, truth: float) -> Row:
    """Disjoint windows of K checkpoints ``every`` epochs apart."""
    span = (k - 1) * every + 1
    out = []
    for start in range(0, len(records) - span + 1, span):
        pick = records[start : start + span : every]
        stats = [ParamSetStats.from_dict(r["stats"]).noise_stats() for r in pick]
        out.append(intervals(stats, [r["step"] for r in pick], tau))
    label = f"K = {k}" + (f", {every} epochs apart" if k > 1 else "")
    return summarise(label, out, truth)


def emulated(records: list[dict], t_taus: float, k: int, tau: float, spe: int, truth: float,
             start_every: int) -> Row | None:  # fmt: skip
    """K points over T = t_taus·τ steps (the nearest kept epochs), windows ``start_every``
    epochs apart (they overlap when shorter than the run's stride)."""
    t_epochs = t_taus * tau / spe
    idx = sorted({round(j * t_epochs / (k - 1)) for j in range(k)})
    out = []
    for start in range(0, len(records) - idx[-1], start_every):
        pick = [records[start + i] for i in idx]
        stats = [ParamSetStats.from_dict(r["stats"]).noise_stats() for r in pick]
        out.append(intervals(stats, [r["step"] for r in pick], tau))
    if not out:  # the run is shorter than T
        return None
    cost = f"{(t_taus * tau + k * 200) / 200:.0f}×"
    return summarise(f"T = {t_taus:g}τ, K = {k} (k = 200)", out, truth, cost)


def _jackknife(gs: list[float], ns: list[float]) -> tuple[float, float]:
    """bscrit's interval: delete-one jackknife of ΣN/ΣG, t with K − 1 df."""
    k = len(gs)
    r = sum(ns) / sum(gs)
    loo = [(sum(ns) - n) / (sum(gs) - g) for g, n in zip(gs, ns)]
    mean = statistics.fmean(loo)
    se = math.sqrt((k - 1) / k * sum((x - mean) ** 2 for x in loo))
    t = t_quantile(0.975, k - 1)
    return max(0.0, r - t * se), r + t * se


def _fieller(gs: list[float], ns: list[float]) -> tuple[float, float]:
    """Fieller's interval for E N / E G from i.i.d. pairs."""
    k = len(gs)
    t = t_quantile(0.975, k - 1)
    g, n = statistics.fmean(gs), statistics.fmean(ns)
    vgg = statistics.variance(gs) / k
    vnn = statistics.variance(ns) / k
    vgn = statistics.covariance(gs, ns) / k
    a, h, c = g * g - t * t * vgg, g * n - t * t * vgn, n * n - t * t * vnn
    if a <= 0:
        return 0.0, math.inf
    root = math.sqrt(max(h * h - a * c, 0.0))
    return (h - root) / a, (h + root) / a


def _log_ratio(gs: list[float], ns: list[float]) -> tuple[float, float]:
    """exp(log(ΣN/ΣG) ± t·se) with the delete-one jackknife of the log ratio."""
    k = len(gs)
    r = sum(ns) / sum(gs)
    loo = [math.log((sum(ns) - n) / (sum(gs) - g)) for g, n in zip(gs, ns)]
    mean = statistics.fmean(loo)
    se = math.sqrt((k - 1) / k * sum((x - mean) ** 2 for x in loo))
    t = t_quantile(0.975, k - 1)
    return r * math.exp(-t * se), r * math.exp(t * se)


def methods(records: list[dict], reps: int, seed: int = 0) -> list[str]:
    """The interval for a ratio of means, three ways, on K independent draws resampled from the
    run's checkpoints (so the truth is exactly the ratio of their means)."""
    import random

    rng = random.Random(seed)
    pairs = [(r["stats"]["G"], r["stats"]["N"]) for r in records]
    truth = sum(n for _, n in pairs) / sum(g for g, _ in pairs)
    lines = ["| K independent checkpoints | jackknife of ΣN/ΣG (bscrit) | Fieller | log-ratio |",
             "|---|---|---|---|"]  # fmt: skip
    for k in (3, 5, 10, 20):
        hits = {f: 0 for f in (_jackknife, _fieller, _log_ratio)}
        widths: dict = {f: [] for f in hits}
        for _ in range(reps):
            pick = [rng.choice(pairs) for _ in range(k)]
            gs, ns = [g for g, _ in pick], [n for _, n in pick]
            for f in hits:
                lo, hi = f(gs, ns)
                hits[f] += lo <= truth <= hi
                widths[f].append((hi - lo) / truth)
        cells = [f"{hits[f] / reps:.1%} (width {statistics.median(widths[f]):.2f})" for f in hits]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return lines


def sampled(spec: Path, paths: list[Path], reps: int, every: int, truth: float,
            out: Path) -> tuple[Row, list[dict]]:  # fmt: skip
    """``measure --sample-steps auto`` (defaults) from ``reps`` checkpoints ``every`` epochs
    apart, each continued with its own seed (so its own data order and batches)."""
    cache = out / "sampled.json"
    done = json.loads(cache.read_text()) if cache.exists() else []
    s = load_spec(spec)
    for r in range(len(done), reps):
        start = paths[r * every]
        t0 = time.perf_counter()
        m = run_measurement(s, [start], MeasureOptions(sample_steps="auto", seed=1000 + r))
        e = m.equilibrium_interval
        assert e is not None
        done.append({
            "start": start.name, "scope": e.scope, "draws": e.draws,
            "today": list(m.scale_invariant.nsr_ci95),  # type: ignore[union-attr]
            "now": list(e.sets[SET].nsr_ci95), "nsr": e.sets[SET].nsr,
            "cost": m.extra["sampling"]["cost_in_measurements"],
            "seconds": time.perf_counter() - t0,
        })  # fmt: skip
        cache.write_text(json.dumps(done))
        print(f"  sample {r + 1}/{reps}: NSR {done[-1]['nsr']:.3g} {done[-1]['now']} "
              f"({done[-1]['seconds']:.1f} s)", flush=True)  # fmt: skip
    res = [(tuple(d["today"]), tuple(d["now"]), d["scope"]) for d in done[:reps]]
    cost = statistics.median(d["cost"] for d in done[:reps])
    label = "measure --sample-steps (defaults: T = 10τ, K = 20, k = 50)"
    return summarise(label, res, truth, f"{cost:.1f}×"), done[:reps]


# ----------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny run: checks that it runs")
    p.add_argument("--reps", type=int, default=80, help="repetitions of --sample-steps")
    p.add_argument("--method-reps", type=int, default=4000, help="resamplings per K (methods)")
    p.add_argument("--out", type=Path, default=HERE / "validation" / "results" / "equilibrium")
    a = p.parse_args()
    torch.set_num_threads(1)
    cfg = SMOKE if a.smoke else Config()
    out = a.out / "smoke" if a.smoke else a.out
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    paths = train(cfg, out)
    spec = write_spec(cfg, out)
    records = measure_all(spec, paths, out)
    tau, _ = relaxation_steps(cfg.opt)
    assert tau is not None
    spe = 4000 // cfg.batch_size
    sg = sum(r["stats"]["G"] for r in records)
    sn = sum(r["stats"]["N"] for r in records)
    truth = sn / sg
    all_stats = [ParamSetStats.from_dict(r["stats"]).noise_stats() for r in records]
    long = equilibrium_interval({SET: (pool(all_stats), all_stats)},
                                [r["step"] for r in records], tau)  # fmt: skip
    sep = records[:: max(1, len(records) // 50)][:50] if a.smoke else records[::4][:50]
    sep_stats = [ParamSetStats.from_dict(r["stats"]).noise_stats() for r in sep]
    ref_e = equilibrium_interval({SET: (pool(sep_stats), sep_stats)}, [r["step"] for r in sep],
                                 tau)  # fmt: skip
    ref = width(ref_e.sets[SET].nsr_ci95, truth)
    nsrs = [r["stats"]["N"] / r["stats"]["G"] for r in records]
    cv = statistics.stdev(nsrs) / statistics.fmean(nsrs)
    acf = {lag: statistics.correlation(nsrs[:-lag], nsrs[lag:]) for lag in (1, 2, 4)}
    lines = [
        f"Truth: the long-run NSR over {len(records)} checkpoints (epochs {cfg.warmup_epochs + 1}–"
        f"{cfg.warmup_epochs + cfg.keep_epochs}, {long.draws} draws of ≥ τ): "
        f"**{truth:.3f}** {fmt_ci(long.sets[SET].nsr_ci95)}; single checkpoints: NSR "
        f"{min(nsrs):.2f} to {max(nsrs):.2f}, sd/mean {cv:.0%}, "
        f"spread/batch noise {long.sets[SET].spread:.1f}×. τ = 1/(2ηλ) = {tau:.0f} steps = "
        f"{tau / spe:.2f} epochs. Correlation of the NSR of checkpoints 1, 2, 4 epochs apart: "
        + ", ".join(f"{acf[lag]:+.2f}" for lag in (1, 2, 4))
        + ".",
        f"Reference width: the interval from 50 checkpoints 4 epochs (≈ {4 * spe / tau:.1f}τ) "
        f"apart, {fmt_ci(ref_e.sets[SET].nsr_ci95)}, relative width {ref:.3f}.",
        "",
        "| intervals from | reps | with ≥ 2 draws | coverage before | coverage now [Wilson 95%] "
        "| median width before | median width now | now / 50-checkpoint width | cost |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    rows = [windows(records, 1, 1, tau, truth)]
    for every in (1, 3):
        rows += [windows(records, k, every, tau, truth) for k in (3, 5, 10)]
    for t_taus, k in ((5, 10), (5, 20), (10, 10), (10, 20), (20, 20)):
        row = emulated(records, t_taus, k, tau, spe, truth, start_every=5)
        rows += [row] if row is not None else []
    lines += [r.md(ref) for r in rows]
    reps = min(a.reps, len(paths) // START_EVERY)
    row, done = sampled(spec, paths, reps, START_EVERY, truth, out)
    lines.append(row.md(ref))
    secs = statistics.median(d["seconds"] for d in done)
    lines += [
        "",
        f"Interval for a ratio, {a.method_reps} resamplings of K independent checkpoints from the "
        "run's 300 (coverage of their ratio of means; median relative width):",
        "",
        *methods(records, a.method_reps),
        "",
        f"Widths are (hi − lo)/truth. This run: {time.perf_counter() - t0:.0f} s (cached parts "
        f"not redone); one --sample-steps run took {secs:.1f} s (median).",
    ]
    text = "\n".join(lines)
    print(text)
    (out / "results.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps({
        "config": asdict(cfg), "truth": truth, "tau": tau, "reference_width": ref,
        "rows": [asdict(r) for r in rows + [row]], "sampled": done,
    }, indent=1))  # fmt: skip


def fmt_ci(ci: tuple[float, float]) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]"


if __name__ == "__main__":
    main()
