"""Scaling rules [LMA21 Def. 2.1], [MLPA22 Defs. 5.1, 5.2] and SVAG hyperparameters (no torch)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bscrit.errors import BscritError
from bscrit.optim.registry import OptimizerInfo, flat
from bscrit.optim.state import ParamGroupInfo
from bscrit.theory.scaled import scale_hyperparameters
from bscrit.theory.scaling import (
    adaptive_sde_warning,
    linear_rule,
    rule_limit,
    scale_steps,
    square_root_rule,
    svag_hyperparameters,
)

SGD = OptimizerInfo("sgd", lr=0.1, momentum=0.9, weight_decay=5e-4)
ADAM = OptimizerInfo("adam", lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-4)
ADAMW = OptimizerInfo("adamw", lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
RMSPROP = OptimizerInfo("rmsprop", lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=1e-4)


def test_linear_rule_up_and_down():
    up = linear_rule(SGD, 8)
    assert up.lr == pytest.approx(0.8)
    assert (up.momentum, up.weight_decay) == (0.9, 5e-4)
    assert linear_rule(SGD, 0.25).lr == pytest.approx(0.025)
    with pytest.raises(BscritError):
        linear_rule(SGD, 0)


def test_square_root_rule_adam():
    s = square_root_rule(ADAM, 4)
    assert s.lr == pytest.approx(2e-3)  # √4 · 1e-3
    assert s.betas == pytest.approx((0.6, 0.996))  # 1 − 4·0.1, 1 − 4·0.001
    assert s.eps == pytest.approx(5e-9)  # 1e-8/2
    assert s.weight_decay == 1e-4  # coupled L2: unchanged


def test_square_root_rule_adamw_scales_decoupled_weight_decay():
    s = square_root_rule(ADAMW, 9)
    assert s.lr == pytest.approx(3e-3)
    assert s.weight_decay == pytest.approx(0.03)  # λ' = √κ λ (derived)
    assert s.betas == pytest.approx((0.1, 0.991))


def test_square_root_rule_rmsprop():
    s = square_root_rule(RMSPROP, 4)
    assert s.lr == pytest.approx(2e-2)
    assert s.alpha == pytest.approx(0.96)  # 1 − 4·0.01
    assert s.eps == pytest.approx(5e-9)


def test_square_root_rule_scaling_down():
    s = square_root_rule(ADAM, 0.25)
    assert s.lr == pytest.approx(5e-4)
    assert s.betas == pytest.approx((0.975, 0.99975))
    assert s.eps == pytest.approx(2e-8)


def test_square_root_rule_defaults_missing_betas_to_pytorch():
    s = square_root_rule(OptimizerInfo("adam", lr=1e-3), 2)
    assert s.betas == pytest.approx((0.8, 0.998))
    assert s.eps == pytest.approx(1e-8 / 2**0.5)


@pytest.mark.parametrize("kappa", [10.0, 10.5, 100.0])
def test_square_root_rule_refuses_when_a_beta_would_be_non_positive(kappa):
    # β₁ = 0.9: κ(1 − β₁) ≥ 1 ⇔ κ ≥ 10
    with pytest.raises(BscritError, match=r"κ < 1/\(1 − beta1\) = 10"):
        square_root_rule(ADAM, kappa)


def test_square_root_rule_just_below_the_limit():
    s = square_root_rule(ADAM, 9.99)
    assert s.betas[0] == pytest.approx(1 - 9.99 * 0.1)
    with pytest.raises(BscritError, match="alpha"):
        square_root_rule(RMSPROP, 100)  # κ(1 − 0.99) = 1


def test_square_root_rule_refuses_sgd():
    with pytest.raises(BscritError):
        square_root_rule(SGD, 2)


def test_svag_hyperparameters_sgd():
    s = svag_hyperparameters(SGD, 4)
    assert s.lr == pytest.approx(0.025)
    assert (s.momentum, s.weight_decay) == (0.9, 5e-4)
    assert svag_hyperparameters(SGD, 1) == SGD


def test_svag_hyperparameters_adaptive():
    a = svag_hyperparameters(ADAM, 4)
    assert a.lr == pytest.approx(5e-4)  # η/√l
    assert a.betas == pytest.approx((0.975, 0.99975))  # 1 − (1 − β)/l
    assert a.eps == pytest.approx(2e-8)  # ε√l
    assert a.weight_decay == 1e-4
    w = svag_hyperparameters(ADAMW, 4)
    assert w.weight_decay == pytest.approx(0.005)  # λ/√l
    r = svag_hyperparameters(RMSPROP, 4)
    assert r.alpha == pytest.approx(0.9975)
    assert r.lr == pytest.approx(5e-3)


@pytest.mark.parametrize("opt", [SGD, ADAM, ADAMW, RMSPROP])
@pytest.mark.parametrize("l", [2, 4, 16])
def test_svag_is_the_scaling_rule_with_kappa_one_over_l(opt, l):  # noqa: E741
    # SVAG with l keeps the SDE: the same map as scaling the batch by κ = 1/l.
    assert flat(svag_hyperparameters(opt, l)) == pytest.approx(
        flat(linear_rule(opt, 1 / l) if opt.name == "sgd" else square_root_rule(opt, 1 / l))
    )


@pytest.mark.parametrize("l", [0, -1, 1.5, True])
def test_svag_rejects_bad_l(l):  # noqa: E741
    with pytest.raises(BscritError):
        svag_hyperparameters(SGD, l)


def test_scale_steps():
    assert scale_steps(1000, 4) == 250
    assert scale_steps(10, 4) == 3  # 2.5 rounds half up
    assert scale_steps(1000, 0.5) == 2000  # scaling down: more steps
    assert scale_steps(1, 8) == 1  # never rounds a positive count to 0
    assert scale_steps(0, 8) == 0
    assert scale_steps(None, 8) is None


def test_adaptive_sde_warning_is_heuristic_and_for_square_root_only():
    w = adaptive_sde_warning(0.5, "adam")
    assert w is not None and "heuristic" in w and "[MLPA22]" in w
    assert adaptive_sde_warning(2.0, "adam") is None
    assert adaptive_sde_warning(0.5, "sgd") is None
    assert adaptive_sde_warning(None, "rmsprop") is None


def test_scale_hyperparameters_json_contract():
    s = scale_hyperparameters(ADAM, 256, 1024, steps=100000, warmup_steps=2000, nsr_target=0.3)
    d = s.to_dict()
    assert d["rule"] == "square-root"
    assert d["kappa"] == 4.0
    assert set(d["hyperparameters"]) == {"lr", "beta1", "beta2", "eps", "weight_decay"}
    assert d["hyperparameters"]["lr"] == pytest.approx(2e-3)
    assert (d["steps"], d["warmup_steps"]) == (25000, 500)
    assert len(d["warnings"]) == 1 and "noise" in d["warnings"][0]
    sgd = scale_hyperparameters(SGD, 128, 64).to_dict()
    assert set(sgd["hyperparameters"]) == {"lr", "momentum", "weight_decay"}
    assert sgd["hyperparameters"]["lr"] == pytest.approx(0.05)
    assert sgd["kappa"] == 0.5
    rms = scale_hyperparameters(RMSPROP, 32, 64).to_dict()
    assert set(rms["hyperparameters"]) == {"lr", "alpha", "eps", "momentum", "weight_decay"}


def test_scale_hyperparameters_rejects_bad_input():
    with pytest.raises(BscritError, match="positive"):
        scale_hyperparameters(SGD, 0, 64)
    with pytest.raises(BscritError, match="learning rate"):
        scale_hyperparameters(OptimizerInfo("sgd", lr=0.0), 32, 64)
    with pytest.raises(BscritError, match="momentum"):
        scale_hyperparameters(OptimizerInfo("sgd", lr=0.1, momentum=1.0), 32, 64)
    with pytest.raises(BscritError, match="eps"):
        scale_hyperparameters(OptimizerInfo("adam", lr=0.1, eps=0.0), 32, 64)
    with pytest.raises(BscritError, match="beta1"):
        scale_hyperparameters(OptimizerInfo("adam", lr=0.1, betas=(1.0, 0.999)), 32, 64)


# ----------------------------------------------------------------------------------------------
# How far the rule reaches (rule_limit)
# ----------------------------------------------------------------------------------------------


def test_rule_limit_adam_is_set_by_beta1():
    from bscrit.theory.scaling import rule_limit

    lim = rule_limit(OptimizerInfo("adam", lr=1e-3, betas=(0.9, 0.999)), 32)
    assert lim.kappa_max == pytest.approx(10.0) and lim.binding == "beta1"
    assert lim.batch_max == 319  # 320/32 = 10 is not < 10
    assert lim.caution_kappa == pytest.approx(5.0)  # beta1' < 0.5 above kappa = 0.5/0.1
    scale_hyperparameters(OptimizerInfo("adam", lr=1e-3), 32, 319)  # the largest B' works
    with pytest.raises(BscritError, match="the largest B' it reaches is 319"):
        scale_hyperparameters(OptimizerInfo("adam", lr=1e-3), 32, 320)


def test_rule_limit_beta2_and_rmsprop_alpha():
    from bscrit.theory.scaling import rule_limit

    lim = rule_limit(OptimizerInfo("adamw", lr=1e-3, betas=(0.99, 0.95), weight_decay=0.0), 10)
    assert lim.binding == "beta2" and lim.kappa_max == pytest.approx(20.0)
    lim = rule_limit(OptimizerInfo("rmsprop", lr=1e-2, alpha=0.9), 8)
    assert lim.binding == "alpha" and lim.batch_max == 79


def test_rule_limit_sgd_weight_decay_factor():
    """SGD with coupled decay: 1 − κηλ > 0 ([LMA21] eq. 7); without decay, no limit."""
    from bscrit.theory.scaling import rule_limit

    lim = rule_limit(OptimizerInfo("sgd", lr=0.5, weight_decay=0.1), 16)
    assert lim.binding == "weight_decay" and lim.kappa_max == pytest.approx(20.0)
    assert lim.batch_max == 319
    with pytest.raises(BscritError, match="1 − κηλ"):
        scale_hyperparameters(OptimizerInfo("sgd", lr=0.5, weight_decay=0.1), 16, 320)
    free = rule_limit(OptimizerInfo("sgd", lr=0.5), 16)
    assert free.batch_max is None and free.kappa_max == float("inf")


def test_adamw_decoupled_decay_limit_can_bind_before_the_betas():
    from bscrit.theory.scaling import rule_limit

    lim = rule_limit(OptimizerInfo("adamw", lr=0.01, betas=(0.999, 0.9999), weight_decay=5.0), 4)
    assert lim.binding == "weight_decay" and lim.kappa_max == pytest.approx(20.0)


def test_scale_warns_when_a_beta_falls_below_one_half():
    r = scale_hyperparameters(OptimizerInfo("adam", lr=1e-3), 32, 256)  # kappa 8: beta1' = 0.2
    assert any("beta1' = 0.2" in w and "below 0.5" in w for w in r.warnings)
    r = scale_hyperparameters(OptimizerInfo("adam", lr=1e-3), 32, 128)  # kappa 4: beta1' = 0.6
    assert not any("below 0.5" in w for w in r.warnings)


def _groups_adamw():
    """AdamW with a no-decay group first (timm) and a head group at 10× the LR."""
    groups = (
        ParamGroupInfo(0, 40, {**flat(ADAMW), "weight_decay": 0.0}, params=1000),
        ParamGroupInfo(1, 30, {**flat(ADAMW), "weight_decay": 0.05}, params=90_000),
        ParamGroupInfo(2, 2, {**flat(ADAMW), "lr": 1e-2, "weight_decay": 0.05}, params=500),
    )
    return replace(ADAMW, weight_decay=0.05, groups=groups, source="checkpoint")


def test_scaled_per_group_where_groups_differ():
    opt = _groups_adamw()
    s = scale_hyperparameters(opt, 256, 1024)  # κ = 4
    assert s.new["weight_decay"] == pytest.approx(0.1)  # the main (decayed) group's λ, ×√κ
    assert [g.index for g in s.groups] == [0, 1, 2]
    assert [g.new["weight_decay"] for g in s.groups] == pytest.approx([0.0, 0.1, 0.1])
    assert [g.new["lr"] for g in s.groups] == pytest.approx([2e-3, 2e-3, 2e-2])
    d = s.to_dict()["groups"]
    assert d[2]["old_hyperparameters"]["lr"] == 1e-2 and d[2]["tensors"] == 2
    # one set of values: nothing per group
    single = replace(opt, groups=opt.groups[1:2])
    assert scale_hyperparameters(single, 256, 1024).groups == ()


def test_rule_limit_binds_on_the_group_that_reaches_least():
    opt = replace(_groups_adamw(), betas=(0.9999, 0.99999))
    groups = tuple(replace(g, values={**g.values, "beta1": 0.9999, "beta2": 0.99999})
                   for g in opt.groups)  # fmt: skip
    opt = replace(opt, groups=groups)
    # AdamW's decay 1 − κηλ > 0: the head group (η = 1e-2, λ = 0.05) binds at κ < 2000, the main
    # group only at κ < 20000
    limit = rule_limit(opt, 1)
    assert limit.binding == "weight_decay" and limit.kappa_max == pytest.approx(1 / (1e-2 * 0.05))


@pytest.mark.parametrize("name", ["lion", "adagrad", "asgd"])
def test_no_rule_is_refused_plainly(name):
    opt = OptimizerInfo(name, lr=1e-3)
    with pytest.raises(BscritError, match=f"no scaling rule for {name}: none is established"):
        scale_hyperparameters(opt, 32, 64)
    with pytest.raises(BscritError, match="no scaling rule"):
        svag_hyperparameters(opt, 2)


def test_adam_family_extension_says_so():
    nadam = OptimizerInfo("nadam", lr=2e-3, betas=(0.9, 0.999), eps=1e-8, momentum_decay=4e-3)
    s = scale_hyperparameters(nadam, 32, 128)
    assert s.new["lr"] == pytest.approx(4e-3) and s.new["beta1"] == pytest.approx(0.6)
    assert s.new["momentum_decay"] == pytest.approx(1.6e-2)
    assert any("extended in docs/theory.md §5, not proved" in w for w in s.warnings)
    assert "docs/theory.md §5" in s.reference
    assert not any("extended" in w for w in scale_hyperparameters(ADAM, 32, 64).warnings)
