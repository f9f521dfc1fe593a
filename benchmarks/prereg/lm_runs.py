"""The LM settings' runs: the base run (AdamW, warm-up then constant LR) and the branches.

A branch at κ·B0 starts from the base run's checkpoint with the hyperparameters of the scaling
rule (``bscrit.theory.scaled.scale_hyperparameters``, per param group: the no-decay group keeps
λ = 0) and from the Adam state (θ, m̂, v̂/κ), bias corrections folded in (docs/theory.md §8, "Adam
state at a branch point"). Every branch sees ``branch_examples`` sequences (the same tokens at
every κ: ``branch_examples / (κ·B0)`` steps) at a constant LR, then the held-out loss is taken.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from common import heldout_loss, lm_loss, lm_param_groups, make_lm, sample_windows, tokenized
from settings import LmSetting

BIG_STEP = 1.0e7  # 1 − β^step == 1 for every β used here: the bias correction is folded in


def _optimizer(model: torch.nn.Module, st: LmSetting, hp: dict[str, Any]) -> torch.optim.AdamW:
    groups = lm_param_groups(model, hp["weight_decay"])
    return torch.optim.AdamW(groups, lr=hp["lr"], betas=tuple(hp["betas"]), eps=hp["eps"])


def train_base(st: LmSetting, dest: Path) -> dict[str, Any]:
    """Train the seed-0 base run to ``st.branch_step`` and save {model, optimizer, step}."""
    torch.set_num_threads(1)
    train, _, _ = tokenized()
    model = make_lm(st.d_model, st.layers, seed=0)
    model.train()
    opt = _optimizer(model, st, {"lr": st.lr, "betas": st.betas, "eps": st.eps,
                                 "weight_decay": st.weight_decay})  # fmt: skip
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / st.warmup_steps))
    gen = torch.Generator().manual_seed(12345)
    t0 = time.perf_counter()
    for _ in range(st.branch_step):
        x, y = sample_windows(train, st.B0, gen)
        loss = lm_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    dest.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "step": st.branch_step}, dest)  # fmt: skip
    return {"seconds": time.perf_counter() - t0, "heldout_loss": heldout_loss(model)}


def scaled(st: LmSetting, kappa: int, rule: str) -> dict[str, Any] | str:
    """The rule's hyperparameters at κ·B0, or bscrit's refusal message when it has none."""
    from bscrit.errors import UsageError
    from bscrit.optim.registry import from_flat
    from bscrit.theory.scaled import scale_hyperparameters

    base = from_flat("adamw", {"lr": st.lr, "betas": list(st.betas), "eps": st.eps,
                               "weight_decay": st.weight_decay})  # fmt: skip
    steps = st.branch_examples // st.B0
    try:
        sh = scale_hyperparameters(base, st.B0, kappa * st.B0, steps=steps, adam_rule=rule)
    except UsageError as e:
        return str(e)
    new = dict(sh.new)
    return {"lr": new["lr"], "betas": (new["beta1"], new["beta2"]), "eps": new["eps"],
            "weight_decay": new["weight_decay"]}  # fmt: skip


def branch(st: LmSetting, ckpt: Path, kappa: int, rule: str, seed: int) -> dict[str, Any]:
    """One branch; its held-out loss (nats/token), or ``undefined`` with bscrit's reason."""
    torch.set_num_threads(1)
    row: dict[str, Any] = {"kappa": kappa, "B": kappa * st.B0, "rule": rule, "seed": seed}
    hp = (
        scaled(st, kappa, rule)
        if kappa > 1
        else {"lr": st.lr, "betas": st.betas, "eps": st.eps, "weight_decay": st.weight_decay}
    )
    if isinstance(hp, str):
        return row | {"undefined": hp}
    saved = torch.load(ckpt, weights_only=True)
    model = make_lm(st.d_model, st.layers, seed=0)
    model.load_state_dict(saved["model"])
    model.train()
    opt = _optimizer(model, st, hp)
    b1, b2 = st.betas
    ids = [i for g in saved["optimizer"]["param_groups"] for i in g["params"]]
    params = [q for g in opt.param_groups for q in g["params"]]
    for i, p in zip(ids, params, strict=True):
        group_state = saved["optimizer"]["state"][i]
        t = float(group_state["step"])
        opt.state[p] = {"step": torch.tensor(BIG_STEP),
                        "exp_avg": group_state["exp_avg"] / (1 - b1**t),
                        "exp_avg_sq": group_state["exp_avg_sq"] / (1 - b2**t) / kappa}  # fmt: skip
    train, _, _ = tokenized()
    gen = torch.Generator().manual_seed(1_000_003 * (seed + 1) + kappa)
    steps = st.branch_examples // (kappa * st.B0)
    t0 = time.perf_counter()
    for _ in range(steps):
        x, y = sample_windows(train, kappa * st.B0, gen)
        loss = lm_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return row | {
        "steps": steps,
        "hyperparameters": {k: v for k, v in hp.items()},
        "heldout_loss": heldout_loss(model),
        "seconds": time.perf_counter() - t0,
    }
