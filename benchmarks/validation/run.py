"""Validation study: does the [LMA21] Thm 5.6 bound predict where the linear scaling rule fails?

A small-scale, real-data reproduction of the protocol of [LMA21] Fig. 3 / App. F.2:

1. **LSR sweep.** From a base (B0, η0), train at B = κ·B0 with LR κ·η0 (coupled weight decay λ
   unchanged), the same number of epochs and the same LR decay (×0.1) at the same epoch, several
   seeds; record the final test error. LSR counts as failed at B when the mean test error exceeds
   the best (over B) by more than 20% of its value — the paper's criterion.
2. **Baselines.** The seed-0 runs double as baselines at each B: G and N^B are measured (train
   mode, k independent batches) at several checkpoints of the constant-LR phase, where the
   scale-invariant weights are at equilibrium, and averaged (the paper averaged epochs 200-250).
   Each baseline predicts B* = C² (B + B·N/G) (exact, Thm 5.6) and C² B N/G (the paper's
   approximation), C² = 2; the min/max over the chosen baselines is the predicted range.
3. **Compare** the predicted range with the observed critical batch size (first failing B of
   the sweep; the true threshold lies between the last passing and the first failing B), and
   report the ratio, whatever it is.
4. **Figures**: G/N against B on log axes with the slope-1 lines of the min/max baselines, the
   C² threshold, the predicted range and the failure region (like Fig. 3); test error against B.

Settings: MNIST-1D and digits with the scale-invariant MLP (BatchNorm without affine, fixed last
layer), and MNIST-1D with an ordinary MLP (affine BatchNorm, trainable last layer + biases) to see
how far the prediction carries outside the theorem's assumptions.

Run::

    python benchmarks/validation/run.py --smoke          # < 1 min, tiny, results/smoke/
    python benchmarks/validation/run.py                  # full study, results/ (see README)
    python benchmarks/validation/run.py --jobs 2         # two worker processes

G and N come from the brute-force reference in ``noise.py`` (``--estimator reference``, the
default) or from bscrit's own engine (``--estimator bscrit``, see :func:`measure_bscrit`).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # run as a script or imported by path: find data/models/noise
    sys.path.insert(0, str(HERE))

from data import load_tensors  # noqa: E402
from models import make_model_for  # noqa: E402
from noise import batch_noise, scale_invariant_names  # noqa: E402

C2 = 2.0  # the paper's threshold C² ([LMA21] Fig. 3)
FAIL_REL = 0.2  # LSR failed where test error > (1 + FAIL_REL) × best ([LMA21] Fig. 3)


# ----------------------------------------------------------------------------------------------
# Settings
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One LSR sweep: a data set, a network and a base (B0, η0, λ) with its schedule.

    The sweep trains at every B in ``batch_sizes`` with LR ``base_lr · B / base_batch`` (LSR).
    ``ckpt_epochs`` are the constant-LR-phase epochs whose checkpoints are measured;
    ``baselines`` are the batch sizes whose measurements define the predicted range.
    """

    name: str
    dataset: str
    affine: bool
    width: int
    base_batch: int
    base_lr: float
    weight_decay: float
    epochs: int
    decay_epoch: int
    batch_sizes: tuple[int, ...]
    baselines: tuple[int, ...]
    ckpt_epochs: tuple[int, ...]
    seeds: tuple[int, ...] = (0, 1, 2)
    measure_seeds: tuple[int, ...] = (0,)
    min_batches: int = 200  # k = max(min_batches, ceil(batches_per_n · n / B))
    batches_per_n: float = 4.0
    label: str = ""

    def lr(self, batch_size: int) -> float:
        """LSR: η = η0 · B / B0 ([LMA21] Def. 2.1)."""
        return self.base_lr * batch_size / self.base_batch


