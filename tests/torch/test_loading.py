"""Loading: factories, torchvision names, checkpoint layouts and errors, data, loss, device."""

from __future__ import annotations

import dataclasses
import hashlib
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bscrit.errors import BscritError, CheckpointError, DataError, SpecError
from bscrit.load.checkpoints import LoadedCheckpoint, load_checkpoint, load_model
from bscrit.load.device import resolve_device
from bscrit.load.factories import (
    build_dataset,
    build_loss,
    build_model,
    resolve_callable,
)
from bscrit.load.optimizer import optimizer_for, resolve_optimizer
from bscrit.optim.registry import OptimizerInfo
from bscrit.specfile.document import load_spec, parse_spec
from bscrit.specfile.sections import DataSpec

ASSETS = Path(__file__).resolve().parents[1] / "assets"
sys.path.insert(0, str(ASSETS))
import tiny  # noqa: E402


def make_spec(tmp_path: Path, **over):
    raw = {
        "model": {"factory": str(ASSETS / "tiny.py") + ":make_model"},
        "data": {"factory": str(ASSETS / "tiny.py") + ":make_dataset"},
        "loss": "cross_entropy",
        "batch_size": 8,
    }
    raw.update(over)
    return parse_spec(raw, "spec.yaml", tmp_path)


@pytest.fixture
def trained():
    torch.manual_seed(0)
    model = tiny.make_model()
    with torch.no_grad():
        model(torch.randn(16, 4))  # move BatchNorm running stats off their defaults
    return model


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ---------------------------------------------------------------------------------------------
# resolve_callable / build_model
# ---------------------------------------------------------------------------------------------


def test_resolve_callable_from_file_relative_to_base_dir():
    fn = resolve_callable("tiny.py:make_model", ASSETS, "model.factory")
    assert isinstance(fn(width=5), nn.Sequential)


def test_resolve_callable_sibling_import(tmp_path):
    (tmp_path / "helper.py").write_text("WIDTH = 7\n")
    (tmp_path / "net.py").write_text(
        "import torch\nfrom helper import WIDTH\n\n"
        "def make():\n    return torch.nn.Linear(WIDTH, 1)\n"
    )
    model = resolve_callable("net.py:make", tmp_path, "model.factory")()
    assert model.in_features == 7
    assert str(tmp_path) not in sys.path  # only on sys.path while importing


def test_resolve_callable_module_and_dotted_attr():
    assert resolve_callable("torch.nn.functional:mse_loss", Path("."), "loss.factory") is F.mse_loss
    assert resolve_callable("torch:nn.Linear", Path("."), "k") is nn.Linear


@pytest.mark.parametrize(
    "ref, expected",
    [
        ("nope.py:make", "file not found"),
        ("tiny.py:make_modle", "did you mean 'make_model'"),
        ("tiny.py:NOT_CALLABLE", "not callable"),
        ("no_such_pkg_xyz.mod:fn", "cannot import no_such_pkg_xyz.mod"),
        ("tiny", 'expected "file.py:fn"'),
    ],
)
def test_resolve_callable_errors_name_the_key(ref, expected):
    with pytest.raises(SpecError) as info:
        resolve_callable(ref, ASSETS, "model.factory")
    assert info.value.problems[0].key == "model.factory"
    assert expected in info.value.message


def test_resolve_callable_import_error_in_file_is_one_line(tmp_path):
    (tmp_path / "bad.py").write_text("import torch\ndef f(:\n    pass\n")
    (tmp_path / "bad2.py").write_text("import not_a_module_abc\n")
    with pytest.raises(SpecError, match=r"SyntaxError") as info:
        resolve_callable("bad.py:f", tmp_path, "data.factory")
    assert "bad.py" in info.value.message and "Traceback" not in info.value.message
    with pytest.raises(SpecError, match=r"ModuleNotFoundError.*not_a_module_abc"):
        resolve_callable("bad2.py:f", tmp_path, "data.factory")


def test_build_model_factory_with_kwargs():
    spec = make_spec(ASSETS, model={"factory": "tiny.py:make_model", "kwargs": {"width": 5}})
    model = build_model(spec)
    assert model[0].out_features == 5


