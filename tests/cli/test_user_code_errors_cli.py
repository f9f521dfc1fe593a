"""The user's own code raising while it runs, parameters the loss never reaches, and bugs in
bscrit, through the command line (docs/reliability.md).

Every exception the model's forward, the loss, the backward pass, a dataset item or the collate
function raises is exit 3 with one line naming where it came from, the batch (or the run and its
step) and the original message; a parameter with a zero gradient on every batch is a warning,
not a crash; anything else unexpected is exit 4 ("internal error", never 1: that is `check`'s
FAIL), its traceback shown by --debug or BSCRIT_DEBUG=1 only.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from bscrit.cli import app
from bscrit.errors import ENV_DEBUG

ASSETS = Path(__file__).resolve().parents[1] / "assets"
runner = CliRunner()

#: Models, losses and datasets that raise while they run (and one with an unused head).
BAD = """
import torch
from torch import nn


class Raising(nn.Module):
    def __init__(self, error="KeyError", after=0):
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.error, self.after, self.calls = error, after, 0

    def forward(self, x):
        self.calls += 1
        if self.calls > self.after:
            if self.error == "KeyError":
                raise KeyError("missing_feature")
            if self.error == "AssertionError":
                assert x.shape[1] == 5, "expected 5 features"
            if self.error == "backward":
                return Explode.apply(self.lin(x))
            raise ZeroDivisionError("model divided by zero")
        return self.lin(x)


class Explode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        raise RuntimeError("custom backward exploded")


def make_model(error="KeyError", after=0):
    return Raising(error, after)


class WithHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 3)
        self.unused = nn.Linear(4, 2)  # requires_grad, never called

    def forward(self, x):
        return self.body(x)


def make_unused_head():
    return WithHead()


def make_meta_model():
    with torch.device("meta"):
        return nn.Linear(4, 3)


def key_error_loss():
    def loss(out, y):
        return {"ce": nn.functional.cross_entropy}["mse"](out, y)
    return loss


def zero_loss():
    def loss(out, y):
        return (out * 0.0).mean()
    return loss


class Items(torch.utils.data.Dataset):
    def __init__(self, n=64, bad=13, error="KeyError", after=None, ragged=False):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 4, generator=g)
        self.y = torch.randint(0, 3, (n,), generator=g)
        self.bad, self.error, self.after, self.ragged, self.calls = bad, error, after, ragged, 0

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        self.calls += 1
        if i == self.bad or (self.after is not None and self.calls > self.after):
            if self.error == "KeyError":
                raise KeyError(f"image_{i}")
            raise OSError(f"cannot open file {i}.png")
        return (self.x[i][: 3 if self.ragged and i % 2 else 4], self.y[i])


def make_items(n=64, bad=13, error="KeyError", after=None, ragged=False):
    return Items(n, bad, error, after, ragged)