def _settings(mode: str) -> list[Setting]:
    if mode == "smoke":
        return [
            Setting(
                name="digits-si-smoke",
                dataset="digits",
                affine=False,
                width=32,
                base_batch=32,
                base_lr=0.1,
                weight_decay=5e-3,
                epochs=12,
                decay_epoch=9,
                batch_sizes=(32, 128, 512),
                baselines=(32, 128),
                ckpt_epochs=(6, 9),
                seeds=(0, 1),
                min_batches=40,
                batches_per_n=0.5,
                label="digits, scale-invariant MLP (smoke)",
            )
        ]
    seeds = (0, 1, 2, 3, 4)
    mnist1d = dict(
        dataset="mnist1d",
        width=128,
        base_batch=16,
        base_lr=0.05,
        weight_decay=5e-3,
        epochs=100,
        decay_epoch=80,
        batch_sizes=(16, 32, 64, 128, 256, 512, 1024, 2048),
        baselines=(16, 32, 64),
        ckpt_epochs=(55, 60, 65, 70, 75, 80),
        seeds=seeds,
    )
    return [
        Setting(
            name="mnist1d-si",
            affine=False,
            label="MNIST-1D, scale-invariant MLP (BN, fixed last layer)",
            **mnist1d,
        ),
        Setting(
            name="mnist1d-affine",
            affine=True,
            label="MNIST-1D, ordinary MLP (affine BN, trainable last layer)",
            **mnist1d,
        ),
        Setting(
            name="digits-si",
            dataset="digits",
            affine=False,
            width=64,
            base_batch=8,
            base_lr=0.025,
            weight_decay=5e-3,
            epochs=200,
            decay_epoch=160,
            batch_sizes=(8, 16, 32, 64, 128, 256, 512, 1024),
            baselines=(8, 16, 32),
            ckpt_epochs=(110, 120, 130, 140, 150, 160),
            seeds=seeds,
            label="digits, scale-invariant MLP (BN, fixed last layer)",
        ),
    ]


