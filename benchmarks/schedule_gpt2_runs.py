"""The tiny GPT-2 trained along bscrit's schedule against the fixed batch (issue 16, evidence).

``benchmarks/schedule_gpt2.py`` measured B*(t) on the run of
``examples/callbacks/hf_tiny_gpt2.py`` (B = 16, AdamW lr 1e-3, wd 0.01, linear decay to 0 over
800 steps = 12,800 examples) and wrote ``schedule_results/gpt2/schedule.json``. Here the same
model trains, with a plain PyTorch loop, for the same 12,800 examples in three arms, 3 seeds each:

- ``fixed``: B = 16 throughout, the run's hyperparameters;
- ``schedule``: the stages of ``schedule.json`` (batch size and square-root-scaled AdamW
  hyperparameters, switched by examples seen);
- ``control``: the last stage's batch size and hyperparameters from the first step.

The LR of every arm is its stage's LR × (1 − examples seen / 12,800), the linear decay of the
measured run expressed in examples. Batches are consecutive slices of per-epoch shuffles. Reported:
final held-out loss (mean per predicted byte, on other standard-library files) and optimizer steps.

At each stage switch from B to B' = κB the AdamW state is carried over with the first moment m
unchanged and the second moment v divided by κ ([MLPA22] Thms 4.2/4.5 track u = v/σ², Thm 5.3
compares runs whose states agree, and σ² ∝ 1/B; exact where the noise dominates v), as
``bscrit confirm`` does at its branch point. ``--second-moment keep`` carries v unchanged (the
first version of this benchmark did, which confounds its result: docs/schedule.md) and writes
``runs-keep-v.json``/``.md`` instead.

    python benchmarks/schedule_gpt2_runs.py            # ~3 min on one CPU thread
    python benchmarks/schedule_gpt2_runs.py --second-moment keep   # the confounded version
    python benchmarks/schedule_gpt2_runs.py --examples 640 --seeds 1   # smoke
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import transformers

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "schedule_results" / "gpt2"
HELD_OUT = ("glob.py", "bisect.py", "keyword.py", "reprlib.py", "linecache.py", "genericpath.py")


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        vocab_size=256, n_positions=64, n_embd=32, n_layer=2, n_head=2, bos_token_id=0,
        eos_token_id=0,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(config)


def _loss(model: torch.nn.Module, ds, idx: list[int]) -> torch.Tensor:
    batch = {k: torch.stack([ds[i][k] for i in idx]) for k in ("input_ids", "attention_mask",
                                                                 "labels")}  # fmt: skip
    return model(**batch).loss


@torch.no_grad()
def _held_out_loss(model: torch.nn.Module, ds) -> float:
    model.eval()
    total, count = 0.0, 0
    for s in range(0, len(ds), 256):
        idx = list(range(s, min(s + 256, len(ds))))
        labels = torch.stack([ds[i]["labels"] for i in idx])
        n = int((labels[:, 1:] != -100).sum())
        total += float(_loss(model, ds, idx)) * n
        count += n
    model.train()
    return total / count


def _stage_at(stages: list[dict], examples: int) -> dict:
    return [s for s in stages if s["start_examples"] <= examples][-1]


def _switch_state(opt: torch.optim.Optimizer, state: dict, kappa: float) -> None:
    """Load the previous stage's AdamW state into ``opt`` (its own hyperparameters kept), with the
    second moment v divided by κ = B'/B and the first moment m unchanged ([MLPA22])."""
    for k in ("lr", "betas", "eps", "weight_decay"):
        for grp in state["param_groups"]:
            grp[k] = opt.param_groups[0][k]
    opt.load_state_dict(state)
    for st in opt.state.values():
        if "exp_avg_sq" in st:
            st["exp_avg_sq"].div_(kappa)