def test_build_model_factory_errors(tmp_path):
    spec = make_spec(ASSETS, model={"factory": "tiny.py:broken_factory"})
    with pytest.raises(SpecError, match="ValueError: width must be positive"):
        build_model(spec)
    spec = make_spec(ASSETS, model={"factory": "tiny.py:make_model", "kwargs": {"depth": 2}})
    with pytest.raises(SpecError, match="unexpected keyword argument 'depth'"):
        build_model(spec)
    spec = make_spec(ASSETS, model={"factory": "tiny.py:make_dataset"})
    with pytest.raises(SpecError, match="expected an nn.Module, got TensorDataset"):
        build_model(spec)


@pytest.mark.parametrize("name", ["resnet18", "torchvision.models.resnet18"])
def test_build_model_torchvision_name(tmp_path, name):
    spec = make_spec(tmp_path, model={"name": name, "kwargs": {"num_classes": 3}})
    model = build_model(spec)
    assert model.fc.out_features == 3


def test_build_model_unknown_torchvision_name(tmp_path):
    with pytest.raises(SpecError, match="did you mean 'resnet18'") as info:
        build_model(make_spec(tmp_path, model="resnet181"))
    assert info.value.problems[0].key == "model.name"


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: {"state_dict": sd, "epoch": 3},
        lambda sd: {"model": sd, "step": 10},
        lambda sd: {"model_state_dict": sd, "loss": 0.5},
        lambda sd: {"net": sd},
        lambda sd: {"module": sd},
    ],
    ids=["plain", "state_dict", "model", "model_state_dict", "net", "module"],
)
def test_load_model_wrappers(tmp_path, trained, wrap):
    path = tmp_path / "c.pt"
    torch.save(wrap(trained.state_dict()), path)
    model, ckpt = load_model(make_spec(tmp_path), path)
    assert same_weights(model, trained)
    assert isinstance(ckpt, LoadedCheckpoint) and ckpt.path == path and ckpt.optimizer is None


def test_load_model_explicit_key(tmp_path, trained):
    path = tmp_path / "c.pt"
    torch.save({"ema": {"weights": trained.state_dict()}, "model": {}}, path)
    spec = make_spec(tmp_path, checkpoint={"path": "c.pt", "key": "ema.weights"})
    model, _ = load_model(spec)  # path from the spec, relative to its folder
    assert same_weights(model, trained)
    spec = make_spec(tmp_path, checkpoint={"path": "c.pt", "key": "nope"})
    with pytest.raises(CheckpointError, match="no key 'nope'.*ema"):
        load_model(spec)


def test_module_prefix_auto_stripped(tmp_path, trained):
    path = tmp_path / "dp.pt"
    torch.save(nn.DataParallel(trained).state_dict(), path)
    assert next(iter(torch.load(path))).startswith("module.")
    model, ckpt = load_model(make_spec(tmp_path), path)
    assert same_weights(model, trained)
    assert not any(k.startswith("module.") for k in ckpt.state_dict)


def test_compiled_and_dataparallel_prefixes_auto_stripped(tmp_path, trained):
    sd = {f"_orig_mod.module.{k}": v for k, v in trained.state_dict().items()}
    torch.save(sd, tmp_path / "c.pt")
    model, _ = load_model(make_spec(tmp_path), tmp_path / "c.pt")
    assert same_weights(model, trained)


def test_explicit_strip_prefix(tmp_path, trained):
    sd = {f"backbone.{k}": v for k, v in trained.state_dict().items()}
    sd["backbone.extra"] = torch.zeros(1)  # under no prefix do the keys fit: not auto-stripped
    torch.save(sd, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="strip_prefix"):
        load_model(make_spec(tmp_path), tmp_path / "c.pt")
    del sd["backbone.extra"]
    torch.save(sd, tmp_path / "c.pt")
    spec = make_spec(tmp_path, checkpoint={"path": "c.pt", "strip_prefix": "backbone."})
    model, _ = load_model(spec)
    assert same_weights(model, trained)