# ----------------------------------------------------------------------------------------------
# (a) one training run
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def _evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(mean cross-entropy, error rate) in eval mode."""
    was = model.training
    model.eval()
    logits = model(x)
    loss = float(F.cross_entropy(logits, y))
    err = float((logits.argmax(1) != y).float().mean())
    model.train(was)
    return loss, err


def train_run(
    dataset: str,
    B: int,
    lr: float,
    epochs: int,
    decay_epoch: int | None,
    seed: int,
    *,
    affine: bool = False,
    width: int = 128,
    weight_decay: float = 5e-3,
    momentum: float = 0.0,
    decay_factor: float = 0.1,
    ckpt_epochs: Sequence[int] = (),
    ckpt_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Train one run with SGD (random reshuffling, incomplete last batch dropped) and evaluate it.

    Args:
        dataset: "mnist1d" or "digits".
        B: batch size.
        lr: LR of the constant phase (×``decay_factor`` after epoch ``decay_epoch``).
        epochs: total epochs.
        decay_epoch: last epoch of the constant-LR phase (None: no decay).
        seed: seeds the initialisation and the batch order.
        affine: ordinary (True) or scale-invariant (False) network.
        width: hidden width.
        weight_decay: coupled weight decay λ (unchanged by LSR).
        momentum: SGD momentum.
        decay_factor: LR multiplier after ``decay_epoch``.
        ckpt_epochs: epochs after which to keep a checkpoint (state_dict copies, in memory).
        ckpt_dir: also ``torch.save`` them (and the final model) there when given.

    Returns:
        Dict: ``test_error``, ``test_loss``, ``train_error``, ``train_loss`` (final, eval mode),
        ``R_history`` (‖x‖² of the scale-invariant weights per epoch), ``checkpoints``
        (list of ``(epoch, state_dict)``), ``paths`` (files written), ``seconds``, ``diverged``.
    """
    x_tr, y_tr = load_tensors(dataset, "train")
    x_te, y_te = load_tensors(dataset, "test")
    n = len(y_tr)
    if B > n:
        raise ValueError(f"B={B} > n={n}")
    model = make_model_for(dataset, width, affine, seed)
    model.train()
    si = set(scale_invariant_names(model))
    si_params = [p for nm, p in model.named_parameters() if nm in si]
    opt = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad],
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
    )
    gen = torch.Generator().manual_seed(1_000_003 * seed + B)
    steps = n // B
    keep = set(ckpt_epochs)
    ckpts: list[tuple[int, dict[str, torch.Tensor]]] = []
    paths: list[str] = []
    r_hist: list[float] = []
    diverged = False
    t0 = time.perf_counter()
    tag = f"{dataset}-{'affine' if affine else 'si'}-w{width}-B{B}-lr{lr:g}-s{seed}"
    for epoch in range(1, epochs + 1):
        cur = lr * (decay_factor if decay_epoch is not None and epoch > decay_epoch else 1.0)
        for g in opt.param_groups:
            g["lr"] = cur
        perm = torch.randperm(n, generator=gen)
        for s in range(steps):
            idx = perm[s * B : (s + 1) * B]
            loss = F.cross_entropy(model(x_tr[idx]), y_tr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if not math.isfinite(loss.item()):
            diverged = True
            break
        with torch.no_grad():
            r_hist.append(float(sum(p.double().pow(2).sum() for p in si_params)))
        if epoch in keep:
            state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            ckpts.append((epoch, state))
            if ckpt_dir is not None:
                path = Path(ckpt_dir) / f"{tag}-e{epoch:04d}.pt"
                path.parent.mkdir(parents=True, exist_ok=True)
                torch.save({"model": state, "epoch": epoch, "batch_size": B}, path)
                paths.append(str(path))
    tr_loss, tr_err = _evaluate(model, x_tr, y_tr)
    te_loss, te_err = _evaluate(model, x_te, y_te)
    if diverged or not math.isfinite(te_loss):
        diverged = True
        te_err = tr_err = 1.0
    return dict(
        test_error=te_err,
        test_loss=te_loss,
        train_error=tr_err,
        train_loss=tr_loss,
        R_history=r_hist,
        checkpoints=ckpts,
        paths=paths,
        seconds=time.perf_counter() - t0,
        diverged=diverged,
    )


# ----------------------------------------------------------------------------------------------
# (c) measuring G and N at a checkpoint
# ----------------------------------------------------------------------------------------------


def measure_reference(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, B: int, k: int, seed: int
) -> dict[str, dict[str, float]]:
    """G, N^B, NSR (+ jackknife SEs) by the brute-force reference (``noise.batch_noise``)."""
    res = batch_noise(model, x, y, B, num_batches=k, groups=10, seed=seed)
    return {key: v.to_dict() for key, v in res.items()}


def measure_bscrit(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, B: int, k: int, seed: int
) -> dict[str, dict[str, float]]:
    """HOOK: the same numbers from bscrit's own engine (``bscrit.engine.loop.measure_model``).

    Adapts to the engine's current return type (a ``RawMeasurement`` of per-tensor sums, turned
    into ParamSetStats by ``bscrit.stats.summary.param_set_stats``). If the engine's interface
    changes, this is the one function to update.
    """
    from torch.utils.data import TensorDataset

    from bscrit.engine.loop import measure_model
    from bscrit.stats.summary import param_set_stats

    raw = measure_model(
        model,
        TensorDataset(x, y),
        F.cross_entropy,
        batch_size=B,
        num_batches=k,
        groups=10,
        seed=seed,
        device="cpu",
        mode="train",
    )
    sets = {
        "all": list(raw.tensors),
        "scale_invariant": [t for t in raw.tensors if t.is_scale_invariant(raw.tau)],
    }
    out: dict[str, dict[str, float]] = {}
    for key, tensors in sets.items():
        if not tensors:
            nan = math.nan
            out[key] = dict(G=nan, N=nan, nsr=nan, G_se=nan, N_se=nan, nsr_se=nan, R=0.0)
            continue
        s = param_set_stats(tensors)
        lo, hi = s.nsr_ci95
        out[key] = dict(
            G=s.G,
            N=s.N,
            nsr=s.nsr,
            G_se=s.G_se,
            N_se=s.N_se,
            nsr_se=(hi - lo) / (2 * 1.96) if math.isfinite(hi) else math.inf,
            R=s.R,
            num_params=s.num_params,
            batch_size=B,
            num_batches=k,
        )
    return out


ESTIMATORS: dict[str, Callable[..., dict[str, dict[str, float]]]] = {
    "reference": measure_reference,
    "bscrit": measure_bscrit,
}


# ----------------------------------------------------------------------------------------------
# (b) the sweep: jobs = (setting, B, seed); each trains and, for measure seeds, measures
# ----------------------------------------------------------------------------------------------


@dataclass
class Job:
    setting: Setting
    B: int
    seed: int
    estimator: str = "reference"
    ckpt_dir: str | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)


