"""Adaptive validation sweep: where does the square-root scaling rule for AdamW fail, and which
candidate prediction, measured at the branch point, anticipates it?

Protocol (the *branched* protocol; docs/validation.md, "Adaptive optimizers (AdamW)"):

1. **Base run.** A tiny causal transformer LM (``charlm.TinyLM``) on a byte-level corpus of
   Python's own standard library (``charlm.load_corpus``) is trained with AdamW at batch B0
   (sequences) to the *branch point*: linear warm-up, then a constant LR.
2. **Measurement at the branch point**, at batch B0, k independent batches of B0 distinct
   windows in m groups: G = ‖∇L‖² and N = Tr Σ_B0 (raw gradients; bscrit's engine
   ``measure_model`` + ``param_set_stats``), and the same for the preconditioned gradient P·g with
   P = diag(1/(√v̂ + ε)), v̂ the bias-corrected ``exp_avg_sq`` of the base run's AdamW, held fixed
   (brute force here, with bscrit's unbiased estimators and delete-one-group jackknife; the raw
   part of the brute force is checked against the engine on the same batches).
3. **Branches.** From the branch point, for every κ and seed: AdamW at B' = κ·B0 with the
   hyperparameters of bscrit's square-root rule (``bscrit.theory.scaled.scale_hyperparameters``:
   η√κ, β' = 1 − κ(1 − β) for β₁ and β₂, ε/√κ, λ√κ) for steps/κ steps (the same number of tokens),
   constant LR. Two variants of the Adam state at the branch: (a) v carried over unchanged, (b)
   v/κ ([MLPA22] Thm 5.3 compares runs whose (θ, m, u = v/σ²) agree). m is carried over in both.
   The bias correction of the base run is folded into the state at the branch point (m ← m̂,
   v ← v̂) and the step counter is set so large that no further correction applies (same for every
   branch; as bscrit's SVAG warm start does). Metric: held-out loss (nats/char) at the end.
4. **Failure criterion** (fixed before the full run; docs/validation.md): the rule *fails* at κ when
   D(κ) = L̄(κ) − L̄(1) > δ(κ) = max(2·SE[D(κ)], 0.01 nats/char), SE over seeds.
5. **Candidates** (largest B' where the rule is predicted to hold), from the branch point at B0:
   raw B* = C²(B0 + B0·N/G); preconditioned B*_P = C²(B0 + B0·N_P/G_P); noise dominance
   NSR_P(B') ≥ 1 → B0·N_P/G_P (finite-population factor included; it is ≈ 1 here); B_noise =
   B0·N/G. 95% intervals from the jackknife interval of the NSR (bscrit's ``nsr_interval``).

Run::

    python benchmarks/validation/adaptive_sweep.py --out benchmarks/validation/results/adaptive
    python benchmarks/validation/adaptive_sweep.py --smoke --out /tmp/adaptive-smoke   # < 30 s

One CPU thread (``torch.set_num_threads(1)``) and one process; the full sweep's runtime is
printed and recorded in ``results.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
ROOT = HERE.parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from charlm import (  # noqa: E402
    Corpus,
    evaluate,
    lm_loss,
    load_corpus,
    make_model,
    num_windows,
    sample_starts,
    windows,
)

from bscrit.engine.loop import measure_model  # noqa: E402
from bscrit.optim.registry import OptimizerInfo  # noqa: E402
from bscrit.runs.common.optimizer import make_optimizer  # noqa: E402
from bscrit.stats.estimators import GroupSums, finite_population_factor, noise_stats  # noqa: E402
from bscrit.stats.summary import param_set_stats  # noqa: E402
from bscrit.theory.scaled import scale_hyperparameters  # noqa: E402
from bscrit.theory.scaling import square_root_rule  # noqa: E402

C2 = 2.0  # [LMA21] Fig. 3's C², as in bscrit's B*
FAIL_Z = 2.0  # failure: D > max(FAIL_Z · SE(D), FAIL_ABS)
FAIL_ABS = 0.01  # nats/char
BIG_STEP = 1.0e7  # step counter after the branch point: 1 − β^step == 1 for every β used here


# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    corpus_bytes: int = 1_500_000
    d_model: int = 64
    layers: int = 2
    heads: int = 4
    context: int = 64
    model_seed: int = 0
    B0: int = 16  # sequences of `context` tokens
    lr: float = 1e-3
    beta1: float = 0.99
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.1
    warmup_steps: int = 100
    base_steps: int = 2000  # steps at B0 to the branch point
    branch_steps: int = 768  # steps at B0 of the branch; κ·B0 runs branch_steps/κ steps
    kappas: tuple[int, ...] = (1, 2, 4, 8, 12, 16, 32, 64)  # all divide branch_steps
    seeds: tuple[int, ...] = (0, 1, 2)
    noise_batches: int = 400  # k independent batches of B0 at the branch point
    groups: int = 10  # jackknife groups
    eval_windows: int = 1024  # fixed held-out windows
    log_every: int = 250


FULL = Config()
SMOKE = Config(
    corpus_bytes=200_000,
    d_model=32,
    layers=1,
    heads=2,
    context=32,
    B0=8,
    lr=2e-3,
    warmup_steps=10,
    base_steps=60,
    branch_steps=16,
    kappas=(1, 2, 4),
    seeds=(0, 1),
    noise_batches=40,
    groups=10,
    eval_windows=64,
    log_every=20,
)


class Clock:
    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def __call__(self, msg: str) -> None:
        print(f"[{time.perf_counter() - self.t0:7.1f}s] {msg}", flush=True)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0


def base_optimizer(cfg: Config) -> OptimizerInfo:
    return OptimizerInfo(
        name="adamw",
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.eps,
    )


# ----------------------------------------------------------------------------------------------
# Base run to the branch point
# ----------------------------------------------------------------------------------------------


def train_base(cfg: Config, corpus: Corpus, ev: tuple[Tensor, Tensor], log: Clock):
    """AdamW at B0: linear warm-up, then constant LR, to the branch point."""
    model = make_model(cfg.model_seed, cfg.d_model, cfg.layers, cfg.heads, cfg.context)
    model.train()
    opt = make_optimizer(model.parameters(), base_optimizer(cfg))
    n = num_windows(corpus.train, cfg.context)
    gen = torch.Generator().manual_seed(10_000 + cfg.model_seed)
    curve: list[dict[str, float]] = []
    run_loss, t0 = 0.0, time.perf_counter()
    for step in range(1, cfg.base_steps + 1):
        for g in opt.param_groups:
            g["lr"] = cfg.lr * min(1.0, step / max(1, cfg.warmup_steps))
        x, y = windows(corpus.train, sample_starts(n, cfg.B0, gen), cfg.context)
        loss = lm_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        run_loss += loss.item()
        if step % cfg.log_every == 0 or step == cfg.base_steps:
            cnt = cfg.log_every if step % cfg.log_every == 0 else step % cfg.log_every
            ho = evaluate(model, *ev)
            curve.append({"step": step, "tokens": step * cfg.B0 * cfg.context,
                          "train_loss": run_loss / cnt, "heldout_loss": ho})  # fmt: skip
            log(f"base step {step}/{cfg.base_steps}: train {run_loss / cnt:.4f}  held-out "
                f"{ho:.4f}  ({time.perf_counter() - t0:.1f}s)")  # fmt: skip
            run_loss = 0.0
    return model, opt, curve


def branch_point_state(model: nn.Module, opt: torch.optim.Optimizer, cfg: Config):
    """(θ, m̂, v̂) at the branch point: the base run's state with the bias correction folded in."""
    theta = {k: v.detach().clone() for k, v in model.state_dict().items()}
    moments = []
    for p in model.parameters():
        st = opt.state[p]
        t = float(st["step"])
        m_hat = st["exp_avg"] / (1.0 - cfg.beta1**t)
        v_hat = st["exp_avg_sq"] / (1.0 - cfg.beta2**t)
        moments.append((m_hat.clone(), v_hat.clone()))
    return theta, moments, t


