"""The optimizer registry (no torch): names, rules, defaults, overrides, state reading."""

from __future__ import annotations

import json

import pytest

from bscrit.errors import BscritError, UsageError
from bscrit.optim import registry as optim
from bscrit.optim import saved
from bscrit.optim import state as optim_state
from bscrit.optim.registry import OptimizerInfo


def rule_for(name: str) -> str:
    return optim.get(name).rule


def rule_reference(name: str) -> str:
    return optim.get(name).rule_reference


def test_rule_names_and_references():
    assert rule_for("sgd") == "linear"
    adam_family = ("adam", "adamw", "rmsprop", "nadam", "radam", "adamax")
    assert {rule_for(n) for n in adam_family} == {"square-root"}
    assert {rule_for(n) for n in ("adagrad", "lion", "asgd")} == {"none"}
    assert rule_reference("sgd") == "linear scaling rule [LMA21 Def. 2.1]"
    assert rule_reference("adam") == "square-root scaling rule [MLPA22 Def. 5.2]"
    assert rule_reference("rmsprop") == "square-root scaling rule [MLPA22 Def. 5.1]"
    assert "docs/theory.md §5" in rule_reference("nadam")  # extended there, said so
    assert (
        rule_reference("lion") == "no established scaling rule (none is established; "
        "docs/theory.md §5)"
    )
    with pytest.raises(BscritError, match="unknown optimizer"):
        rule_for("lamb")


@pytest.mark.parametrize("name", ["adagrad", "lion", "asgd"])
def test_no_rule_is_said_plainly(name):
    with pytest.raises(UsageError, match=f"bscrit knows no scaling rule for {name}: none is"):
        optim.scalable(name)
    assert optim.scalable("nadam").rule == "square-root"


@pytest.mark.parametrize("name", optim.NAMES)
def test_every_entry_is_complete(name):
    d = optim.get(name)
    assert d.keys[0] == "lr"
    assert set(d.defaults) == set(d.keys) - {"lr"}, "a PyTorch default for every key but lr"
    assert all(k in optim.HYPERPARAMETERS for k in d.keys)
    assert d.rule in ("linear", "square-root", "none")
    assert d.reference.startswith("[") or d.rule == "none"
    assert not d.svag or (d.torch_class is not None and d.rule != "none")
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
    assert str(e.value).startswith(
        "beta1/beta2 apply to adam, adamw, nadam, radam, adamax and lion, not sgd"
    )
    assert e.value.for_cli().startswith(
        "--beta1/--beta2 apply to adam, adamw, nadam, radam, adamax and lion, not sgd"
    )
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


ADAM_KEYS = {"lr": 1e-3, "betas": (0.9, 0.99), "eps": 1e-8, "weight_decay": 0.0,
             "amsgrad": False}  # fmt: skip