def test_lightning_checkpoint(tmp_path, trained):
    opt = torch.optim.Adam(trained.parameters(), lr=3e-4, weight_decay=0.01)
    ckpt = {
        "epoch": 2,
        "global_step": 100,
        "pytorch-lightning_version": "2.2.0",
        "state_dict": {f"model.{k}": v for k, v in trained.state_dict().items()},
        "optimizer_states": [opt.state_dict()],
        "lr_schedulers": [],
    }
    # A LightningModule may hold more than the model (here a loss with a buffer).
    ckpt["state_dict"]["criterion.weight"] = torch.ones(3)
    torch.save(ckpt, tmp_path / "l.ckpt")
    model, loaded = load_model(make_spec(tmp_path), tmp_path / "l.ckpt")
    assert same_weights(model, trained)
    assert bare(loaded.optimizer) == OptimizerInfo(
        name="adam",
        lr=3e-4,
        weight_decay=0.01,
        betas=(0.9, 0.999),
        eps=1e-8,
        source="checkpoint",
    )


def test_key_mismatch_lists_keys(tmp_path):
    wide = tiny.make_model(width=8)
    sd = wide.state_dict()
    sd["extra.weight"] = torch.zeros(1)
    del sd["3.bias"]
    torch.save(sd, tmp_path / "c.pt")
    with pytest.raises(CheckpointError) as info:
        load_model(make_spec(tmp_path), tmp_path / "c.pt")
    msg = info.value.message
    assert "1 missing key(s): 3.bias" in msg
    assert "1 unexpected key(s): extra.weight" in msg


def test_many_missing_keys_show_first_five(tmp_path):
    torch.save({"other.weight": torch.zeros(1)}, tmp_path / "c.pt")
    with pytest.raises(CheckpointError) as info:
        load_model(make_spec(tmp_path), tmp_path / "c.pt")
    msg = info.value.message
    n = len(tiny.make_model().state_dict())
    assert f"{n} missing key(s): 0.weight, 0.bias, 1.weight, 1.bias, 1.running_mean, ..." in msg


def test_shape_mismatch_lists_shapes(tmp_path):
    torch.save(tiny.make_model(width=6).state_dict(), tmp_path / "c.pt")
    with pytest.raises(CheckpointError) as info:
        load_model(make_spec(tmp_path), tmp_path / "c.pt")
    assert "shape mismatch 0.weight: checkpoint [6, 4], model [8, 4]" in info.value.message


def test_weights_only_refuses_pickled_module_and_unsafe_loads_it(tmp_path, trained):
    path = tmp_path / "full.pt"
    torch.save(trained, path)
    with pytest.raises(CheckpointError) as info:
        load_model(make_spec(tmp_path), path)
    msg = info.value.for_cli()  # the library names the option, the CLI writes its flag
    assert "--unsafe-load" in msg and "pickled" in msg and str(path) in msg
    assert "re-run with unsafe_load" in info.value.message
    model, _ = load_model(make_spec(tmp_path), path, unsafe=True)
    assert same_weights(model, trained)


def bare(info: OptimizerInfo) -> OptimizerInfo:
    """``info`` without what a checkpoint adds (param groups, the current lr, how it was named)."""
    return dataclasses.replace(info, groups=(), lr_current=None, identified_by=None)


def test_optimizer_info_from_sgd_checkpoint_asset():
    ckpt = load_checkpoint(ASSETS / "tiny.pt")
    assert bare(ckpt.optimizer) == OptimizerInfo(
        name="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4, source="checkpoint"
    )
    spec = load_spec(ASSETS / "valid.yaml")
    model, loaded = load_model(spec)
    assert isinstance(model, nn.Module) and loaded.path == ASSETS / "tiny.pt"


