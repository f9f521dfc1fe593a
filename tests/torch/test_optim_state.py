"""The optimizer registry against real ``torch.optim`` state_dicts (every optimizer it knows)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bscrit.errors import UsageError
from bscrit.load.checkpoints import load_checkpoint
from bscrit.optim import registry as optim
from bscrit.optim import saved
from bscrit.theory.scaled import scale_hyperparameters


def saved_state(make, steps: int = 2) -> dict:
    """``make(params)``'s state_dict after ``steps`` steps on a tiny model."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    opt = make(model.parameters())
    for _ in range(steps):
        opt.zero_grad()
        model(torch.randn(5, 3)).pow(2).mean().backward()
        opt.step()
    return opt.state_dict()


topt = torch.optim
CASES = [
    ("sgd", lambda p: topt.SGD(p, lr=0.1), {"lr": 0.1, "momentum": 0.0}),
    ("sgd", lambda p: topt.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4),
     {"momentum": 0.9, "weight_decay": 1e-4}),
    ("adam", lambda p: topt.Adam(p, lr=1e-3, betas=(0.8, 0.99)), {"beta1": 0.8, "beta2": 0.99}),
    ("adamw", lambda p: topt.AdamW(p, lr=1e-3, weight_decay=0.05), {"weight_decay": 0.05}),
    ("rmsprop", lambda p: topt.RMSprop(p, lr=1e-2, alpha=0.9), {"alpha": 0.9}),
    ("nadam", lambda p: topt.NAdam(p, lr=2e-3, momentum_decay=5e-3), {"momentum_decay": 5e-3}),
    ("radam", lambda p: topt.RAdam(p, lr=1e-3, eps=1e-6), {"eps": 1e-6}),
    ("adamax", lambda p: topt.Adamax(p, lr=2e-3, betas=(0.9, 0.98)), {"beta2": 0.98}),
    ("adagrad", lambda p: topt.Adagrad(p, lr=1e-2, lr_decay=1e-3), {"lr_decay": 1e-3}),
    ("asgd", lambda p: topt.ASGD(p, lr=1e-2, weight_decay=1e-3), {"weight_decay": 1e-3}),
]  # fmt: skip


@pytest.mark.parametrize("name,make,values", CASES, ids=[f"{c[0]}{i}" for i, c in enumerate(CASES)])
def test_real_state_dicts_are_recognised(name, make, values):
    sd = saved_state(make)
    reading = saved.read_state(sd)
    assert reading.note is None and reading.info is not None
    info = reading.info
    assert info.name == name and info.identified_by == "its saved state"
    v = optim.flat(info)
    for k, x in values.items():
        assert v[k] == pytest.approx(x), k
    # the group's keys alone (no state): the seam the HF loader calls
    assert saved.name_from_param_group(sd["param_groups"][0]) in (name, None)


def test_real_nesterov_and_decoupled_switches():
    sgd = saved.read_state(saved_state(lambda p: topt.SGD(p, lr=0.1, momentum=0.9, nesterov=True)))
    assert sgd.info.nesterov
    nadamw = saved.read_state(
        saved_state(lambda p: topt.NAdam(p, lr=2e-3, weight_decay=0.1, decoupled_weight_decay=True))
    ).info
    assert nadamw.decoupled_weight_decay and optim.decoupled(nadamw)
    s = scale_hyperparameters(nadamw, 64, 256)  # decoupled: λ' = √κ λ, as AdamW
    assert s.new["weight_decay"] == pytest.approx(0.2)
    assert s.new["momentum_decay"] == pytest.approx(4 * 4e-3)  # ψ' = κψ
    radam = saved.read_state(saved_state(lambda p: topt.RAdam(p, lr=1e-3, weight_decay=0.1))).info
    assert not optim.decoupled(radam)
    assert scale_hyperparameters(radam, 64, 256).new["weight_decay"] == 0.1  # coupled: unchanged


def test_lion_style_state_and_no_rule():
    # lion-pytorch saves lr, betas, weight_decay (no eps) and an exp_avg only
    sd = saved_state(lambda p: topt.SGD(p, lr=1e-4, momentum=0.9))
    sd["param_groups"] = [{"lr": 1e-4, "betas": (0.95, 0.98), "weight_decay": 0.1, "params": g}
                          for g in (x["params"] for x in sd["param_groups"])]  # fmt: skip
    sd["state"] = {i: {"exp_avg": st["momentum_buffer"]} for i, st in sd["state"].items()}
    info = saved.read_state(sd).info
    assert (info.name, info.betas, info.weight_decay) == ("lion", (0.95, 0.98), 0.1)
    with pytest.raises(UsageError, match="no scaling rule for lion: none is established"):
        scale_hyperparameters(info, 64, 128)
    with pytest.raises(UsageError, match="not in torch.optim"):
        optim.torch_kwargs(info)


def test_asgd_is_not_rmsprop():
    sd = saved_state(lambda p: topt.ASGD(p, lr=1e-2))
    assert "alpha" in sd["param_groups"][0]  # what used to make it read as RMSprop
    assert saved.read_state(sd).info.name == "asgd"


@pytest.mark.parametrize(
    "make", [lambda p: topt.Adam(p, lr=1e-3), lambda p: topt.AdamW(p, lr=1e-3)]
)
def test_older_adam_and_adamw_are_ambiguous_until_named(tmp_path, make):
    sd = saved_state(make)
    sd["param_groups"][0].pop("decoupled_weight_decay")  # PyTorch < 2.6 saved no flag
    reading = saved.read_state(sd)
    assert reading.info is None and "fits adam and adamw" in reading.note
    assert saved.read_state(sd, name="adamw").info.name == "adamw"
    # a Lightning checkpoint's hyper_parameters settle it
    ckpt = {"state_dict": {"w": torch.zeros(1)}, "optimizer_states": [sd],
            "hyper_parameters": {"optimizer": "AdamW", "lr": 1e-3}}  # fmt: skip
    torch.save(ckpt, tmp_path / "l.ckpt")
    loaded = load_checkpoint(tmp_path / "l.ckpt")
    assert loaded.optimizer.name == "adamw"
    assert loaded.optimizer.identified_by == "hyper_parameters.optimizer = 'AdamW'"


def test_scheduler_base_and_current_lr():
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    opt = topt.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    sched = topt.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
    for _ in range(4):
        opt.zero_grad()
        model(torch.randn(4, 3)).sum().backward()
        opt.step()
        sched.step()
    info = saved.read_state(opt.state_dict()).info
    assert info.lr == 0.1  # initial_lr: the base of the schedule (what the scaling rule scales)
    expected = 0.05 * (1 + math.cos(math.pi * 4 / 10))
    assert info.lr_current == pytest.approx(expected) and optim.current_lr(info) < info.lr


def test_svag_refuses_optimizers_it_does_not_run():
    from bscrit.runs.svag.plan import _target_optimizer

    with pytest.raises(UsageError, match="SVAG runs support sgd, adam, adamw, rmsprop, not nadam"):
        _target_optimizer(optim.OptimizerInfo("nadam", lr=2e-3), None, {}, 2.0)
    with pytest.raises(UsageError, match="no scaling rule for lion"):
        _target_optimizer(optim.OptimizerInfo("lion", lr=1e-4), None, {}, 2.0)
    with pytest.raises(UsageError, match="not radam"):
        _target_optimizer(None, "radam", {"lr": 0.1}, 2.0)  # --optimizer on the command line
    target, rule, _, notes = _target_optimizer(optim.OptimizerInfo("adam", lr=1e-3), None, {}, 4.0)
    assert rule == "square-root" and target.lr == pytest.approx(2e-3)
