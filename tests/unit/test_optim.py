"""The optimizer registry (no torch): names, rules, defaults, overrides, state reading."""

from __future__ import annotations

import pytest

from bscrit import optim
from bscrit.errors import BscritError, UsageError
from bscrit.optim import OptimizerInfo


def rule_for(name: str) -> str:
    return optim.get(name).rule


def rule_reference(name: str) -> str:
    return optim.get(name).rule_reference


def test_rule_names_and_references():
    assert rule_for("sgd") == "linear"
    assert {rule_for(n) for n in ("adam", "adamw", "rmsprop")} == {"square-root"}
    assert rule_reference("sgd") == "linear scaling rule [LMA21 Def. 2.1]"
    assert rule_reference("adam") == "square-root scaling rule [MLPA22 Def. 5.2]"
    assert rule_reference("rmsprop") == "square-root scaling rule [MLPA22 Def. 5.1]"
    with pytest.raises(BscritError, match="unknown optimizer"):
        rule_for("lamb")


@pytest.mark.parametrize("name", optim.NAMES)
def test_every_entry_is_complete(name):
    d = optim.get(name)
    assert d.keys[0] == "lr"
    assert set(d.defaults) == set(d.keys) - {"lr"}, "a PyTorch default for every key but lr"
    assert all(k in optim.HYPERPARAMETERS for k in d.keys)
    assert d.rule in ("linear", "square-root") and d.reference.startswith("[")
    # the defaults fill every numeric value, and flat -> from_flat is the identity
    v = optim.flat(OptimizerInfo(name, lr=0.5))
    assert set(v) == set(d.values) and v["lr"] == 0.5
    assert optim.flat(optim.from_flat(name, v)) == v


def test_flat_and_torch_kwargs_use_pytorch_defaults():
    assert optim.flat(OptimizerInfo("adam", lr=1e-3)) == {
        "lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0,
    }  # fmt: skip
    cls, kw = optim.torch_kwargs(OptimizerInfo("rmsprop", lr=0.01, momentum=0.5))
    assert cls == "RMSprop"
    assert kw == {"lr": 0.01, "alpha": 0.99, "eps": 1e-8, "momentum": 0.5, "weight_decay": 0.0}
    cls, kw = optim.torch_kwargs(OptimizerInfo("sgd", lr=0.1, nesterov=True))
    assert cls == "SGD" and kw["nesterov"] is False  # nesterov needs momentum > 0


def test_with_values_checks_applicability_and_range():
    sgd = OptimizerInfo("sgd", lr=0.1, momentum=0.9)
    with pytest.raises(UsageError) as e:
        optim.with_values(sgd, {"beta1": 0.9})
    assert str(e.value).startswith("beta1/beta2 apply to adam and adamw, not sgd")
    assert e.value.for_cli().startswith("--beta1/--beta2 apply to adam and adamw, not sgd")
    with pytest.raises(UsageError, match=r"momentum: expected a number in \[0, 1\)"):
        optim.with_values(sgd, {"momentum": 1.0})
    e2 = UsageError("{weight_decay}: bad", weight_decay="weight_decay")
    assert (str(e2), e2.for_cli()) == ("weight_decay: bad", "--weight-decay: bad")
    new = optim.with_values(OptimizerInfo("adam", lr=1e-3), {"beta2": 0.99, "lr": None})
    assert new.betas == (0.9, 0.99) and new.lr == 1e-3


def test_describe_is_compact():
    assert optim.describe(OptimizerInfo("sgd", lr=0.1, momentum=0.9, weight_decay=5e-4)) == (
        "lr 0.1, momentum 0.9, wd 0.0005"
    )
    assert (
        optim.describe(OptimizerInfo("adam", lr=1e-3)) == "lr 0.001, betas (0.9, 0.999), eps 1e-08"
    )


@pytest.mark.parametrize(
    "group,context,name",
    [
        ({"lr": 0.1, "momentum": 0.9, "dampening": 0, "nesterov": False}, {}, "sgd"),
        ({"lr": 1e-3, "betas": (0.9, 0.99), "amsgrad": False, "eps": 1e-8}, {}, "adam"),
        (
            {"lr": 1e-3, "betas": (0.9, 0.99), "amsgrad": False, "decoupled_weight_decay": True},
            {},
            "adamw",
        ),  # fmt: skip
        (
            {"lr": 1e-3, "betas": (0.9, 0.99), "amsgrad": False},
            {"optimizer_name": "AdamW"},
            "adamw",
        ),
        ({"lr": 1e-2, "alpha": 0.9, "eps": 1e-8}, {}, "rmsprop"),
        ({"lr": 1e-2}, {}, None),
    ],
)
def test_name_from_param_group(group, context, name):
    assert optim.name_from_param_group(group, context) == name


def test_from_checkpoint_reads_the_first_group():
    state = {"param_groups": [{"lr": 0.05, "momentum": 0.9, "dampening": 0, "weight_decay": 1e-4,
                               "nesterov": True}], "state": {}}  # fmt: skip
    info = optim.from_checkpoint({"model": {}, "optimizer": state})
    assert info == OptimizerInfo("sgd", lr=0.05, momentum=0.9, weight_decay=1e-4, nesterov=True,
                                 source="checkpoint")  # fmt: skip
    assert optim.from_checkpoint({"model": {}}) is None
    lightning = {"state_dict": {}, "optimizer_states": [state]}
    assert optim.from_checkpoint(lightning).lr == 0.05