@pytest.mark.parametrize(
    "make, wrapper, expected",
    [
        (lambda p: torch.optim.SGD(p, lr=0.05, nesterov=True, momentum=0.8), "optimizer",
         dict(name="sgd", lr=0.05, momentum=0.8, nesterov=True)),
        (lambda p: torch.optim.Adam(p, lr=1e-3, betas=(0.8, 0.99)), "optimizer_state_dict",
         dict(name="adam", lr=1e-3, betas=(0.8, 0.99), eps=1e-8)),
        (lambda p: torch.optim.AdamW(p, lr=1e-3), "optimizer",
         dict(name="adamw", lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)),
        (lambda p: torch.optim.RMSprop(p, lr=1e-2, alpha=0.9), "optimizer",
         dict(name="rmsprop", lr=1e-2, alpha=0.9, eps=1e-8)),
    ],
    ids=["sgd", "adam", "adamw", "rmsprop"],
)  # fmt: skip
def test_optimizer_info_from_checkpoint(tmp_path, trained, make, wrapper, expected):
    opt = make(trained.parameters())
    torch.save({"model": trained.state_dict(), wrapper: opt.state_dict()}, tmp_path / "c.pt")
    info = load_checkpoint(tmp_path / "c.pt").optimizer
    assert bare(info) == OptimizerInfo(**expected, source="checkpoint")
    assert info.lr_current == info.lr and len(info.groups) == 1


def test_adamw_from_wrapper_name(tmp_path, trained):
    # Older PyTorch AdamW param_groups look like Adam's; a name saved beside them decides.
    opt = torch.optim.Adam(trained.parameters(), lr=1e-3)
    sd = opt.state_dict()
    sd["param_groups"][0].pop("decoupled_weight_decay", None)
    torch.save({"model": trained.state_dict(), "optimizer": sd, "optimizer_name": "AdamW"},
               tmp_path / "c.pt")  # fmt: skip
    assert load_checkpoint(tmp_path / "c.pt").optimizer.name == "adamw"
    # nothing saved names it: no optimizer, and a note that says which spec key settles it
    torch.save({"model": trained.state_dict(), "optimizer": sd}, tmp_path / "d.pt")
    ckpt = load_checkpoint(tmp_path / "d.pt")
    assert ckpt.optimizer is None and "optimizer.name in the spec" in ckpt.optimizer_note
    info, notes = resolve_optimizer(make_spec(tmp_path, optimizer={"name": "adamw"}), ckpt)
    assert (info.name, info.lr, info.source, notes) == ("adamw", 1e-3, "checkpoint", [])


def test_optimizer_for_prefers_spec(tmp_path):
    ckpt = load_checkpoint(ASSETS / "tiny.pt")
    spec = make_spec(tmp_path, optimizer={"name": "adam", "lr": 1e-3})
    assert optimizer_for(spec, ckpt).source == "spec"
    assert optimizer_for(make_spec(tmp_path), ckpt).source == "checkpoint"
    empty = LoadedCheckpoint(state_dict={}, optimizer=None, path=tmp_path)
    assert optimizer_for(make_spec(tmp_path), empty) is None
    with pytest.raises(CheckpointError, match="gives only name: adam.*no optimizer state"):
        optimizer_for(make_spec(tmp_path, optimizer={"name": "adam"}), empty)
    # a spec that names another optimizer than the state is: used, with a warning
    info, notes = resolve_optimizer(make_spec(tmp_path, optimizer={"name": "adam", "lr": 1}), ckpt)
    assert info.name == "adam" and "looks like sgd's" in notes[0]


def test_missing_and_corrupt_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="not found.*nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint .*bad.pt") as info:
        load_checkpoint(bad)
    assert "--unsafe-load" not in info.value.message
    good = (ASSETS / "tiny.pt").read_bytes()
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="trunc.pt"):
        load_checkpoint(trunc)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_model(make_spec(tmp_path))


def test_no_state_dict_in_checkpoint(tmp_path):
    torch.save({"epoch": 3, "notes": "hi"}, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="no state_dict found.*epoch, notes"):
        load_checkpoint(tmp_path / "c.pt")


def test_load_model_does_not_modify_file():
    path = ASSETS / "tiny.pt"
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    load_model(load_spec(ASSETS / "valid.yaml"))
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def test_dataset_factory_and_subset():
    data = DataSpec(dataset=None, factory="tiny.py:make_dataset", kwargs={"n": 20}, subset=5)
    ds = build_dataset(data, ASSETS)
    assert len(ds) == 5
    x, y = ds[4]
    assert x.shape == (4,) and torch.equal(x, tiny.make_dataset(n=20).tensors[0][4])
    full = build_dataset(dataclasses.replace(data, subset=None), ASSETS)
    assert len(full) == 20