"""


@pytest.fixture()
def work(tmp_path: Path) -> Path:
    for name in ("tiny.py", "tiny.pt"):
        shutil.copy(ASSETS / name, tmp_path / name)
    (tmp_path / "bad.py").write_text(BAD)
    torch.manual_seed(0)
    torch.save({"model": torch.nn.Linear(4, 3).state_dict()}, tmp_path / "linear.pt")
    lin = {f"lin.{k}": v for k, v in torch.nn.Linear(4, 3).state_dict().items()}
    torch.save({"model": lin}, tmp_path / "raising.pt")
    head = {f"body.{k}": v for k, v in torch.nn.Linear(4, 3).state_dict().items()}
    head |= {f"unused.{k}": v for k, v in torch.nn.Linear(4, 2).state_dict().items()}
    torch.save({"model": head}, tmp_path / "head.pt")
    return tmp_path


def _spec(work: Path, name: str, **sections: object) -> Path:
    """A spec (JSON is YAML) for the tiny model, with ``sections`` replaced."""
    spec = {
        "model": {"factory": "tiny.py:make_model", "kwargs": {"width": 8}},
        "checkpoint": {"path": "tiny.pt"},
        "data": {"factory": "tiny.py:make_dataset", "kwargs": {"n": 64}},
        "loss": "cross_entropy",
        "batch_size": 8,
        "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5.0e-4},
        "measure": {"groups": 4, "seed": 0, "device": "cpu", "mode": "train"},
    } | sections
    path = work / f"{name}.yaml"
    path.write_text(json.dumps(spec))
    return path


def _raising(error: str, after: int = 0) -> dict:
    return {
        "model": {"factory": "bad.py:make_model", "kwargs": {"error": error, "after": after}},
        "checkpoint": {"path": "raising.pt", "key": "model"},
    }


def _flat(text: str) -> str:
    return " ".join(text.split())  # rich wraps long lines


def _failed(r, code: int = 3) -> str:
    assert r.exit_code == code, r.output
    assert "Traceback" not in r.output
    return _flat(r.output)


# ----------------------------------------------------------------------------------------------
# bscrit measure: the origin, the batch, the original message; exit 3, no file
# ----------------------------------------------------------------------------------------------

MEASURE_CASES = {
    "model KeyError": (_raising("KeyError"), "the forward/backward pass failed at batch 0: "
                       "KeyError: 'missing_feature' (raised by the model's forward)"),
    "model AssertionError": (_raising("AssertionError"), "at batch 0: AssertionError: expected 5 "
                             "features (raised by the model's forward)"),
    "model later batch": (_raising("Zero", after=5), "the forward/backward pass failed at batch "
                          "5: ZeroDivisionError: model divided by zero (raised by the model's "
                          "forward)"),
    "backward": (_raising("backward"), "the forward/backward pass failed at batch 0: custom "
                 "backward exploded (raised by the backward pass)"),
    "loss KeyError": ({"loss": {"factory": "bad.py:key_error_loss"}}, "the forward/backward pass "
                      "failed at batch 0: KeyError: 'mse' (raised by the loss function)"),
    "dataset item": ({"data": {"factory": "bad.py:make_items"}}, "reading the examples failed at "
                     "batch 1: KeyError: 'image_13' (raised by dataset item 13)"),
    "dataset item in a worker": (
        {"data": {"factory": "bad.py:make_items", "kwargs": {"error": "OSError"},
                  "num_workers": 2}},
        "reading the examples failed at batch 1: OSError: cannot open file 13.png (raised by "
        "dataset item 13)",
    ),
    "collate": ({"data": {"factory": "bad.py:make_items", "kwargs": {"bad": -1, "ragged": True}}},
                "reading the examples failed at batch 0: stack expects each tensor to be equal "
                "size"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(MEASURE_CASES))
def test_measure_names_the_users_code_that_raised(work: Path, case: str) -> None:
    sections, expected = MEASURE_CASES[case]
    out = work / "m.json"
    args = ["measure", str(_spec(work, "bad", **sections)), "--batches", "16", "--out", str(out)]
    text = _failed(runner.invoke(app, [*args, "--quiet"]))
    assert expected in text
    if case == "collate":
        assert "(raised by the collate function (torch's default_collate))" in text
    assert not out.exists()


def test_debug_shows_the_users_traceback_with_the_same_exit_code(
    work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_DEBUG, "0")  # --debug sets it to 1: unset again after the test
    spec = _spec(work, "loss", loss={"factory": "bad.py:key_error_loss"})
    r = runner.invoke(app, ["--debug", "measure", str(spec), "--batches", "16", "--quiet"])
    assert r.exit_code == 3, r.output
    assert "raised by the loss function" in _flat(r.output)
    assert "Traceback" in r.output and "in loss" in r.output  # the user's own frame


def test_a_model_on_the_meta_device_is_refused_before_any_work(work: Path) -> None:
    spec = _spec(
        work, "meta", model={"factory": "bad.py:make_meta_model"},
        checkpoint={"path": "linear.pt", "key": "model"},
    )  # fmt: skip
    text = _failed(runner.invoke(app, ["measure", str(spec), "--batches", "16", "-q"]), 2)
    assert "model.factory: the model has 2 tensor(s) on the meta device" in text
    assert "to_empty" in text


# ----------------------------------------------------------------------------------------------
# A parameter whose gradient is zero on every batch
# ----------------------------------------------------------------------------------------------


def test_a_parameter_with_a_zero_gradient_is_reported_and_left_out(work: Path) -> None:
    spec = _spec(
        work, "head", model={"factory": "bad.py:make_unused_head"},
        checkpoint={"path": "head.pt", "key": "model"},
    )  # fmt: skip
    out = work / "m.json"
    r = runner.invoke(app, ["measure", str(spec), "--batches", "40", "--out", str(out),
                            "--per-tensor", "all"])  # fmt: skip
    assert r.exit_code == 0, r.output
    text = _flat(r.output)
    assert "2 parameter tensor(s) had a zero gradient on every batch" in text
    assert "unused.weight, unused.bias" in text
    d = json.loads(out.read_text())
    assert d["schema"] == 1 and d["extra"]["zero_gradient"] == ["unused.weight", "unused.bias"]
    assert d["stats"]["all"]["num_params"] == 15  # body only: 4×3 + 3
    assert d["stats"]["all"]["N"] > 0 and d["stats"]["all"]["nsr"] is not None
    rows = {row["name"]: row for row in d["per_parameter"]}
    assert rows["unused.weight"]["G"] == rows["unused.weight"]["N"] == 0.0
    csv = out.with_name("m.params.csv").read_text().splitlines()
    assert any(line.startswith("unused.bias,2,2,0.0,0.0,inf,") for line in csv)
    r = runner.invoke(app, ["predict", str(out)])
    assert r.exit_code == 0, r.output


def test_a_loss_that_reaches_no_parameter_is_exit_3(work: Path) -> None:
    spec = _spec(work, "zero", loss={"factory": "bad.py:zero_loss"})
    out = work / "m.json"
    r = runner.invoke(app, ["measure", str(spec), "--batches", "16", "--out", str(out), "-q"])
    assert "gradient of every measured parameter (6 tensor(s)) was zero" in _failed(r)
    assert not out.exists()


# ----------------------------------------------------------------------------------------------
# svag and confirm: the run, the origin, the original message
# ----------------------------------------------------------------------------------------------

SVAG = ["-t", "16", "--effective-steps", "4", "--eval-every", "2", "--eval-batches", "2",
        "--device", "cpu", "--quiet"]  # fmt: skip
CONFIRM = ["-t", "16", "--examples", "512", "--seeds", "2", "--points", "4", "--eval-batches",
           "2", "--quiet"]  # fmt: skip

RUN_CASES = {
    "svag model": ("svag", _raising("AssertionError"), "SVAG run l = 1: the forward/backward "
                   "pass failed on the fixed evaluation batches: AssertionError: expected 5 "
                   "features (raised by the model's forward)"),
    "svag dataset item, in the stream": (
        "svag", {"data": {"factory": "bad.py:make_items", "kwargs": {"bad": -1, "after": 40}}},
        "SVAG run l = 1: reading the examples failed at SVAG batch 0: KeyError: 'image_",
    ),
    "svag loss": ("svag", {"loss": {"factory": "bad.py:key_error_loss"}}, "SVAG run l = 1: the "
                  "forward/backward pass failed on the fixed evaluation batches: KeyError: 'mse' "
                  "(raised by the loss function)"),
    "confirm model, at a step": ("confirm", _raising("Zero", after=5), "the forward/backward "
                                 "pass failed in the confirm base branch (B = 8), seed 0 at step "
                                 "3: ZeroDivisionError: model divided by zero (raised by the "
                                 "model's forward)"),
    "confirm dataset item": ("confirm", {"data": {"factory": "bad.py:make_items",
                                                  "kwargs": {"bad": -1, "after": 0}}},
                             "reading the examples failed on the fixed evaluation batches: "
                             "KeyError: 'image_"),
    "confirm collate": ("confirm", {"data": {"factory": "bad.py:make_items",
                                             "kwargs": {"bad": -1, "ragged": True}}},
                        "(raised by the collate function (torch's default_collate))"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(RUN_CASES))
def test_svag_and_confirm_name_the_users_code_that_raised(work: Path, case: str) -> None:
    torch.set_num_threads(1)
    command, sections, expected = RUN_CASES[case]
    out = work / "out"
    spec = _spec(work, "bad", **sections)
    args = [command, str(spec), *(SVAG if command == "svag" else CONFIRM), "--out", str(out)]
    text = _failed(runner.invoke(app, args))
    assert expected in text
    if "dataset item" in case:
        assert "(raised by dataset item " in text
    assert not out.exists()


# ----------------------------------------------------------------------------------------------
# A bug in bscrit: exit 4, one line; --debug / BSCRIT_DEBUG=1 add the traceback
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("debug", ["", "--debug", "env"])
def test_an_internal_error_is_exit_4_with_one_line(
    work: Path, monkeypatch: pytest.MonkeyPatch, debug: str
) -> None:
    import bscrit.stats.summary

    def broken(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("float division by zero\nsecond line")

    monkeypatch.setattr(bscrit.stats.summary, "summarize_checkpoint", broken)
    monkeypatch.setenv(ENV_DEBUG, "1" if debug == "env" else "0")  # --debug sets it to 1
    out = work / "m.json"
    args = ["measure", str(_spec(work, "ok")), "--batches", "16", "--out", str(out), "-q"]
    r = runner.invoke(app, ["--debug", *args] if debug == "--debug" else args)
    assert r.exit_code == 4, r.output
    line = (
        "internal error: ZeroDivisionError: float division by zero (a bug in bscrit: please "
        "report it; --debug shows the traceback)"
    )
    assert line in r.output
    assert ("Traceback" in r.output) == ("second line" in r.output) == bool(debug)
    assert not out.exists()
