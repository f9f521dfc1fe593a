"""Adam rule variants: where does each one hold? (docs/validation.md, "Adam rule variants")

The branched protocol of ``adaptive_sweep.py`` (its model, corpus, base run and failure
criterion, reused as they are), with the PyTorch default β₁ = 0.9, where [MLPA22]'s full rule
cannot reach κ ≥ 10:

1. Base run: the tiny causal LM on Python's standard library, AdamW at B0 = 16 (lr 1e-3,
   β = (0.9, 0.999), λ = 0.1), warm-up then constant LR, to the branch point.
2. Branches at B' = κ·B0 for the same number of tokens, with the hyperparameters of
   ``bscrit.theory.scaled.scale_hyperparameters(..., adam_rule=...)`` for ``full`` (η√κ,
   β' = 1 − κ(1 − β), ε/√κ, λ√κ) and ``lr-only`` (η√κ, the rest kept); both start from the branch
   point's m̂ and v̂/κ (docs/theory.md §8, "Adam state at a branch point"). 3 seeds.
3. Verdict per (variant, κ), fixed before the run (``adaptive_sweep.FAIL_Z``/``FAIL_ABS``):
   fails when D = L̄(κ) − L̄(1) > max(2·SE(D), 0.01 nats/char) of the held-out loss, else holds;
   a κ the variant cannot take is "refused" (bscrit's message recorded).

Run::

    python benchmarks/validation/adam_rule_variants.py \
        --out benchmarks/validation/results/adam_rules
    python benchmarks/validation/adam_rule_variants.py --smoke --out /tmp/adam-rules  # < 1 min
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import adaptive_sweep as sweep  # noqa: E402
from charlm import lm_loss, make_model, num_windows, sample_starts, windows  # noqa: E402

from bscrit.errors import UsageError  # noqa: E402
from bscrit.optim.registry import from_flat  # noqa: E402
from bscrit.runs.common.optimizer import make_optimizer  # noqa: E402
from bscrit.theory.scaled import scale_hyperparameters  # noqa: E402

FULL = replace(sweep.FULL, beta1=0.9, base_steps=1000, branch_steps=512,
               kappas=(1, 2, 4, 8, 16, 32), seeds=(0, 1, 2))  # fmt: skip
SMOKE = replace(sweep.SMOKE, beta1=0.9, kappas=(1, 2, 16), seeds=(0, 1))
RULES = ("full", "lr-only")


def branch(cfg, corpus, ev, theta, moments, kappa: int, seed: int, rule: str) -> dict[str, Any]:
    """One branch at κ·B0 under ``rule``, from (θ, m̂, v̂/κ); "refused" when it cannot scale."""
    bp = kappa * cfg.B0
    row: dict[str, Any] = {"rule": rule, "kappa": kappa, "B": bp, "seed": seed}
    try:
        sh = scale_hyperparameters(sweep.base_optimizer(cfg), cfg.B0, bp,
                                   steps=cfg.branch_steps, adam_rule=rule)  # fmt: skip
    except UsageError as e:
        return row | {"refused": str(e)}
    model = make_model(cfg.model_seed, cfg.d_model, cfg.layers, cfg.heads, cfg.context)
    model.load_state_dict(theta)
    model.train()
    opt = make_optimizer(list(model.parameters()), from_flat("adamw", sh.new))
    for p, (m_hat, v_hat) in zip(model.parameters(), moments, strict=True):
        opt.state[p] = {"step": torch.tensor(sweep.BIG_STEP), "exp_avg": m_hat.clone(),
                        "exp_avg_sq": v_hat / kappa}  # fmt: skip
    n = num_windows(corpus.train, cfg.context)
    gen = torch.Generator().manual_seed(1_000_003 * (seed + 1) + kappa)
    t0 = time.perf_counter()
    for _ in range(sh.steps[1]):
        x, y = windows(corpus.train, sample_starts(n, bp, gen), cfg.context)
        loss = lm_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    ho = sweep.evaluate(model, *ev)
    return row | {"steps": sh.steps[1], "hyperparameters": sh.new, "heldout_loss": ho,
                  "seconds": time.perf_counter() - t0}  # fmt: skip


def verdicts(runs: list[dict[str, Any]], kappas) -> list[dict[str, Any]]:
    base = [r["heldout_loss"] for r in runs if r["kappa"] == 1 and r["rule"] == "full"]
    mu0, se0, _ = sweep._mean_se(base)
    out = []
    for rule in RULES:
        for k in kappas[1:]:
            rs = [r for r in runs if r["rule"] == rule and r["kappa"] == k]
            if any("refused" in r for r in rs):
                out.append({"rule": rule, "kappa": k, "verdict": "refused",
                            "why": rs[0]["refused"]})  # fmt: skip
                continue
            mu, se, _ = sweep._mean_se([r["heldout_loss"] for r in rs])
            d, se_d = mu - mu0, math.hypot(se, se0)
            delta = max(sweep.FAIL_Z * se_d, sweep.FAIL_ABS)
            verdict = "fails" if d > delta or not math.isfinite(d) else "holds"
            out.append({"rule": rule, "kappa": k, "B": k * runs[0]["B"], "mean": mu, "D": d,
                        "se_D": se_d, "delta": delta, "verdict": verdict})  # fmt: skip
    return out


def table(rows: list[dict[str, Any]], b0: int) -> str:
    lines = ["| rule | κ | B' | D (nats/char) | δ | verdict |", "|---|---|---|---|---|---|"]
    for r in rows:
        if r["verdict"] == "refused":
            lines.append(f"| {r['rule']} | {r['kappa']} | {r['kappa'] * b0} | – | – | refused |")
        else:
            lines.append(f"| {r['rule']} | {r['kappa']} | {r['kappa'] * b0} | {r['D']:+.4f} ± "
                         f"{r['se_D']:.4f} | {r['delta']:.4f} | {r['verdict']} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=HERE / "results" / "adam_rules")
    ap.add_argument("--smoke", action="store_true", help="tiny configuration (numbers meaningless)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    cfg = SMOKE if args.smoke else FULL
    log = sweep.Clock()
    corpus = sweep.load_corpus(cfg.corpus_bytes)
    gen = torch.Generator().manual_seed(30_000)
    n_ho = num_windows(corpus.heldout, cfg.context)
    ev = windows(corpus.heldout, torch.randperm(n_ho, generator=gen)[: cfg.eval_windows],
                 cfg.context)  # fmt: skip
    model, opt, _ = sweep.train_base(cfg, corpus, ev, log)
    theta, moments, _ = sweep.branch_point_state(model, opt, cfg)
    runs = []
    for k in cfg.kappas:
        for rule in ("full",) if k == 1 else RULES:
            for seed in cfg.seeds:
                r = branch(cfg, corpus, ev, theta, moments, k, seed, rule)
                runs.append(r)
                log(f"{rule} κ={k} seed={seed}: {r.get('heldout_loss', 'refused')}")
    rows = verdicts(runs, cfg.kappas)
    md = table(rows, cfg.B0)
    print("\n" + md)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text(md + "\n")
    (args.out / "results.json").write_text(json.dumps(
        {"config": asdict(cfg), "runs": runs, "verdicts": rows, "runtime_s": log.elapsed,
         "torch": torch.__version__}, indent=1, default=str))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