@pytest.mark.parametrize(
    "group,context,name",
    [
        ({"lr": 0.1, "momentum": 0.9, "dampening": 0, "nesterov": False}, {}, "sgd"),
        ({**ADAM_KEYS, "decoupled_weight_decay": False}, {}, "adam"),
        ({**ADAM_KEYS, "decoupled_weight_decay": True}, {}, "adamw"),
        (ADAM_KEYS, {}, None),  # older PyTorch: Adam or AdamW, nothing says which
        (ADAM_KEYS, {"optimizer_name": "AdamW"}, "adamw"),
        (ADAM_KEYS, {"hyper_parameters": {"optimizer": "adam"}}, "adam"),  # Lightning
        (ADAM_KEYS, {"hyper_parameters": {"optimizer": {"class_path": "torch.optim.AdamW"}}},
         "adamw"),  # LightningCLI
        (ADAM_KEYS, {"optim": "adamw_torch_fused"}, "adamw"),  # an HF Trainer's argument
        (ADAM_KEYS, {"optim": "paged_adamw_8bit"}, "adamw"),
        (ADAM_KEYS, {"optimizer": "AdamW", "scheduler_optimizer": "adam"}, None),  # two names
        ({"lr": 1e-2, "alpha": 0.9, "eps": 1e-8, "centered": False, "momentum": 0}, {},
         "rmsprop"),
        ({"lr": 1e-2, "alpha": 0.75, "lambd": 1e-4, "t0": 1e6, "weight_decay": 0}, {}, "asgd"),
        ({"lr": 1e-2, "lr_decay": 0, "initial_accumulator_value": 0, "eps": 1e-10}, {},
         "adagrad"),
        ({"lr": 2e-3, "betas": (0.9, 0.999), "eps": 1e-8, "momentum_decay": 4e-3}, {}, "nadam"),
        ({"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "decoupled_weight_decay": False}, {},
         "radam"),
        ({"lr": 1e-4, "betas": (0.9, 0.99), "weight_decay": 0.0}, {}, "lion"),
        ({"lr": 1e-2}, {}, None),
        ({"lr": 1.0, "rho": 0.9, "eps": 1e-6}, {"optimizer": "adamw"}, None),  # Adadelta
    ],
)  # fmt: skip
def test_name_from_param_group(group, context, name):
    assert saved.name_from_param_group(group, context) == name


def test_state_keys_decide_where_the_group_keys_cannot():
    no_amsgrad = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0}
    assert optim_state.candidates(no_amsgrad) == ("adam", "adamw", "radam", "adamax")
    assert optim_state.candidates(no_amsgrad, {"exp_avg", "exp_inf", "step"}) == ("adamax",)
    assert optim_state.candidates(no_amsgrad, {"exp_avg", "exp_avg_sq", "step"}) == (
        "adam", "adamw", "radam")  # fmt: skip
    lion = {"lr": 1e-4, "betas": (0.9, 0.99), "weight_decay": 0.0}
    assert optim_state.candidates(lion, {"exp_avg"}) == ("lion",)
    # ASGD also has "alpha": it is not RMSprop
    asgd = {"lr": 1e-2, "alpha": 0.75, "lambd": 1e-4, "t0": 1e6}
    assert optim_state.candidates(asgd, {"eta", "mu", "ax", "step"}) == ("asgd",)


def test_ambiguous_name_says_which_key_settles_it():
    ident = saved.identify(ADAM_KEYS, frozenset({"exp_avg", "exp_avg_sq", "step"}))
    assert ident.name is None and ident.candidates == ("adam", "adamw")
    assert "fits adam and adamw" in ident.problem and "optimizer.name in the spec" in ident.problem
    got = saved.identify(ADAM_KEYS, contexts=[{"hyper_parameters": {"optimizer": "AdamW"}}])
    assert (got.name, got.by) == ("adamw", "hyper_parameters.optimizer = 'AdamW'")
    # saved arguments that contradict the state: the state wins, and a note says so
    sgd = {"lr": 0.1, "momentum": 0.9, "dampening": 0, "nesterov": False}
    got = saved.identify(sgd, contexts=[{"optimizer_name": "AdamW"}])
    assert got.name == "sgd" and "optimizer_name = 'AdamW'" in got.note
    unknown = saved.identify({"lr": 1.0, "rho": 0.9, "eps": 1e-6, "params": [0]})
    assert unknown.name is None and "eps, lr, rho" in unknown.problem


def _state(groups, shapes=None):
    """A saved optimizer state: groups of (hyperparameters, number of tensors)."""
    out, state, i = [], {}, 0
    for g, n in groups:
        out.append({**g, "params": list(range(i, i + n))})
        for j in range(i, i + n):
            if shapes is not None:
                state[j] = {"step": 10.0, "exp_avg": _Shaped(shapes[j])}
        i += n
    return {"state": state, "param_groups": out}


class _Shaped:
    def __init__(self, shape):
        self.shape = shape