def run_job(job: Job) -> dict[str, Any]:
    """Train one run of the sweep; measure its constant-phase checkpoints if it is a baseline."""
    torch.set_num_threads(1)
    st, B, seed = job.setting, job.B, job.seed
    lr = st.lr(B)
    measure = seed in st.measure_seeds
    res = train_run(
        st.dataset,
        B,
        lr,
        st.epochs,
        st.decay_epoch,
        seed,
        affine=st.affine,
        width=st.width,
        weight_decay=st.weight_decay,
        ckpt_epochs=st.ckpt_epochs if measure else (),
        ckpt_dir=job.ckpt_dir,
    )
    run_row = dict(
        setting=st.name,
        dataset=st.dataset,
        affine=st.affine,
        B=B,
        lr=lr,
        weight_decay=st.weight_decay,
        seed=seed,
        test_error=res["test_error"],
        train_error=res["train_error"],
        test_loss=res["test_loss"],
        train_loss=res["train_loss"],
        R_final=res["R_history"][-1] if res["R_history"] else math.nan,
        R_at_decay=(
            res["R_history"][st.decay_epoch - 1]
            if len(res["R_history"]) >= st.decay_epoch
            else math.nan
        ),
        diverged=res["diverged"],
        train_seconds=res["seconds"],
    )
    noise_rows: list[dict[str, Any]] = []
    if measure and not res["diverged"]:
        x, y = load_tensors(st.dataset, "train")
        n = len(y)
        k = max(st.min_batches, math.ceil(st.batches_per_n * n / B))
        fn = ESTIMATORS[job.estimator]
        for epoch, state in res["checkpoints"]:
            model = make_model_for(st.dataset, st.width, st.affine, seed)
            model.load_state_dict(state)
            t0 = time.perf_counter()
            m = fn(model, x, y, B, k, 1000 + epoch)
            dt = time.perf_counter() - t0
            for key, v in m.items():
                g, nb, r = v["G"], v["N"], v["R"]
                eta, lam = lr, st.weight_decay
                rho = (2 - eta * lam) * lam * r / (eta * (g + nb)) - 1 if g + nb > 0 else math.nan
                noise_rows.append(
                    dict(
                        setting=st.name,
                        B=B,
                        lr=lr,
                        seed=seed,
                        epoch=epoch,
                        params=key,
                        G=g,
                        G_se=v["G_se"],
                        N=nb,
                        N_se=v["N_se"],
                        nsr=v["nsr"],
                        nsr_se=v["nsr_se"],
                        R=r,
                        rho=rho if key == "scale_invariant" else math.nan,
                        k=k,
                        measure_seconds=dt,
                    )
                )
    return dict(run=run_row, noise=noise_rows)


# ----------------------------------------------------------------------------------------------
# (d) analysis: predicted vs observed critical batch size
# ----------------------------------------------------------------------------------------------


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


def _std(xs: Sequence[float]) -> float:
    if len(xs) < 2:
        return 0.0
    m = _mean(xs)
    return math.sqrt(sum((v - m) ** 2 for v in xs) / (len(xs) - 1))