def test_dataset_factory_error_is_data_error():
    data = DataSpec(dataset=None, factory="tiny.py:make_dataset", kwargs={"bogus": 1})
    with pytest.raises(DataError, match=r"^eval_data: .*bogus"):
        build_dataset(data, ASSETS, key="eval_data")
    data = DataSpec(dataset=None, factory="tiny.py:make_loss", kwargs={})
    with pytest.raises(DataError, match="__len__"):
        build_dataset(data, ASSETS)


def test_torchvision_dataset_with_transforms(tmp_path):
    spec = make_spec(
        tmp_path,
        data={
            "dataset": "torchvision.datasets.FakeData",
            "kwargs": {"size": 10, "image_size": [3, 8, 8], "num_classes": 4},
            "transforms": [
                "ToTensor",
                {"name": "Normalize", "kwargs": {"mean": [0.5] * 3, "std": [0.5] * 3}},
            ],
            "subset": 6,
        },
    )
    ds = build_dataset(spec.data, spec.base_dir)
    assert len(ds) == 6
    x, y = ds[0]
    assert isinstance(x, torch.Tensor) and x.shape == (3, 8, 8)
    assert x.min() >= -1.0 and x.max() <= 1.0 and x.min() < 0  # normalised to [-1, 1]


def test_torchvision_dataset_errors(tmp_path):
    bad_name = DataSpec(dataset="CIFAR100x", factory=None, kwargs={})
    with pytest.raises(SpecError, match="did you mean 'CIFAR100'") as info:
        build_dataset(bad_name, tmp_path)
    assert info.value.problems[0].key == "data.dataset"
    bad_tf = DataSpec(
        dataset="FakeData", factory=None, kwargs={}, transforms=({"name": "ToTensr"},)
    )
    with pytest.raises(SpecError, match="did you mean 'ToTensor'") as info:
        build_dataset(bad_tf, tmp_path)
    assert info.value.problems[0].key == "data.transforms[0].name"
    missing = DataSpec(dataset="MNIST", factory=None, kwargs={"root": "nodata", "download": False})
    with pytest.raises(DataError, match=r"^data: .*MNIST.*(not found|download)") as info:
        build_dataset(missing, tmp_path)


# ---------------------------------------------------------------------------------------------
# Loss and device
# ---------------------------------------------------------------------------------------------


def test_builtin_losses(tmp_path):
    out, target = torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    ce = build_loss(make_spec(tmp_path, loss="cross_entropy"))
    assert torch.allclose(ce(out, target), F.cross_entropy(out, target))
    mse = build_loss(make_spec(tmp_path, loss="mse"))
    y = torch.randn(6, 3)
    assert torch.allclose(mse(out, y), ((out - y) ** 2).mean())
    smooth = build_loss(
        make_spec(tmp_path, loss={"name": "cross_entropy", "kwargs": {"label_smoothing": 0.2}})
    )
    assert torch.allclose(smooth(out, target), F.cross_entropy(out, target, label_smoothing=0.2))


def test_factory_loss(tmp_path):
    spec = make_spec(
        ASSETS, loss={"factory": "tiny.py:make_loss", "kwargs": {"label_smoothing": 0.1}}
    )
    loss = build_loss(spec)
    assert isinstance(loss, nn.CrossEntropyLoss) and loss.label_smoothing == 0.1
    loss = build_loss(make_spec(tmp_path, loss="torch.nn:MSELoss"))
    assert isinstance(loss, nn.MSELoss)


def test_sum_reduction_refused(tmp_path):
    with pytest.raises(SpecError, match="batch mean"):
        build_loss(make_spec(ASSETS, loss={"factory": "tiny.py:make_sum_loss"}))
    spec = make_spec(tmp_path, loss={"factory": "torch.nn:L1Loss", "kwargs": {"reduction": "sum"}})
    with pytest.raises(SpecError, match="reduction='sum'"):
        build_loss(spec)