# ----------------------------------------------------------------------------------------------
# Noise statistics at the branch point
# ----------------------------------------------------------------------------------------------


class WindowDataset(torch.utils.data.Dataset):
    """All (context+1)-byte windows of the training text, as (input, target) pairs (for bscrit)."""

    def __init__(self, text: Tensor, context: int) -> None:
        self.text, self.context = text, context

    def __len__(self) -> int:
        return num_windows(self.text, self.context)

    def __getitem__(self, i: int):
        w = self.text[i : i + self.context + 1].long()
        return w[:-1], w[1:]


def _group_sums(S: list[Tensor], Q: list[float], counts: list[int]) -> GroupSums:
    M = torch.stack(S)  # m × d, float64
    gram = M @ M.T
    return GroupSums(tuple(tuple(float(x) for x in r) for r in gram), tuple(Q), tuple(counts))


def measure_branch_point(cfg: Config, corpus: Corpus, model: nn.Module, moments, log: Clock):
    """G, N (raw and preconditioned) at the branch point, batch B0, k batches in m groups."""
    n = num_windows(corpus.train, cfg.context)
    k, m = cfg.noise_batches, cfg.groups
    gen = torch.Generator().manual_seed(20_000 + cfg.model_seed)
    rows = torch.stack([sample_starts(n, cfg.B0, gen) for _ in range(k)])
    counts = [k // m + (1 if j < k % m else 0) for j in range(m)]
    P = torch.cat([(1.0 / (v.sqrt() + cfg.eps)).reshape(-1) for _, v in moments]).double()
    params = list(model.parameters())
    S = [torch.zeros_like(P) for _ in range(m)]
    SP = [torch.zeros_like(P) for _ in range(m)]
    Q, QP = [0.0] * m, [0.0] * m
    model.train()
    t0 = time.perf_counter()
    i = 0
    for j, c in enumerate(counts):
        for _ in range(c):
            x, y = windows(corpus.train, rows[i], cfg.context)
            i += 1
            grads = torch.autograd.grad(lm_loss(model(x), y), params)
            g = torch.cat([gr.reshape(-1) for gr in grads]).double()
            gp = g * P
            S[j] += g
            SP[j] += gp
            Q[j] += float(g @ g)
            QP[j] += float(gp @ gp)
    t_brute = time.perf_counter() - t0
    raw_brute = noise_stats(_group_sums(S, Q, counts))
    pre = noise_stats(_group_sums(SP, QP, counts))
    log(f"brute force: {k} batches of B0={cfg.B0} in {t_brute:.1f}s")

    # the same batches through bscrit's engine (raw gradients): the reported raw numbers
    t0 = time.perf_counter()
    raw = measure_model(model, WindowDataset(corpus.train, cfg.context), lm_loss,
                        batch_size=cfg.B0, groups=m, batch_rows=rows, seed=0)  # fmt: skip
    raw_stats = param_set_stats(raw.tensors)
    log(f"bscrit engine: {k} batches in {time.perf_counter() - t0:.1f}s")
    agree = abs(raw_stats.nsr / raw_brute.nsr - 1.0)
    log(f"raw NSR engine {raw_stats.nsr:.5g} vs brute force {raw_brute.nsr:.5g} "
        f"(rel. diff {agree:.1e})")  # fmt: skip
    return raw_stats, pre, agree, n


def candidates(cfg: Config, raw, pre, n: int) -> list[dict[str, Any]]:
    """Each candidate's predicted largest B' where the rule holds, with its 95% interval."""
    B0 = cfg.B0
    fpf0 = finite_population_factor(n, B0)
    out = []

    def row(name, stat, value, ci, formula, f):
        lo, hi = ci
        out.append({
            "candidate": name, "statistic": stat, "value": value, "ci95": [lo, hi],
            "formula": formula, "B_pred": f(value), "B_pred_ci95": [f(lo), f(hi)],
        })  # fmt: skip

    def dom(nsr):  # largest B' with NSR_P(B') = NSR_P(B0)·[(n−B')/B']/[(n−B0)/B0] ≥ 1
        # NSR·(n−B')·B0/(B'(n−B0)) ≥ 1  ⇔  B' ≤ NSR·B0·n / (n − B0 + NSR·B0)
        if math.isinf(nsr):
            return math.inf
        return nsr * B0 * n / (n - B0 + nsr * B0)

    row("1 raw B*", "NSR = N/G", raw.nsr, raw.nsr_ci95, "C²(B0 + B0·N/G)",
        lambda s: C2 * (B0 + B0 * s))  # fmt: skip
    row("2 preconditioned B*_P", "NSR_P = N_P/G_P", pre.nsr, pre.nsr_ci95,
        "C²(B0 + B0·N_P/G_P)", lambda s: C2 * (B0 + B0 * s))  # fmt: skip
    row("3 noise dominance NSR_P(B') ≥ 1", "NSR_P = N_P/G_P", pre.nsr, pre.nsr_ci95,
        "largest B' with NSR_P(B') ≥ 1 (≈ B0·N_P/G_P)", dom)  # fmt: skip
    row("4 B_noise (McCandlish)", "NSR = N/G", raw.nsr, raw.nsr_ci95, "B0·N/G",
        lambda s: B0 * s)  # fmt: skip
    for r in out:
        r["finite_population_factor_B0"] = fpf0
    return out


# ----------------------------------------------------------------------------------------------
# Branches
# ----------------------------------------------------------------------------------------------


def run_branch(cfg, corpus, ev, theta, moments, kappa, seed, variant, nsr_raw):
    """One branch from the branch point at B' = κ·B0 under the square-root rule."""
    Bp = kappa * cfg.B0
    sh = scale_hyperparameters(base_optimizer(cfg), cfg.B0, Bp, steps=cfg.branch_steps,
                               nsr_target=nsr_raw * cfg.B0 / Bp)  # fmt: skip
    new = square_root_rule(base_optimizer(cfg), kappa)  # the same numbers, as an OptimizerInfo
    steps = sh.steps[1]
    model = make_model(cfg.model_seed, cfg.d_model, cfg.layers, cfg.heads, cfg.context)
    model.load_state_dict(theta)
    model.train()
    opt = make_optimizer(model.parameters(), new)
    vscale = 1.0 / kappa if variant == "b" else 1.0
    for p, (m_hat, v_hat) in zip(model.parameters(), moments, strict=True):
        opt.state[p] = {
            "step": torch.tensor(BIG_STEP),
            "exp_avg": m_hat.clone(),
            "exp_avg_sq": v_hat * vscale,
        }
    n = num_windows(corpus.train, cfg.context)
    gen = torch.Generator().manual_seed(1_000_003 * (seed + 1) + kappa)
    t0 = time.perf_counter()
    tail: list[float] = []
    for s in range(steps):
        x, y = windows(corpus.train, sample_starts(n, Bp, gen), cfg.context)
        loss = lm_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if s >= steps - max(1, steps // 10):
            tail.append(loss.item())
    ho = evaluate(model, *ev)
    return {
        "variant": variant, "kappa": kappa, "B": Bp, "seed": seed, "steps": steps,
        "tokens": steps * Bp * cfg.context, "lr": sh.new["lr"], "beta1": sh.new["beta1"],
        "beta2": sh.new["beta2"], "eps": sh.new["eps"], "weight_decay": sh.new["weight_decay"],
        "heldout_loss": ho, "train_loss_tail": sum(tail) / len(tail),
        "finite": bool(math.isfinite(ho)), "seconds": time.perf_counter() - t0,
        "bscrit_warning": bool(sh.warnings),
    }  # fmt: skip


# ----------------------------------------------------------------------------------------------
# Analysis
# ----------------------------------------------------------------------------------------------


def _mean_se(xs: list[float]) -> tuple[float, float, float]:
    mu = statistics.fmean(xs)
    sd = statistics.stdev(xs) if len(xs) > 1 else math.nan
    return mu, sd / math.sqrt(len(xs)), sd


def summarize(cfg: Config, runs: list[dict[str, Any]]) -> tuple[list[dict], dict[str, dict]]:
    """Per (variant, κ): mean ± s.e.; D, δ and the verdict; and each variant's observed limit."""
    rows, verdicts = [], {}
    for variant in ("a", "b"):
        by_k = {k: [r["heldout_loss"] for r in runs
                    if r["kappa"] == k and (r["variant"] == variant or k == 1)]
                for k in cfg.kappas}  # fmt: skip
        mu1, se1, _ = _mean_se(by_k[1])
        first_fail = first_dev = None
        for k in cfg.kappas:
            mu, se, sd = _mean_se(by_k[k])
            if k == 1:
                d, se_d, delta, fails, better = 0.0, math.nan, math.nan, False, False
            else:
                d = mu - mu1
                se_d = math.sqrt(se**2 + se1**2)
                delta = max(FAIL_Z * se_d, FAIL_ABS)
                fails = (not math.isfinite(mu)) or d > delta
                better = d < -delta  # secondary, two-sided reading: the trajectories differ
            if fails and first_fail is None:
                first_fail = k
            if (fails or better) and first_dev is None:
                first_dev = k
            verdict = (
                "base" if k == 1 else "fails" if fails else "holds (better)" if better else "holds"
            )
            rows.append({
                "variant": variant, "kappa": k, "B": k * cfg.B0, "n_seeds": len(by_k[k]),
                "mean": mu, "se": se, "sd": sd, "D": d, "se_D": se_d, "delta": delta,
                "verdict": verdict,
            })  # fmt: skip
        if first_fail is None:
            hold, fail = cfg.kappas[-1] * cfg.B0, math.inf
        else:
            i = cfg.kappas.index(first_fail)
            hold, fail = cfg.kappas[i - 1] * cfg.B0, first_fail * cfg.B0
        later = [r["kappa"] for r in rows if r["variant"] == variant and r["verdict"] == "holds"
                 and r["verdict"] != "fails" and first_fail is not None
                 and r["kappa"] > first_fail]  # fmt: skip
        verdicts[variant] = {"last_holding_B": hold, "first_failing_B": fail,
                             "holds_again_at_kappa": later,
                             "first_deviating_B_two_sided":
                                 first_dev * cfg.B0 if first_dev else math.inf}  # fmt: skip
    return rows, verdicts


def judge(cands: list[dict], verdicts: dict[str, dict]) -> None:
    """A candidate matches a variant when B_hold ≤ B_pred < B_fail (the sweep's resolution)."""
    for c in cands:
        for v, obs in verdicts.items():
            hold, fail = obs["last_holding_B"], obs["first_failing_B"]
            p, (lo, hi) = c["B_pred"], c["B_pred_ci95"]
            c[f"match_{v}"] = bool(hold <= p < fail)
            c[f"ci_overlaps_{v}"] = bool(lo < fail and hi >= hold)
            mid = math.sqrt(hold * fail) if math.isfinite(fail) else math.nan
            c[f"ratio_to_threshold_{v}"] = p / mid if math.isfinite(mid) else math.nan


def fmt(x: float, nd: int = 4) -> str:
    if isinstance(x, float) and math.isinf(x):
        return "∞"
    if isinstance(x, float) and math.isnan(x):
        return "—"
    return f"{x:.{nd}g}"


def table_md(cfg, rows, verdicts, cands, runtime) -> str:
    L = ["| κ | B' | steps | held-out loss (a) v kept | D (a) | δ (a) | (a) | "
         "held-out loss (b) v/κ | D (b) | δ (b) | (b) |",
         "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    ra = {r["kappa"]: r for r in rows if r["variant"] == "a"}
    rb = {r["kappa"]: r for r in rows if r["variant"] == "b"}
    for k in cfg.kappas:
        a, b = ra[k], rb[k]
        steps = max(1, math.floor(cfg.branch_steps / k + 0.5))
        L.append(
            f"| {k} | {k * cfg.B0} | {steps} | {a['mean']:.4f} ± {a['se']:.4f} | "
            f"{fmt(a['D'], 3)} | {fmt(a['delta'], 2)} | {a['verdict']} | "
            f"{b['mean']:.4f} ± {b['se']:.4f} | {fmt(b['D'], 3)} | {fmt(b['delta'], 2)} | "
            f"{b['verdict']} |"
        )
    L += ["", "| variant | last holding B' | first failing B' | holds again at κ | "
          "first B' differing either way |", "|---|---|---|---|---|"]  # fmt: skip
    for v, name in (("a", "(a) v kept"), ("b", "(b) v/κ")):
        o = verdicts[v]
        again = ", ".join(str(k) for k in o["holds_again_at_kappa"]) or "—"
        L.append(
            f"| {name} | {o['last_holding_B']} | {fmt(float(o['first_failing_B']))} | "
            f"{again} | {fmt(float(o['first_deviating_B_two_sided']))} |"
        )
    L += ["", "| candidate | statistic at B0 (95% CI) | predicted largest B' (95% CI) | "
          "matches (a) | matches (b) |", "|---|---|---|---|---|"]  # fmt: skip
    for c in cands:
        lo, hi = c["ci95"]
        plo, phi = c["B_pred_ci95"]
        L.append(
            f"| {c['candidate']} | {c['statistic']} = {fmt(c['value'])} ({fmt(lo)}–{fmt(hi)}) | "
            f"{fmt(c['B_pred'])} ({fmt(plo)}–{fmt(phi)}) | "
            f"{'yes' if c['match_a'] else 'no'} (ratio {fmt(c['ratio_to_threshold_a'], 2)}) | "
            f"{'yes' if c['match_b'] else 'no'} (ratio {fmt(c['ratio_to_threshold_b'], 2)}) |"
        )
    L += ["", f"Ratio = predicted / geometric mean of (last holding, first failing) B'. "
          f"Total runtime {runtime:.0f} s on one CPU thread."]  # fmt: skip
    return "\n".join(L)


def _num(x: Any) -> float:
    """A float from results.json (non-finite values are stored as null)."""
    return math.nan if x is None else float(x)


def plot(cfg, rows, cands, path: Path) -> None:
    """Left: held-out loss against B' (mean ± s.e.); right: D(κ) = L̄(κ) − L̄(1) against B'."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, axd) = plt.subplots(1, 2, figsize=(13, 5))
    variants = (("a", "(a) v carried over", "o", 0.97), ("b", "(b) v / κ", "s", 1.03))
    for v, label, mk, off in variants:
        rs = [r for r in rows if r["variant"] == v]
        xs = [r["B"] * off for r in rs]
        ax.errorbar(xs, [r["mean"] for r in rs], yerr=[r["se"] for r in rs], marker=mk,
                    capsize=3, label=label)  # fmt: skip
        rd = [r for r in rs if r["kappa"] != 1]
        axd.errorbar([r["B"] * off for r in rd], [r["D"] for r in rd],
                     yerr=[2 * _num(r["se_D"]) for r in rd], marker=mk, capsize=3,
                     label=f"{label}: D ± 2 s.e.")  # fmt: skip
        for r in rs:
            if r["verdict"] == "fails":
                ax.plot(r["B"] * off, r["mean"], marker="x", color="red", ms=10, zorder=5)
                axd.plot(r["B"] * off, r["D"], marker="x", color="red", ms=10, zorder=5)
    base = next(r for r in rows if r["kappa"] == 1)
    ax.axhline(base["mean"] + FAIL_ABS, color="gray", ls=":", lw=1,
               label=f"κ=1 mean + {FAIL_ABS} nats")  # fmt: skip
    axd.axhline(FAIL_ABS, color="gray", ls=":", lw=1, label=f"δ floor {FAIL_ABS} nats")
    colors = ["tab:green", "tab:purple", "tab:brown", "tab:olive"]
    for a in (ax, axd):
        for c, col in zip(cands, colors, strict=False):
            p = _num(c["B_pred"])
            if math.isfinite(p) and p > 0:
                a.axvline(p, color=col, ls="--", lw=1.2, label=f"{c['candidate']}: {p:.0f}")
                lo, hi = (_num(x) for x in c["B_pred_ci95"])
                if math.isfinite(lo) and math.isfinite(hi) and lo > 0:
                    a.axvspan(lo, hi, color=col, alpha=0.08)
        a.set_xscale("log", base=2)
        a.set_xlabel(f"B' = κ·B0 (sequences of {cfg.context} bytes)")
    axd.set_yscale("symlog", linthresh=1e-3)
    ax.set_ylabel("held-out loss at equal tokens (nats/char)")
    axd.set_ylabel("D = L̄(κ) − L̄(1) (nats/char, symlog)")
    ax.set_title("AdamW, square-root rule from the branch point (× = fails)", fontsize=10)
    axd.set_title("loss gap to the κ = 1 branch (× = fails)", fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    axd.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def clean_json(x: Any) -> Any:
    """Non-finite floats → null (strict JSON)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: clean_json(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [clean_json(v) for v in x]
    return x


def replot(out: Path) -> int:
    """Redraw the figure (and rewrite results.json as strict JSON) from a finished run."""
    res = json.loads((out / "results.json").read_text())
    cfg = Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in res["config"].items()})
    (out / "results.json").write_text(json.dumps(clean_json(res), indent=1))
    plot(cfg, res["summary"], res["candidates"], out / "fig_adaptive.png")
    print(f"redrew {out / 'fig_adaptive.png'}")
    return 0


def write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


# ----------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=HERE / "results" / "adaptive")
    ap.add_argument("--smoke", action="store_true", help="tiny configuration (numbers meaningless)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--replot", action="store_true", help="only redraw the figure from --out")
    args = ap.parse_args(argv)
    if args.replot:
        return replot(args.out)
    torch.set_num_threads(args.threads)
    cfg = SMOKE if args.smoke else FULL
    if max(cfg.kappas) * (1 - cfg.beta1) >= 1 or max(cfg.kappas) * (1 - cfg.beta2) >= 1:
        raise SystemExit("the square-root rule is infeasible for the largest κ")
    args.out.mkdir(parents=True, exist_ok=True)
    log = Clock()
    log(f"config: {asdict(cfg)}")

    corpus = load_corpus(cfg.corpus_bytes)
    gen = torch.Generator().manual_seed(30_000)
    n_ho = num_windows(corpus.heldout, cfg.context)
    ev = windows(corpus.heldout, torch.randperm(n_ho, generator=gen)[: cfg.eval_windows],
                 cfg.context)  # fmt: skip
    log(f"corpus: {corpus.describe()}")

    model, opt, curve = train_base(cfg, corpus, ev, log)
    theta, moments, t_branch = branch_point_state(model, opt, cfg)
    bp_loss = evaluate(model, *ev)
    log(f"branch point: step {t_branch:.0f}, held-out loss {bp_loss:.4f}")

    raw, pre, agree, n = measure_branch_point(cfg, corpus, model, moments, log)
    cands = candidates(cfg, raw, pre, n)
    for c in cands:
        log(f"candidate {c['candidate']}: {c['statistic']} = {c['value']:.4g} "
            f"{tuple(round(x, 4) for x in c['ci95'])} → B' ≤ {c['B_pred']:.4g}")  # fmt: skip

    runs: list[dict[str, Any]] = []
    t_sweep = time.perf_counter()
    for kappa in cfg.kappas:
        for variant in ("a",) if kappa == 1 else ("a", "b"):  # κ = 1: (a) and (b) coincide
            for seed in cfg.seeds:
                r = run_branch(cfg, corpus, ev, theta, moments, kappa, seed, variant, raw.nsr)
                runs.append(r)
                log(
                    f"branch ({variant}) κ={kappa:<3d} B'={r['B']:<5d} seed={seed}: "
                    f"{r['steps']} steps, held-out {r['heldout_loss']:.4f} ({r['seconds']:.1f}s)"
                )
    t_sweep = time.perf_counter() - t_sweep

    rows, verdicts = summarize(cfg, runs)
    judge(cands, verdicts)
    runtime = log.elapsed
    md = table_md(cfg, rows, verdicts, cands, runtime)
    print("\n" + md + "\n", flush=True)

    try:  # what bscrit says about the first infeasible κ
        scale_hyperparameters(base_optimizer(cfg), cfg.B0, 2 * max(cfg.kappas) * cfg.B0)
        infeasible = None
    except Exception as e:  # noqa: BLE001
        infeasible = str(e)

    write_csv(args.out / "runs.csv", runs)
    write_csv(args.out / "summary.csv", rows)
    write_csv(args.out / "base_curve.csv", curve)
    flat_cands = [{k: (json.dumps(v) if isinstance(v, list) else v) for k, v in c.items()}
                  for c in cands]  # fmt: skip
    write_csv(args.out / "predictions.csv", flat_cands)
    result = {
        "config": asdict(cfg),
        "corpus": corpus.describe(),
        "torch": torch.__version__,
        "threads": args.threads,
        "failure_criterion": {
            "rule": "D > max(FAIL_Z*SE(D), FAIL_ABS)",
            "FAIL_Z": FAIL_Z,
            "FAIL_ABS_nats": FAIL_ABS,
            "C2": C2,
        },  # fmt: skip
        "branch_point": {
            "step": t_branch,
            "heldout_loss": bp_loss,
            "tokens": cfg.base_steps * cfg.B0 * cfg.context,
        },  # fmt: skip
        "noise": {
            "raw": {
                "G": raw.G,
                "N": raw.N,
                "nsr": raw.nsr,
                "nsr_ci95": list(raw.nsr_ci95),
                "G_ci95": list(raw.G_ci95),
                "N_ci95": list(raw.N_ci95),
                "k": raw.k,
                "source": "bscrit.engine.loop.measure_model + param_set_stats",
            },
            "preconditioned": {
                "G": pre.G.value,
                "N": pre.N.value,
                "nsr": pre.nsr,
                "nsr_ci95": list(pre.nsr_ci95),
                "G_ci95": list(pre.G.ci95),
                "N_ci95": list(pre.N.ci95),
                "k": pre.k,
                "source": "brute force, bscrit.stats.estimators.noise_stats",
            },
            "engine_vs_bruteforce_rel_diff": agree,
            "n_windows": n,
        },  # fmt: skip
        "candidates": cands,
        "summary": rows,
        "verdicts": verdicts,
        "infeasible_kappa_message": infeasible,
        "runtime_s": {"total": runtime, "sweep": t_sweep},
    }
    (args.out / "results.json").write_text(json.dumps(clean_json(result), indent=1))
    (args.out / "results.md").write_text(md + "\n")
    plot(cfg, rows, cands, args.out / "fig_adaptive.png")
    log(f"done: {args.out} (total {log.elapsed:.0f}s, sweep {t_sweep:.0f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