def analyse(
    st: Setting, runs: list[dict[str, Any]], noise: list[dict[str, Any]], params: str
) -> dict[str, Any]:
    """Observed failure region, per-B equilibrium noise and the predicted B* range of a setting.

    Args:
        params: which parameter set's G and N feed the prediction ("scale_invariant" or "all").
    """
    per_b: list[dict[str, Any]] = []
    for B in st.batch_sizes:
        errs = [r["test_error"] for r in runs if r["setting"] == st.name and r["B"] == B]
        rows = [
            r for r in noise if r["setting"] == st.name and r["B"] == B and r["params"] == params
        ]
        g = _mean([r["G"] for r in rows])
        nb = _mean([r["N"] for r in rows])
        c = len(rows)
        g_se = math.sqrt(sum(r["G_se"] ** 2 for r in rows)) / c if c else math.nan
        n_se = math.sqrt(sum(r["N_se"] ** 2 for r in rows)) / c if c else math.nan
        nsr = nb / g if c and g > 0 else (math.inf if c else math.nan)
        # delta method for N̄/Ḡ (G and N errors treated as independent: a rough 1-sigma)
        nsr_se = nsr * math.sqrt((g_se / g) ** 2 + (n_se / nb) ** 2) if c and g > 0 else math.nan
        per_b.append(
            dict(
                B=B,
                lr=st.lr(B),
                test_error_mean=_mean(errs),
                test_error_std=_std(errs),
                n_seeds=len(errs),
                G=g,
                G_se=g_se,
                N=nb,
                N_se=n_se,
                nsr=nsr,
                nsr_se=nsr_se,
                gn=1 / nsr if c and nsr > 0 else math.nan,
                rho_mean=_mean(
                    [
                        r["rho"]
                        for r in noise
                        if r["setting"] == st.name
                        and r["B"] == B
                        and r["params"] == "scale_invariant"
                    ]
                ),
                n_ckpts=c,
                B_star=C2 * (B + B * nsr) if c else math.nan,
                B_star_approx=C2 * B * nsr if c else math.nan,
            )
        )
    valid = [p for p in per_b if math.isfinite(p["test_error_mean"])]
    best_p = min(valid, key=lambda p: p["test_error_mean"])
    best, best_b = best_p["test_error_mean"], best_p["B"]
    for p in per_b:
        p["lsr_failed"] = p["test_error_mean"] > (1 + FAIL_REL) * best
    # the failure region of Fig. 3 is on the large-batch side of the best run; failures below it
    # (the base itself worse than a larger batch) are reported separately
    failing = [p["B"] for p in per_b if p["lsr_failed"] and p["B"] > best_b]
    failing_small = [p["B"] for p in per_b if p["lsr_failed"] and p["B"] < best_b]
    first_fail = min(failing) if failing else None
    passing = [
        p["B"] for p in per_b if not p["lsr_failed"] and (first_fail is None or p["B"] < first_fail)
    ]
    last_ok = max(passing) if passing else None
    base = [p for p in per_b if p["B"] in st.baselines and math.isfinite(p["B_star"])]
    pred = {}
    for key in ("B_star", "B_star_approx"):
        vals = [p[key] for p in base]
        pred[key] = (min(vals), max(vals)) if vals else (math.nan, math.nan)
    lo, hi = pred["B_star"]
    if first_fail is not None:
        ratio = (lo / first_fail, hi / first_fail)
        # the true threshold lies in (last_ok, first_fail]: consistent if the ranges overlap
        consistent = lo <= first_fail and hi > (last_ok or 0)
        verdict = (
            "consistent"
            if consistent
            else ("predicts too early" if hi <= (last_ok or 0) else "predicts too late")
        )
    else:
        ratio = (math.nan, math.nan)
        consistent = lo > max(st.batch_sizes)
        verdict = (
            "consistent (no failure observed, none predicted in range)"
            if consistent
            else f"no failure observed up to B={max(st.batch_sizes)}; predicted from B*={lo:.0f}"
        )
    return dict(
        setting=st.name,
        label=st.label,
        params=params,
        per_batch=per_b,
        best_error=best,
        best_batch=best_b,
        failing=failing,
        failing_below_best=failing_small,
        observed_first_fail=first_fail,
        observed_last_ok=last_ok,
        predicted_min=lo,
        predicted_max=hi,
        predicted_approx_min=pred["B_star_approx"][0],
        predicted_approx_max=pred["B_star_approx"][1],
        ratio_min=ratio[0],
        ratio_max=ratio[1],
        verdict=verdict,
        baselines=list(st.baselines),
    )


# ----------------------------------------------------------------------------------------------
# outputs
# ----------------------------------------------------------------------------------------------


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys and not isinstance(r[k], (list, dict))]
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def _f(x: float, nd: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, float) and not math.isfinite(x):
        return "inf" if x == math.inf else "nan"
    return f"{x:.{nd}g}"


def _failed_label(p: dict[str, Any], a: dict[str, Any]) -> str:
    if not p["lsr_failed"]:
        return "no"
    return "yes" if p["B"] > a["best_batch"] else "yes (below best B)"


