"""The one schedule reader (bscrit.optim.lr_schedule) against PyTorch's own schedulers, the LR
at the checkpoint in time scales and continued runs, and the Adam rule variants."""

from __future__ import annotations

import math

import pytest
import torch
from torch.optim import lr_scheduler as S

from bscrit.engine.sampling import run_optimizer
from bscrit.errors import UsageError
from bscrit.optim import lr_schedule
from bscrit.optim.registry import OptimizerInfo
from bscrit.stats.equilibrium import relaxation_steps
from bscrit.theory.scaled import scale_hyperparameters
from bscrit.theory.scaling import rule_limit, rule_reaches, scale_optimizer

SCHEDULERS = {
    "onecycle-cos": lambda o: S.OneCycleLR(o, max_lr=0.2, total_steps=50),
    "onecycle-linear": lambda o: S.OneCycleLR(o, max_lr=0.2, total_steps=50, pct_start=0.4,
                                              anneal_strategy="linear", three_phase=True),
    "step": lambda o: S.StepLR(o, 7, 0.5),
    "multistep": lambda o: S.MultiStepLR(o, [5, 12, 12, 30], 0.3),
    "cosine": lambda o: S.CosineAnnealingLR(o, 40, 0.001),
    "linear": lambda o: S.LinearLR(o, 0.1, 1.0, 9),
    "constant": lambda o: S.ConstantLR(o, 0.25, 6),
    "exponential": lambda o: S.ExponentialLR(o, 0.95),
    "sequential": lambda o: S.SequentialLR(
        o, [S.LinearLR(o, 0.01, 1.0, 5), S.CosineAnnealingLR(o, 40)], [5]
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
@pytest.mark.parametrize("saved_at", [0, 13])
def test_decoded_schedule_is_the_lr_pytorch_used_at_every_step(name, saved_at):
    p = [torch.nn.Parameter(torch.zeros(2))]
    opt = torch.optim.SGD(p, lr=0.1, momentum=0.9)
    sched = SCHEDULERS[name](opt)
    used = []
    state = group = None
    for step in range(45):
        if step == saved_at:
            state, group = sched.state_dict(), dict(opt.param_groups[0])
        used.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    reading = lr_schedule.from_torch_state(state, group, "test")
    assert reading.schedule is not None, reading.note
    peak = lr_schedule.peak_of_group(group)
    assert reading.schedule["step"] == saved_at
    for t, lr in enumerate(used):
        assert peak * lr_schedule.factor_at(reading.schedule, t) == pytest.approx(lr, abs=1e-12)


def test_a_lambda_scheduler_is_not_guessed():
    p = [torch.nn.Parameter(torch.zeros(2))]
    opt = torch.optim.SGD(p, lr=0.1)
    sched = S.LambdaLR(opt, lambda k: 0.9**k)
    reading = lr_schedule.from_torch_state(sched.state_dict(), opt.param_groups[0], "x.pt")
    assert reading.schedule is None and "not saved" in reading.note


@pytest.mark.parametrize("decay", ["linear", "cosine", "constant"])
@pytest.mark.parametrize("lag", [0, 1])
def test_fit_logged_recovers_the_trainer_schedule(decay, lag):
    s = {"name": "warmup_decay", "decay": decay, "warmup_steps": 7, "total_steps": 50}
    logged = [(t + lag, 3e-4 * lr_schedule.factor_at(s, t)) for t in range(0, 40, 3)]
    r = lr_schedule.fit_logged(logged, 3e-4, 50, "log")
    assert r.schedule is not None
    for t in range(50):
        assert lr_schedule.factor_at(r.schedule, t) == pytest.approx(
            lr_schedule.factor_at(s, t), abs=1e-9
        )


def test_fit_logged_says_when_nothing_fits():
    logged = [(t, 0.1 * 0.9**t) for t in range(1, 30)]  # exponential: not a Trainer shape
    r = lr_schedule.fit_logged(logged, 0.1, 100, "log")
    assert r.schedule is None and "fit no constant" in r.note


# ----------------------------------------------------------------------------------------------
# The LR at the checkpoint sets the time scales (issue 23, item 2)
# ----------------------------------------------------------------------------------------------


def test_relaxation_time_uses_the_lr_at_the_checkpoint_after_a_decay():
    decayed = OptimizerInfo("sgd", lr=0.8, weight_decay=1e-3, lr_current=0.08)
    tau, why = relaxation_steps(decayed)
    assert tau == pytest.approx(1 / (2 * 0.08 * 1e-3))  # 10× the τ of the base LR
    assert "0.08" in why
    adamw = OptimizerInfo("adamw", lr=1e-3, weight_decay=0.1, betas=(0.9, 0.99), lr_current=1e-4)
    assert relaxation_steps(adamw)[0] == pytest.approx(1 / (2 * 1e-4 * 0.1))


def test_the_sampled_run_continues_at_the_lr_at_the_checkpoint():
    p = [torch.nn.Parameter(torch.randn(3)), torch.nn.Parameter(torch.randn(2))]
    opt = torch.optim.SGD([{"params": [p[0]], "weight_decay": 1e-3},
                           {"params": [p[1]], "weight_decay": 0.0}],
                          lr=0.8, momentum=0.9)  # fmt: skip
    for g in opt.param_groups:
        g["initial_lr"], g["lr"] = 0.8, 0.08  # saved after a ×0.1 decay
    p[0].grad, p[1].grad = torch.ones(3), torch.ones(2)
    opt.step()
    info = OptimizerInfo("sgd", lr=0.8, momentum=0.9, weight_decay=1e-3, lr_current=0.08)
    built, _ = run_optimizer(p, info, opt.state_dict())
    assert [g["lr"] for g in built.param_groups] == [0.08, 0.08]
    assert [g["weight_decay"] for g in built.param_groups] == [1e-3, 0.0]


# ----------------------------------------------------------------------------------------------
# Adam rule variants (issue 27, item 3)
# ----------------------------------------------------------------------------------------------

ADAMW = OptimizerInfo("adamw", lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)


def test_lr_only_keeps_betas_eps_and_weight_decay():
    full = scale_optimizer(ADAMW, 4.0)
    only = scale_optimizer(ADAMW, 4.0, "lr-only")
    assert full.lr == only.lr == pytest.approx(2e-3)
    assert full.betas == pytest.approx((0.6, 0.996)) and full.weight_decay == pytest.approx(0.2)
    assert only.betas == ADAMW.betas and only.eps == ADAMW.eps
    assert only.weight_decay == ADAMW.weight_decay


def test_each_variant_reports_its_reach_and_what_binds():
    reach = rule_reaches(ADAMW, 32)
    assert reach["full"].binding == "beta1" and reach["full"].batch_max == 319  # κ < 10
    only = reach["lr-only"]
    assert only.binding == "weight_decay"  # 1 − √κηλ > 0: κ < 1/(ηλ)² = 1e8
    assert only.kappa_max == pytest.approx(1e8)
    assert rule_reaches(OptimizerInfo("sgd", lr=0.1), 32).keys() == {"linear"}
    with pytest.raises(UsageError, match="unknown Adam rule"):
        rule_limit(ADAMW, 32, "betas")


def test_scale_with_lr_only_passes_where_the_full_rule_refuses():
    with pytest.raises(UsageError, match="largest B'"):
        scale_hyperparameters(ADAMW, 32, 640)  # κ = 20 ≥ 1/(1 − β₁)
    s = scale_hyperparameters(ADAMW, 32, 640, adam_rule="lr-only")
    assert s.new["lr"] == pytest.approx(1e-3 * math.sqrt(20))
    assert s.new["beta1"] == 0.9 and s.to_dict()["adam_rule"] == "lr-only"
    assert any("lr-only" in w for w in s.warnings)
    assert "kept" in s.notes["beta1"]


def test_predict_and_check_report_every_variant_and_use_the_chosen_one():
    from pathlib import Path

    from bscrit.theory.prediction import check, predict_files

    adam = Path(__file__).parents[1] / "assets" / "measurements" / "adam_noisy.json"
    full = predict_files([adam])
    assert set(full.rule_reaches) == {"full", "lr-only"} and full.adam_rule == "full"
    assert full.recommended.limited_by == "scaling_rule"
    assert full.recommended.max == full.rule_reaches["full"].batch_max == 2559
    assert full.to_dict()["rule_reaches"]["lr-only"]["batch_max"] is None
    only = predict_files([adam], adam_rule="lr-only")
    assert only.recommended.max > 2559 and only.scaled.adam_rule == "lr-only"
    r = check(full, 4000)
    assert int(r.exit_code) == 1 and "--adam-rule lr-only" in r.reason
    assert int(check(only, 4000).exit_code) != 1


def test_onecycle_past_its_end_stays_at_its_minimum():
    p = [torch.nn.Parameter(torch.zeros(2))]
    opt = torch.optim.SGD(p, lr=0.1, momentum=0.9)
    sched = S.OneCycleLR(opt, max_lr=0.2, total_steps=50)
    s = lr_schedule.from_torch_state(sched.state_dict(), opt.param_groups[0], "t").schedule
    end = lr_schedule.factor_at(s, 49)
    assert [lr_schedule.factor_at(s, t) for t in (60, 100, 500)] == [end] * 3