def test_every_group_is_read_and_no_decay_first_does_not_zero_the_decay():
    # timm's param_groups_weight_decay: the no-decay group (biases, norms) comes first
    adamw = {**ADAM_KEYS, "decoupled_weight_decay": True}
    shapes = [(4,), (4,), (8, 4), (8, 8)]
    state = _state([({**adamw, "weight_decay": 0.0}, 2), ({**adamw, "weight_decay": 0.05}, 2)],
                   shapes)  # fmt: skip
    info = saved.from_checkpoint({"optimizer": state})
    assert info.name == "adamw" and info.weight_decay == 0.05  # the decayed groups' value
    assert [g.values["weight_decay"] for g in info.groups] == [0.0, 0.05]
    assert [(g.tensors, g.params) for g in info.groups] == [(2, 8), (2, 96)]
    lines = optim.summary_lines(info)
    assert lines == ["weight decay 0.05 on group(s) 1 (2 tensors, 96 params); none on group(s) 0 "
                     "(2 tensors, 8 params)"]  # fmt: skip
    # the no-decay group keeps its 0 when the weight decay is overridden
    new = optim.with_values(info, {"weight_decay": 0.1})
    assert [g.values["weight_decay"] for g in new.groups] == [0.0, 0.1]
    assert [o.weight_decay for _, o in optim.group_optimizers(new)] == [0.0, 0.1]
    # old behaviour read only the first group: weight decay 0
    assert saved.from_checkpoint({"optimizer": {**state, "param_groups": state["param_groups"][:1]}}
                                 ).weight_decay == 0.0  # fmt: skip


def test_base_and_current_lr():
    sgd = {"lr": 0.004, "initial_lr": 0.1, "momentum": 0.9, "dampening": 0, "nesterov": False,
           "weight_decay": 5e-4}  # fmt: skip
    info = saved.from_checkpoint({"optimizer": _state([(sgd, 3)])})
    assert (info.lr, info.lr_current, optim.current_lr(info)) == (0.1, 0.004, 0.004)
    assert optim.summary_lines(info) == [
        "lr 0.1 (the schedule's base; 0.004 at the checkpoint)"]  # fmt: skip
    assert optim.group_optimizers(info) == []  # one group: nothing per group
    no_sched = saved.from_checkpoint({"optimizer": _state([({**sgd, "initial_lr": None}, 3)])})
    assert no_sched.lr == no_sched.lr_current == 0.004 and optim.summary_lines(no_sched) == []


def test_spec_name_settles_an_ambiguous_state():
    state = _state([(ADAM_KEYS, 2)])
    reading = saved.read_checkpoint({"optimizer": state})
    assert reading.info is None and "optimizer.name" in reading.note
    info = saved.from_checkpoint({"optimizer": state}, name="adamw")
    assert info.name == "adamw" and info.identified_by == "the spec's optimizer.name"
    no_lr = {"state": {}, "param_groups": [{"momentum": 0.9, "params": [0]}]}
    assert "no lr" in saved.read_checkpoint({"optimizer": no_lr}).note
    wrong = saved.read_checkpoint({"optimizer": state}, name="sgd")
    assert wrong.info.name == "sgd" and "looks like adam or adamw's" in wrong.note


def test_from_checkpoint_reads_the_first_group_of_one():
    state = {"param_groups": [{"lr": 0.05, "momentum": 0.9, "dampening": 0, "weight_decay": 1e-4,
                               "nesterov": True, "params": [0]}], "state": {}}  # fmt: skip
    info = saved.from_checkpoint({"model": {}, "optimizer": state})
    assert (info.name, info.lr, info.momentum, info.weight_decay, info.nesterov, info.source) == (
        "sgd", 0.05, 0.9, 1e-4, True, "checkpoint")  # fmt: skip
    assert saved.from_checkpoint({"model": {}}) is None
    lightning = {"state_dict": {}, "optimizer_states": [state]}
    assert saved.from_checkpoint(lightning).lr == 0.05


def test_optimizer_info_json_round_trip_and_old_artifacts():
    state = _state([({**ADAM_KEYS, "weight_decay": 0.0}, 1), ({**ADAM_KEYS, "weight_decay": 0.1,
                    "initial_lr": 2e-3}, 1)])  # fmt: skip
    info = saved.from_checkpoint({"optimizer": state}, name="adamw")
    assert OptimizerInfo.from_dict(json.loads(json.dumps(info.to_dict()))) == info
    old = {"name": "adam", "lr": 1e-3, "momentum": 0.0, "weight_decay": 0.0, "betas": [0.9, 0.99],
           "eps": 1e-8, "alpha": None, "nesterov": False, "source": "checkpoint"}  # fmt: skip
    got = OptimizerInfo.from_dict(old)  # written before param groups were recorded
    assert got.groups == () and got.lr_current is None and optim.current_lr(got) == 1e-3