def test_resolve_device(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(BscritError, match="no CUDA device is available"):
        resolve_device("cuda")
    with pytest.raises(BscritError, match="no CUDA device is available"):
        resolve_device("cuda:0")
    with pytest.raises(BscritError, match="unknown device 'gpu'"):
        resolve_device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(BscritError, match="only 1 CUDA device"):
        resolve_device("cuda:3")


def test_data_parallel_factory_is_unwrapped_and_loads_a_plain_checkpoint(
    tmp_path: Path, trained: nn.Module
) -> None:
    (tmp_path / "wrapped.py").write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(ASSETS)!r})\n"
        "import torch, tiny\n"
        "def make():\n"
        "    return torch.nn.DataParallel(tiny.make_model())\n"
    )
    torch.save(trained.state_dict(), tmp_path / "plain.pt")
    spec = make_spec(tmp_path, model={"factory": "wrapped.py:make"})
    assert not isinstance(build_model(spec), nn.DataParallel)
    model, _ = load_model(spec, tmp_path / "plain.pt")
    for k, v in trained.state_dict().items():
        assert torch.equal(model.state_dict()[k], v)


# ---------------------------------------------------------------------------------------------
# Files torch cannot read, and whole pickled models (no torch advice about weights_only)
# ---------------------------------------------------------------------------------------------


def _not_checkpoints(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    import random

    files = {
        "random": (random.Random(0).randbytes(4096), "neither a zip archive nor a torch pickle"),
        "text": (b"model: resnet18\nbatch_size: 32\n", "a text file"),
        "empty": (b"", "the file is empty"),
        "plain_pickle": (b"\x80\x04\x95\x0b\x00\x00\x00\x00\x00\x00\x00}\x94\x8c\x01a\x94K\x01s.",
                         "not one written by torch.save"),
        "safetensors": (b"\x10\x00\x00\x00\x00\x00\x00\x00" + b'{"__metadata__":{}}',
                        "a damaged safetensors file"),  # header length 16, header 19 bytes
    }  # fmt: skip
    out = {}
    for name, (data, why) in files.items():
        p = tmp_path / f"{name}.pt"
        p.write_bytes(data)
        out[name] = (p, why)
    return out


@pytest.mark.parametrize("unsafe", [False, True])
def test_random_bytes_are_not_a_pytorch_checkpoint(tmp_path, unsafe):
    for name, (path, why) in _not_checkpoints(tmp_path).items():
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path, unsafe=unsafe)
        msg = info.value.for_cli()
        assert f"cannot read checkpoint {path}" in msg, name
        assert why in msg, (name, msg)
        assert "not a PyTorch checkpoint" in msg or name == "safetensors"
        assert "weights_only" not in msg and "--unsafe-load" not in msg, (name, msg)


def test_damaged_zip_and_foreign_zip(tmp_path):
    import zipfile

    good = (ASSETS / "tiny.pt").read_bytes()
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="damaged zip archive") as info:
        load_checkpoint(trunc)
    assert "--unsafe-load" not in info.value.for_cli()
    foreign = tmp_path / "foreign.pt"
    with zipfile.ZipFile(foreign, "w") as z:
        z.writestr("notes.txt", "hello")
    with pytest.raises(CheckpointError, match="zip archive without the data.pkl"):
        load_checkpoint(foreign)


def test_pickled_objects_that_are_not_a_model_suggest_unsafe_load_only(tmp_path, trained):
    # A pickle of objects (here a whole optimizer) is refused by weights-only loading.
    opt = torch.optim.SGD(trained.parameters(), lr=0.1)
    torch.save({"model": trained.state_dict(), "optimizer": opt}, tmp_path / "c.pt")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "c.pt")
    msg = info.value.for_cli()
    assert "pickled Python objects (e.g. torch.optim.sgd.SGD)" in msg
    assert "--unsafe-load" in msg and "key:" not in msg and "weights_only" not in msg
    assert load_checkpoint(tmp_path / "c.pt", unsafe=True).state_dict.keys() == (
        trained.state_dict().keys()
    )