def train(
    arm: str, stages: list[dict], seed: int, examples: int, train_ds, held_ds, rescale_v: bool
) -> dict:
    model = _model(seed)
    g = torch.Generator().manual_seed(1000 + seed)
    order: list[int] = []
    seen = steps = 0
    opt = None
    current = None
    while seen < examples:
        st = stages[-1] if arm == "control" else _stage_at(stages, seen)
        if arm == "fixed":
            st = stages[0]
        h = st["hyperparameters"]
        if st is not current:  # a new stage: AdamW with its hyperparameters, state carried over
            state = None if opt is None else opt.state_dict()
            opt = torch.optim.AdamW(model.parameters(), lr=h["lr"], betas=(h["beta1"], h["beta2"]),
                                    eps=h["eps"], weight_decay=h["weight_decay"])  # fmt: skip
            if state is not None:
                kappa = st["batch_size"] / current["batch_size"] if rescale_v else 1.0
                _switch_state(opt, state, kappa)
            current = st
        b = st["batch_size"]
        while len(order) < b:
            order += torch.randperm(len(train_ds), generator=g).tolist()
        idx, order = order[:b], order[b:]
        for grp in opt.param_groups:
            grp["lr"] = h["lr"] * max(0.0, 1.0 - seen / examples)
        loss = _loss(model, train_ds, idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen += b
        steps += 1
    return {"arm": arm, "seed": seed, "steps": steps, "examples": seen,
            "held_out_loss": _held_out_loss(model, held_ds)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=12_800)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument(
        "--second-moment",
        choices=("rescale", "keep"),
        default="rescale",
        help="at a stage switch B -> κB: v/κ (default, [MLPA22]) or v unchanged",
    )
    a = ap.parse_args(argv)
    rescale = a.second_moment == "rescale"
    name = "runs" if rescale else "runs-keep-v"
    torch.set_num_threads(1)
    sys.path.insert(0, str(ROOT / "examples" / "hf-gpt2"))
    from data import make_dataset

    train_ds, held_ds = make_dataset(seq_len=64), make_dataset(seq_len=64, files=HELD_OUT)
    stages = json.loads((a.out / "schedule.json").read_text())["stages"]
    t0 = time.perf_counter()
    runs = [train(arm, stages, s, a.examples, train_ds, held_ds, rescale)
            for s in range(a.seeds) for arm in ("fixed", "schedule", "control")]  # fmt: skip
    v_words = ("v/κ, m unchanged" if rescale else "v and m unchanged (confounded: v should be "
               "divided by κ)")  # fmt: skip
    (a.out / f"{name}.json").write_text(
        json.dumps({"runs": runs, "stages": stages, "second_moment": a.second_moment}, indent=1)
    )
    md = [f"tiny GPT-2, {a.examples} training examples ({len(train_ds)} rows of 64 bytes), "
          f"held-out: {len(held_ds)} rows of other stdlib files; {a.seeds} seeds; "
          f"{time.perf_counter() - t0:.0f} s. AdamW state at a stage switch B -> κB: {v_words}.",
          "",
          "| arm | optimizer steps | held-out loss (mean ± sd) | Δ vs fixed (paired) |",
          "|---|---|---|---|"]  # fmt: skip
    fixed = {r["seed"]: r["held_out_loss"] for r in runs if r["arm"] == "fixed"}
    for arm in ("fixed", "schedule", "control"):
        rs = [r for r in runs if r["arm"] == arm]
        losses = [r["held_out_loss"] for r in rs]
        deltas = [r["held_out_loss"] - fixed[r["seed"]] for r in rs]
        sd = statistics.stdev(losses) if len(losses) > 1 else 0.0
        dsd = statistics.stdev(deltas) if len(deltas) > 1 else 0.0
        delta = "—" if arm == "fixed" else f"{statistics.mean(deltas):+.4f} ± {dsd:.4f}"
        md.append(f"| {arm} | {rs[0]['steps']} | {statistics.mean(losses):.4f} ± {sd:.4f} | "
                  f"{delta} |")  # fmt: skip
    (a.out / f"{name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
