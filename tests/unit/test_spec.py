"""Spec parsing: every problem at once with key paths, shorthands, defaults (no torch)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bscrit.errors import ExitCode, SpecError
from bscrit.optim import registry as optim
from bscrit.specfile.document import load_spec, parse_spec
from bscrit.specfile.model import ModelSpec
from bscrit.specfile.sections import CheckpointSpec, LossSpec, MeasureSpec
from bscrit.specfile.training import ScheduleSpec

ASSETS = Path(__file__).resolve().parents[1] / "assets"


def minimal(**over):
    raw = {
        "model": "resnet18",
        "data": {"dataset": "CIFAR10", "kwargs": {"root": "data"}},
        "loss": "cross_entropy",
        "batch_size": 32,
    }
    raw.update(over)
    return raw


def parse(raw, base_dir=ASSETS):
    return parse_spec(raw, "test.yaml", base_dir)


def problems(raw, base_dir=ASSETS) -> dict[str, str]:
    with pytest.raises(SpecError) as info:
        parse(raw, base_dir)
    assert info.value.exit_code == ExitCode.USAGE
    return {p.key: p.message for p in info.value.problems}


def write(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def test_valid_asset_parses_with_paths_resolved():
    spec = load_spec(ASSETS / "valid.yaml")
    assert spec.path == (ASSETS / "valid.yaml").resolve()
    assert spec.base_dir == ASSETS.resolve()
    assert spec.model == ModelSpec(
        name=None, factory=f"{ASSETS.resolve() / 'tiny.py'}:make_model", kwargs={"width": 8}
    )
    assert spec.checkpoint.paths == ((ASSETS / "tiny.pt").resolve(),)
    assert spec.data.factory.endswith("tiny.py:make_dataset") and spec.data.subset == 48
    assert spec.loss == LossSpec(name="cross_entropy", factory=None, kwargs={})
    assert spec.batch_size == 8
    assert spec.optimizer.name == "sgd" and spec.optimizer.momentum == 0.9
    assert spec.optimizer.weight_decay == 5e-4 and spec.optimizer.source == "spec"
    assert spec.schedule == ScheduleSpec(name="step", milestones=(100, 200), gamma=0.1)
    assert spec.measure == MeasureSpec(batches=None, groups=4, seed=0, device="cpu")


def test_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(SpecError, match="file not found") as info:
        load_spec(missing)
    assert str(missing) in info.value.message


def test_yaml_syntax_error_reports_line_and_column():
    with pytest.raises(SpecError) as info:
        load_spec(ASSETS / "invalid_syntax.yaml")
    msg = info.value.message
    assert "YAML syntax error at line 4, column 5" in msg


def test_yaml_syntax_error_line_in_tmp_file(tmp_path):
    p = write(tmp_path, "model: resnet18\nbatch_size: 8\n  loss: [\n")
    with pytest.raises(SpecError, match=r"line 3"):
        load_spec(p)


@pytest.mark.parametrize(
    "text, expected",
    [("- a\n- b\n", "got list"), ("", "empty"), ("just a string\n", "got str")],
)
def test_top_level_must_be_a_mapping(tmp_path, text, expected):
    with pytest.raises(SpecError, match=expected):
        load_spec(write(tmp_path, text))


def test_invalid_many_reports_every_problem_at_once():
    with pytest.raises(SpecError) as info:
        load_spec(ASSETS / "invalid_many.yaml")
    keys = {p.key for p in info.value.problems}
    assert keys == {
        "model.kwarg",
        "data.subset",
        "loss",
        "batch_size",
        "optimizer.momentun",
        "optimizer.lr",
        "measure.groups",
        "measure.device",
        "measure.mode",
    }
    msg = info.value.message
    assert "did you mean 'kwargs'" in msg
    assert "did you mean 'momentum'" in msg
    assert "batch_size: expected a positive integer, got 'abc' (str)" in msg
    assert "(9 problem(s))" in msg


def test_invalid_factory_asset():
    with pytest.raises(SpecError) as info:
        load_spec(ASSETS / "invalid_factory.yaml")
    msgs = {p.key: p.message for p in info.value.problems}
    assert "missing_model.py" in msgs["model.factory"] and "not found" in msgs["model.factory"]
    assert "data.factory" in msgs


# ---------------------------------------------------------------------------------------------
# Required keys, types, values
# ---------------------------------------------------------------------------------------------


def test_missing_required_keys_listed_and_checkpoint_optional():
    msgs = problems({})
    assert set(msgs) == {"model", "data", "loss", "batch_size"}
    assert all("missing required key" in m for m in msgs.values())
    assert parse(minimal()).checkpoint == CheckpointSpec()


@pytest.mark.parametrize("value", [True, 0, -4, 2.5, "32", None])
def test_batch_size_must_be_positive_int(value):
    raw = minimal(batch_size=value)
    msgs = problems(raw)
    assert "batch_size" in msgs


def test_bool_is_not_an_integer():
    msgs = problems(minimal(batch_size=True))
    assert msgs["batch_size"] == "expected a positive integer, got True (bool)"


def test_unknown_top_level_key_with_suggestion():
    msgs = problems(minimal(optimiser={"name": "sgd", "lr": 0.1}))
    assert "did you mean 'optimizer'" in msgs["optimiser"]


def test_unknown_key_without_close_match_lists_choices():
    msgs = problems(minimal(measure={"zzz": 1}))
    assert "expected one of: batches, groups" in msgs["measure.zzz"]


def test_model_exactly_one_of_name_or_factory():
    assert "exactly one" in problems(minimal(model={"kwargs": {}}))["model"]
    both = {"name": "resnet18", "factory": "tiny.py:make_model"}
    assert "exactly one" in problems(minimal(model=both))["model"]


def test_data_exactly_one_of_dataset_or_factory():
    assert "exactly one" in problems(minimal(data={"subset": 3}))["data"]


def test_transforms_key_paths():
    data = {
        "dataset": "FakeData",
        "transforms": [{"name": "ToTensor"}, {"nam": "Normalize"}, {"name": 3}],
    }
    msgs = problems(minimal(data=data))
    assert "data.transforms[1].nam" in msgs
    assert "data.transforms[1].name" in msgs
    assert "data.transforms[2].name" in msgs


def test_transforms_with_factory_refused():
    data = {"factory": "tiny.py:make_dataset", "transforms": ["ToTensor"]}
    assert "data.transforms" in problems(minimal(data=data))


def test_eval_data_key_paths():
    msgs = problems(minimal(eval_data={"dataset": "FakeData", "subset": 0}))
    assert "eval_data.subset" in msgs


def test_loss_forms():
    assert parse(minimal(loss="mse")).loss == LossSpec("mse", None, {})
    assert parse(minimal(loss={"name": "cross_entropy", "kwargs": {"label_smoothing": 0.1}})).loss
    spec = parse(minimal(loss={"factory": "tiny.py:make_loss", "kwargs": {"label_smoothing": 0}}))
    assert spec.loss.factory.endswith("tiny.py:make_loss") and spec.loss.name is None
    assert parse(minimal(loss="torch.nn:CrossEntropyLoss")).loss.factory == (
        "torch.nn:CrossEntropyLoss"
    )
    assert "unknown loss 'hinge'" in problems(minimal(loss="hinge"))["loss"]
    assert "loss.name" in problems(minimal(loss={"name": "l1"}))
    msgs = problems(minimal(loss={"name": "mse", "kwargs": {"reduction": "sum"}}))
    assert "batch mean" in msgs["loss.kwargs.reduction"]


def test_measure_values():
    msgs = problems(minimal(measure={"groups": 10, "batches": 15}))
    assert "2 * groups = 20" in msgs["measure.batches"]
    assert parse(minimal(measure={"groups": 10, "batches": 20})).measure.batches == 20
    assert parse(minimal(measure={"batches": "auto"})).measure.batches is None
    msgs = problems(minimal(measure={"batches": "lots", "seed": -1, "mode": "test"}))
    assert set(msgs) == {"measure.batches", "measure.seed", "measure.mode"}


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:1", "CUDA:0"])
def test_devices_accepted(device):
    assert parse(minimal(measure={"device": device})).measure.device == device.lower()


@pytest.mark.parametrize("device", ["gpu", "cuda:", "cuda:x", "mps", 0])
def test_devices_refused(device):
    assert "measure.device" in problems(minimal(measure={"device": device}))


def test_schedule():
    assert parse(minimal()).schedule == ScheduleSpec(given=False)
    s = parse(minimal(schedule={"name": "cosine", "warmup_steps": 10, "total_steps": 1000}))
    assert s.schedule == ScheduleSpec(name="cosine", warmup_steps=10, total_steps=1000)
    msgs = problems(minimal(schedule={"name": "linear", "milestones": [5, 2], "gamma": 0}))
    assert set(msgs) == {"schedule.name", "schedule.milestones", "schedule.gamma"}


# ---------------------------------------------------------------------------------------------
# Shorthands and paths
# ---------------------------------------------------------------------------------------------


def test_model_shorthands():
    assert parse(minimal(model="resnet18")).model == ModelSpec("resnet18", None, {})
    spec = parse(minimal(model="torchvision.models.resnet18"))
    assert spec.model.name == "torchvision.models.resnet18"
    spec = parse(minimal(model="tiny.py:make_model"))
    assert spec.model.factory == f"{(ASSETS / 'tiny.py').resolve()}:make_model"
    assert parse(minimal(model="mypkg.models:make")).model.factory == "mypkg.models:make"


def test_checkpoint_shorthands_resolve_against_spec_folder(tmp_path):
    assert parse(minimal(checkpoint="c.pt"), tmp_path).checkpoint.paths == (tmp_path / "c.pt",)
    spec = parse(minimal(checkpoint=["a.pt", "/abs/b.pt"]), tmp_path)
    assert spec.checkpoint.paths == (tmp_path / "a.pt", Path("/abs/b.pt"))
    spec = parse(minimal(checkpoint={"path": "x/c.pt", "key": "ema", "strip_prefix": "module."}))
    assert spec.checkpoint == CheckpointSpec(
        paths=((ASSETS / "x/c.pt").resolve(),), key="ema", strip_prefix=("module.",)
    )
    msgs = problems(minimal(checkpoint={"path": 3, "strip_prefix": [1]}))
    assert set(msgs) == {"checkpoint.path", "checkpoint.strip_prefix[0]"}


def test_relative_paths_resolve_against_spec_file_not_cwd(tmp_path, monkeypatch):
    sub = tmp_path / "specs"
    sub.mkdir()
    (sub / "net.py").write_text("def make():\n    return None\n")
    p = write(
        sub, "model: net.py:make\ndata: CIFAR10\nloss: mse\nbatch_size: 4\ncheckpoint: c.pt\n"
    )
    monkeypatch.chdir(tmp_path)
    spec = load_spec("specs/spec.yaml")
    assert spec.model.factory == f"{(sub / 'net.py').resolve()}:make"
    assert spec.checkpoint.paths == ((sub / "c.pt").resolve(),)
    assert spec.path == p.resolve()


def test_factory_reference_form_checked():
    msgs = problems(minimal(model={"factory": "tiny.py:"}, data={"factory": "nofn"}))
    assert set(msgs) == {"model.factory", "data.factory"}


# ---------------------------------------------------------------------------------------------
# Optimizer
# ---------------------------------------------------------------------------------------------


def opt(**kw):
    return parse(minimal(optimizer=kw)).optimizer


def test_optimizer_defaults():
    assert parse(minimal()).optimizer is None
    sgd = opt(name="sgd", lr=0.1)
    assert (sgd.momentum, sgd.weight_decay, sgd.nesterov) == (0.0, 0.0, False)
    adam = opt(name="adam", lr=1e-3)
    assert (adam.betas, adam.eps, adam.weight_decay) == ((0.9, 0.999), 1e-8, 0.0)
    adamw = opt(name="AdamW", lr=1e-3)
    assert adamw.name == "adamw" and adamw.weight_decay == 0.01
    rms = opt(name="rmsprop", lr=1e-2)
    assert (rms.alpha, rms.eps, rms.momentum) == (0.99, 1e-8, 0.0)


def test_optimizer_values_given():
    a = opt(name="adam", lr="1e-3", betas=[0.8, 0.99], eps=1e-6, weight_decay=0.1)
    assert (a.lr, a.betas, a.eps, a.weight_decay) == (1e-3, (0.8, 0.99), 1e-6, 0.1)
    s = opt(name="sgd", lr=0.1, momentum=0.9, nesterov=True)
    assert s.nesterov and s.momentum == 0.9


def test_optimizer_from_yaml_exponent_without_dot(tmp_path):
    # PyYAML reads 1e-3 as the string "1e-3"; the spec accepts it for float fields.
    raw = yaml.safe_load("name: adam\nlr: 1e-3\n")
    assert isinstance(raw["lr"], str)
    assert opt(**raw).lr == 1e-3


def test_optimizer_problems_all_reported():
    msgs = problems(
        minimal(
            optimizer={
                "name": "adam",
                "lr": -1,
                "betas": [0.9, 1.0],
                "eps": 0,
                "momentum": 0.9,
                "weight_decay": -0.1,
            }
        )
    )
    assert set(msgs) == {
        "optimizer.lr",
        "optimizer.betas[1]",
        "optimizer.eps",
        "optimizer.momentum",
        "optimizer.weight_decay",
    }
    assert "not a hyperparameter of adam" in msgs["optimizer.momentum"]


def test_optimizer_name_lr_and_betas_shape():
    assert (
        "did you mean 'adam'"
        in problems(minimal(optimizer={"name": "adan", "lr": 1}))["optimizer.name"]
    )
    assert "optimizer.lr" in problems(minimal(optimizer={"name": "sgd", "momentum": 0.9}))
    assert "optimizer.name" in problems(minimal(optimizer={"lr": 0.1}))
    msgs = problems(minimal(optimizer={"name": "adam", "lr": 0.1, "betas": [0.9]}))
    assert "two numbers" in msgs["optimizer.betas"]
    msgs = problems(minimal(optimizer={"name": "sgd", "lr": 0.1, "nesterov": True}))
    assert "momentum > 0" in msgs["optimizer.nesterov"]
    msgs = problems(minimal(optimizer={"name": "sgd", "lr": True}))
    assert "(bool)" in msgs["optimizer.lr"]


def test_spec_module_imports_no_torch():
    code = (
        "import sys, bscrit.specfile.document; assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------------------------
# Duplicate keys: PyYAML keeps the last one silently; bscrit reports each with its lines
# ---------------------------------------------------------------------------------------------


def test_duplicate_keys_are_reported_with_their_lines_and_the_other_problems(tmp_path):
    p = write(
        tmp_path,
        "model: resnet18\n"  # 1
        "data:\n"  # 2
        "  dataset: CIFAR10\n"  # 3
        "  transforms:\n"  # 4
        "    - {name: ToTensor, name: Normalize}\n"  # 5
        "loss: cross_entropy\n"  # 6
        "batch_size: 32\n"  # 7
        "optimizer:\n"  # 8
        "  name: sgd\n"  # 9
        "  lr: 0.1\n"  # 10
        "  lr: 0.2\n"  # 11
        "batch_size: 64\n"  # 12
        "measure: {groups: 1}\n",  # 13
    )
    with pytest.raises(SpecError) as info:
        load_spec(p)
    got = {q.key: q.message for q in info.value.problems}
    assert got["batch_size"].startswith("duplicate key: given twice, on lines 7 and 12")
    assert got["optimizer.lr"].startswith("duplicate key: given twice, on lines 10 and 11")
    assert "line:column 5:8 and 5:24" in got["data.transforms[0].name"]
    assert "measure.groups" in got  # listed together with the other problems
    assert [q.key for q in info.value.problems][:3] == [
        "data.transforms[0].name",
        "batch_size",
        "optimizer.lr",
    ]  # in the order of their first line
    assert "batch_size: duplicate key: given twice, on lines 7 and 12" in info.value.message


def test_three_times_and_a_valid_spec_otherwise(tmp_path):
    text = (ASSETS / "valid.yaml").read_text() + "batch_size: 16\nbatch_size: 4\n"
    p = write(tmp_path, text)
    (tmp_path / "tiny.py").write_text((ASSETS / "tiny.py").read_text())
    with pytest.raises(SpecError) as info:
        load_spec(p)
    assert len(info.value.problems) == 1
    assert "given 3 times, on lines" in info.value.problems[0].message


def test_merge_keys_and_aliases_are_not_duplicates(tmp_path):
    p = write(
        tmp_path,
        "base: &opt {name: sgd, lr: 0.1, momentum: 0.9}\n"
        "model: resnet18\n"
        "data: {dataset: CIFAR10, kwargs: {root: data}}\n"
        "loss: cross_entropy\n"
        "batch_size: 32\n"
        "optimizer:\n"
        "  <<: *opt\n"
        "  lr: 0.2\n"  # overrides the merged value, as YAML intends
        "eval_data: {dataset: CIFAR10, kwargs: {root: data}}\n",
    )
    with pytest.raises(SpecError) as info:
        load_spec(p)
    assert [q.key for q in info.value.problems] == ["base"]  # unknown top-level key only
    assert "duplicate" not in info.value.message


@pytest.mark.parametrize("value", [{"name": "AdamW"}, "adamw"])
def test_optimizer_name_alone_reads_the_rest_from_the_checkpoint(value):
    opt = parse(minimal(optimizer=value)).optimizer
    assert (opt.name, opt.source) == ("adamw", optim.NAME_ONLY)


def test_optimizer_new_names_and_switches():
    opt = parse(minimal(optimizer={"name": "nadam", "lr": 2e-3, "momentum_decay": 0.004,
                                   "decoupled_weight_decay": True}))  # fmt: skip
    assert opt.optimizer.momentum_decay == 0.004 and opt.optimizer.decoupled_weight_decay
    msgs = problems(minimal(optimizer={"name": "radam", "lr": 1e-3,
                                       "decoupled_weight_decay": "yes"}))  # fmt: skip
    assert "true or false" in msgs["optimizer.decoupled_weight_decay"]
    assert "not a hyperparameter of lion" in problems(
        minimal(optimizer={"name": "lion", "lr": 1e-4, "eps": 1e-8}))["optimizer.eps"]  # fmt: skip