def test_whole_model_at_an_unusual_key_names_the_key_to_use(tmp_path, trained):
    path = tmp_path / "ema.pt"
    torch.save({"ema_model": trained, "epoch": 3}, path)
    with pytest.raises(CheckpointError) as info:
        load_model(make_spec(tmp_path), path)
    msg = info.value.for_cli()
    assert "whole pickled model (Sequential at key 'ema_model')" in msg
    assert "--unsafe-load and set `key: ema_model` under checkpoint" in msg
    # --unsafe-load alone: the model is not where state_dicts usually are; the key is named.
    with pytest.raises(CheckpointError, match="weights are at 'ema_model'"):
        load_model(make_spec(tmp_path), path, unsafe=True)
    # both, as the message says: it loads.
    spec = make_spec(tmp_path, checkpoint={"path": "ema.pt", "key": "ema_model"})
    model, _ = load_model(spec, unsafe=True)
    assert same_weights(model, trained)


def test_several_whole_models_and_nested_keys(tmp_path, trained):
    torch.save({"run": {"student": trained, "teacher": tiny.make_model()}}, tmp_path / "c.pt")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "c.pt")
    assert "set checkpoint.key in the spec to the model to measure: 'run.student' or " \
        "'run.teacher'" in info.value.for_cli()  # fmt: skip
    ckpt = load_checkpoint(tmp_path / "c.pt", key="run.student", unsafe=True)
    assert all(torch.equal(ckpt.state_dict[k], v) for k, v in trained.state_dict().items())


def test_whole_model_of_a_class_from_the_spec_folder_loads_after_unsafe_load(tmp_path):
    # torch.save(model) of a class defined in a module beside the spec, legacy format too.
    (tmp_path / "mynet.py").write_text(
        "import torch\n\nclass Net(torch.nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n"
        "        self.body = torch.nn.Linear(4, 3)\n\n"
        "    def forward(self, x):\n        return self.body(x)\n\n"
        "def make():\n    return Net()\n"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        import mynet

        net = mynet.make()
        torch.save(net, tmp_path / "zip.pt")
        torch.save(net, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("mynet", None)
    spec = make_spec(tmp_path, model={"factory": "mynet.py:make"})
    for name in ("zip.pt", "legacy.pt"):
        with pytest.raises(CheckpointError) as info:
            load_model(spec, tmp_path / name)
        msg = info.value.for_cli()
        assert "whole pickled model (Net, the whole file)" in msg, msg
        assert "--unsafe-load (or save model.state_dict() instead)" in msg
        model, _ = load_model(spec, tmp_path / name, unsafe=True)
        assert all(torch.equal(model.state_dict()[k], v) for k, v in net.state_dict().items())
    sys.modules.pop("mynet", None)


def test_whole_model_of_a_main_class_is_not_offered_unsafe_load(tmp_path):
    # The class lives in the training script's __main__: no other program can unpickle it.
    script = tmp_path / "train.py"
    script.write_text(
        "import torch\n\nclass Net(torch.nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n"
        "        self.body = torch.nn.Linear(4, 3)\n\n"
        f"torch.save(Net(), {str(tmp_path / 'main.pt')!r})\n"
    )
    import subprocess

    subprocess.run([sys.executable, str(script)], check=True, timeout=120)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "main.pt")
    msg = info.value.for_cli()
    assert "defined in the training script itself (__main__)" in msg
    assert "--unsafe-load" not in msg and "model.state_dict()" in msg
    with pytest.raises(CheckpointError, match="class cannot be imported") as info:
        load_checkpoint(tmp_path / "main.pt", unsafe=True)
    assert "Traceback" not in info.value.message


def test_pickle_scan_runs_nothing_from_the_file(tmp_path):
    # A malicious pickle (os.system on load) is only looked at, never run, by the scan.
    import pickle

    from bscrit.load.checkpoint_file import pickled_models

    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    torch.save({"x": torch.zeros(1)}, path)
    import zipfile

    with zipfile.ZipFile(path) as z:
        items = {n: z.read(n) for n in z.namelist()}
    data_pkl = next(n for n in items if n.endswith("/data.pkl"))
    items[data_pkl] = pickle.dumps({"model": Evil()}, protocol=2)
    with zipfile.ZipFile(path, "w") as z:
        for n, b in items.items():
            z.writestr(n, b)
    assert pickled_models(path) == []
    with pytest.raises(CheckpointError, match="pickled Python objects .e.g. posix.system"):
        load_checkpoint(path)
    assert not marker.exists()