def write_markdown(
    path: Path, settings: list[Setting], analyses: list[dict[str, Any]], meta: dict[str, Any]
) -> None:
    """results.md: one table per setting and a summary table."""
    lines = [
        f"# LSR validation study ({meta['mode']})",
        "",
        f"Runtime {meta['seconds']:.0f} s on {meta['jobs']} worker(s); estimator "
        f"`{meta['estimator']}`; C² = {C2:g}; failure = mean test error > "
        f"{1 + FAIL_REL:g} × best. G and N are measured in train mode on the scale-invariant "
        "weights (the set the theorems cover), averaged over the constant-LR-phase checkpoints "
        "of the seed-0 run at each B. B* = C²(B + B·N/G) (exact Thm 5.6), B*≈ = C²·B·N/G.",
        "",
        "## Summary",
        "",
        "| setting | baselines B | predicted B* (min–max) | B*≈ (min–max) | last passing B | "
        "first failing B | B*/B_fail (min–max) | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for a in analyses:
        lines.append(
            f"| {a['setting']} | {', '.join(map(str, a['baselines']))} | "
            f"{_f(a['predicted_min'])}–{_f(a['predicted_max'])} | "
            f"{_f(a['predicted_approx_min'])}–{_f(a['predicted_approx_max'])} | "
            f"{a['observed_last_ok'] if a['observed_last_ok'] is not None else '–'} | "
            f"{a['observed_first_fail'] if a['observed_first_fail'] is not None else 'none'} | "
            f"{_f(a['ratio_min'], 2)}–{_f(a['ratio_max'], 2)} | {a['verdict']} |"
        )
    for st, a in zip(settings, analyses, strict=True):
        lines += [
            "",
            f"## {st.name}: {st.label}",
            "",
            f"B0 = {st.base_batch}, η0 = {st.base_lr:g}, λ = {st.weight_decay:g}, "
            f"{st.epochs} epochs, LR ×0.1 after epoch {st.decay_epoch}, seeds "
            f"{list(st.seeds)}, checkpoints at epochs {list(st.ckpt_epochs)}. "
            f"Best mean test error {_f(a['best_error'])} at B = {a['best_batch']}."
            + (
                " Runs *below* the best batch size that miss the 20% criterion (the small-batch "
                f"side, not LSR's failure region): B = {a['failing_below_best']}."
                if a["failing_below_best"]
                else ""
            ),
            "",
            "| B | η | test error (mean ± sd) | LSR failed | G | N^B | NSR = N/G | ρ | "
            "B* = C²(B+B·NSR) | B*≈ |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for p in a["per_batch"]:
            lines.append(
                f"| {p['B']} | {_f(p['lr'])} | {p['test_error_mean']:.4f} ± "
                f"{p['test_error_std']:.4f} | {_failed_label(p, a)} | "
                f"{_f(p['G'])} | {_f(p['N'])} | {_f(p['nsr'])} ± {_f(p['nsr_se'], 2)} | "
                f"{_f(p['rho_mean'], 2)} | {_f(p['B_star'], 4)} | {_f(p['B_star_approx'], 4)} |"
            )
    path.write_text("\n".join(lines) + "\n")


def _xrange(st: Setting, a: dict[str, Any]) -> tuple[float, float]:
    """x-axis limits that show every batch size and the whole predicted range."""
    hi = max(st.batch_sizes) * 2.0
    if math.isfinite(a["predicted_max"]):
        hi = max(hi, a["predicted_max"] * 1.5)
    return min(st.batch_sizes) / 2, hi


def plot(out_dir: Path, settings: list[Setting], analyses: list[dict[str, Any]]) -> list[Path]:
    """fig_gn.png (G/N vs B, like [LMA21] Fig. 3) and fig_test_error.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(settings)
    fig, axes = plt.subplots(1, k, figsize=(5.2 * k, 4.2), squeeze=False)
    for ax, st, a in zip(axes[0], settings, analyses, strict=True):
        pts = [p for p in a["per_batch"] if math.isfinite(p["gn"])]
        bmin, bmax = _xrange(st, a)
        if a["observed_first_fail"] is not None:
            lo_fail = (
                math.sqrt(a["observed_first_fail"] * a["observed_last_ok"])
                if a["observed_last_ok"]
                else a["observed_first_fail"]
            )
            ax.axvspan(lo_fail, bmax, color="red", alpha=0.15, label="LSR failed (observed)")
        if math.isfinite(a["predicted_min"]):
            ax.axvspan(
                a["predicted_min"],
                a["predicted_max"],
                color="green",
                alpha=0.2,
                label="predicted B* range (exact)",
            )
        ax.axhline(C2, color="k", ls="--", lw=1, label=f"C² = {C2:g}")
        if pts:
            ax.errorbar(
                [p["B"] for p in pts],
                [p["gn"] for p in pts],
                yerr=[
                    p["gn"] * p["nsr_se"] / p["nsr"] if math.isfinite(p["nsr_se"]) else 0
                    for p in pts
                ],
                fmt="o",
                color="k",
                ms=4,
                label="G/N^B measured (seed 0)",
            )
        base = sorted((p for p in pts if p["B"] in st.baselines), key=lambda p: p["B_star_approx"])
        xs = [bmin, bmax]
        for p, color, lab in (
            ((base[0], "tab:blue", "min"), (base[-1], "tab:green", "max")) if base else ()
        ):
            ax.plot(
                xs,
                [p["gn"] * x / p["B"] for x in xs],
                color=color,
                lw=1.2,
                label=f"slope 1 from B={p['B']} ({lab} B*≈{p['B_star_approx']:.0f})",
            )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlim(bmin, bmax)
        ax.set_xlabel("batch size B (LSR: η ∝ B)")
        ax.set_ylabel("G / N^B")
        ax.set_title(st.label, fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    p1 = out_dir / "fig_gn.png"
    fig.savefig(p1, dpi=130)
    plt.close(fig)

    fig, axes = plt.subplots(1, k, figsize=(5.2 * k, 3.8), squeeze=False)
    for ax, st, a in zip(axes[0], settings, analyses, strict=True):
        pb = a["per_batch"]
        bmin, bmax = _xrange(st, a)
        if a["observed_first_fail"] is not None:
            lo_fail = (
                math.sqrt(a["observed_first_fail"] * a["observed_last_ok"])
                if a["observed_last_ok"]
                else a["observed_first_fail"]
            )
            ax.axvspan(lo_fail, bmax, color="red", alpha=0.15, label="LSR failed (observed)")
        ax.errorbar(
            [p["B"] for p in pb],
            [p["test_error_mean"] for p in pb],
            yerr=[p["test_error_std"] for p in pb],
            fmt="o-",
            color="k",
            ms=4,
            capsize=3,
            label=f"final test error (mean ± sd, {len(st.seeds)} seeds)",
        )
        ax.axhline((1 + FAIL_REL) * a["best_error"], color="red", ls="--", lw=1, label="1.2 × best")
        if math.isfinite(a["predicted_min"]):
            ax.axvspan(
                a["predicted_min"],
                a["predicted_max"],
                color="green",
                alpha=0.2,
                label="predicted B* range",
            )
        ax.set_xscale("log", base=2)
        ax.set_xlim(bmin, bmax)
        ax.set_xlabel("batch size B (LSR: η ∝ B)")
        ax.set_ylabel("test error")
        ax.set_title(st.label, fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    p2 = out_dir / "fig_test_error.png"
    fig.savefig(p2, dpi=130)
    plt.close(fig)
    return [p1, p2]


# ----------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------


def run_study(
    mode: str = "full",
    out_dir: Path | None = None,
    jobs: int = 1,
    estimator: str = "reference",
    settings: Sequence[str] | None = None,
    save_ckpts: bool = False,
    params: str = "scale_invariant",
) -> dict[str, Any]:
    """Run the study (all settings of ``mode``) and write CSV, markdown, JSON and figures."""
    sts = _settings(mode)
    if settings:
        sts = [s for s in sts if s.name in settings]
        if not sts:
            raise SystemExit(f"no setting named {list(settings)}")
    out = out_dir or (HERE / "results" / ("smoke" if mode == "smoke" else ""))
    out.mkdir(parents=True, exist_ok=True)
    ckpt_dir = str(HERE / "ckpts") if save_ckpts else None
    job_list = [
        Job(st, B, seed, estimator, ckpt_dir)
        for st in sts
        for seed in st.seeds
        for B in st.batch_sizes
    ]
    t0 = time.perf_counter()
    results: list[dict[str, Any]] = []
    if jobs > 1:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(jobs) as pool:
            for i, r in enumerate(pool.imap_unordered(run_job, job_list), 1):
                results.append(r)
                _log_job(r, i, len(job_list), t0)
    else:
        for i, job in enumerate(job_list, 1):
            r = run_job(job)
            results.append(r)
            _log_job(r, i, len(job_list), t0)
    runs = sorted((r["run"] for r in results), key=lambda r: (r["setting"], r["B"], r["seed"]))
    noise = sorted(
        (row for r in results for row in r["noise"]),
        key=lambda r: (r["setting"], r["B"], r["epoch"], r["params"]),
    )
    analyses = [analyse(st, runs, noise, params) for st in sts]
    seconds = time.perf_counter() - t0
    meta = dict(
        mode=mode,
        seconds=seconds,
        jobs=jobs,
        estimator=estimator,
        c2=C2,
        fail_rel=FAIL_REL,
        torch=torch.__version__,
        cpu_count=os.cpu_count(),
    )
    _write_csv(out / "runs.csv", runs)
    _write_csv(out / "noise.csv", noise)
    _write_csv(
        out / "per_batch.csv",
        [dict(setting=a["setting"], **p) for a in analyses for p in a["per_batch"]],
    )
    _write_csv(
        out / "summary.csv", [{k: v for k, v in a.items() if k != "per_batch"} for a in analyses]
    )
    write_markdown(out / "results.md", sts, analyses, meta)
    (out / "results.json").write_text(
        json.dumps(
            dict(
                meta=meta,
                settings=[asdict(s) for s in sts],
                analyses=analyses,
                runs=runs,
                noise=noise,
            ),
            indent=1,
            default=lambda o: None,
        )
        .replace("Infinity", "null")
        .replace("NaN", "null")
    )
    figs = plot(out, sts, analyses)
    return dict(out=out, analyses=analyses, seconds=seconds, figures=figs, runs=runs, noise=noise)


def _log_job(r: dict[str, Any], i: int, total: int, t0: float) -> None:
    run = r["run"]
    msg = (
        f"[{i:3d}/{total}] {run['setting']:>16} B={run['B']:<5d} lr={run['lr']:<8.4g} "
        f"seed={run['seed']} test_err={run['test_error']:.4f} R={run['R_final']:.3g} "
        f"({run['train_seconds']:.1f}s)"
    )
    si = [n for n in r["noise"] if n["params"] == "scale_invariant"]
    if si:
        g = _mean([n["G"] for n in si])
        nb = _mean([n["N"] for n in si])
        msg += (
            f"  G={g:.3g} N={nb:.3g} NSR={nb / g if g > 0 else math.inf:.3g} "
            f"rho={_mean([n['rho'] for n in si]):+.2f}"
        )
    print(msg, f"[{time.perf_counter() - t0:.0f}s]", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="Validate the [LMA21] Thm 5.6 critical-batch prediction against LSR sweeps "
        "(protocol of Fig. 3 / App. F.2) on MNIST-1D and digits."
    )
    p.add_argument("--smoke", action="store_true", help="tiny version (< 1 min) for CI")
    p.add_argument("--out", type=Path, default=None, help="output folder (default results/)")
    p.add_argument("--jobs", type=int, default=1, help="worker processes (1 thread each)")
    p.add_argument(
        "--estimator",
        choices=sorted(ESTIMATORS),
        default="reference",
        help="G/N estimator: brute-force reference or bscrit's engine",
    )
    p.add_argument("--setting", action="append", default=None, help="run only these settings")
    p.add_argument(
        "--params",
        choices=("scale_invariant", "all"),
        default="scale_invariant",
        help="parameter set whose G and N feed the prediction",
    )
    p.add_argument("--save-ckpts", action="store_true", help="torch.save checkpoints to ckpts/")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    res = run_study(
        mode="smoke" if a.smoke else "full",
        out_dir=a.out,
        jobs=a.jobs,
        estimator=a.estimator,
        settings=a.setting,
        save_ckpts=a.save_ckpts,
        params=a.params,
    )
    print()
    print((res["out"] / "results.md").read_text())
    print(
        f"wrote {res['out']}/{{runs,noise,per_batch,summary}}.csv, results.md, results.json, "
        f"{', '.join(f.name for f in res['figures'])}  ({res['seconds']:.0f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
