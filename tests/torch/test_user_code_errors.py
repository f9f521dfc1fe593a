"""The user's code raising while it runs, through the Python API and the engine: a
MeasurementError / RunError naming the origin (model, loss, backward pass, dataset item, collate
function) and the batch or step; a parameter with a zero gradient on every batch reported and
left out, not a crash; a torchrun rank's unexpected error is exit 4, never 1."""

from __future__ import annotations

import math
import socket
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import bscrit
from bscrit.engine.data import BatchSource
from bscrit.engine.distributed import _describe_failure
from bscrit.engine.sampling import continue_training
from bscrit.errors import (
    ExitCode,
    MeasurementError,
    RunError,
    UsageError,
    UserCodeError,
    internal_message,
)
from bscrit.stats.estimators import GroupSums
from bscrit.stats.summary import TensorSums, summarize_checkpoint

ASSETS = Path(__file__).resolve().parents[1] / "assets"
sys.path.insert(0, str(ASSETS))
import tiny  # noqa: E402

B, K, M = 8, 16, 4


class WithHead(nn.Module):
    """A body the loss uses and a head it never reaches (requires_grad all the same)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Linear(4, 3)
        self.unused = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Broken(Dataset):
    """Pairs of the tiny dataset; the items ``bad``, ``bad + 4``, ... raise a KeyError."""

    def __init__(self, bad: int = 1) -> None:
        self.inner, self.bad = tiny.make_dataset(n=64), bad

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i: int):
        if i >= self.bad and (i - self.bad) % 4 == 0:
            raise KeyError(f"image_{i}")
        return self.inner[i]


# ----------------------------------------------------------------------------------------------
# A parameter with a zero gradient on every batch
# ----------------------------------------------------------------------------------------------


def test_api_reports_a_parameter_with_a_zero_gradient_and_leaves_it_out() -> None:
    model, ds = WithHead(), tiny.make_dataset(n=64)
    m = bscrit.measure(model, ds, nn.functional.cross_entropy, B, num_batches=K, groups=M)
    assert m.extra["zero_gradient"] == ["unused.weight", "unused.bias"]
    assert any("zero gradient on every batch" in w and "unused.weight" in w for w in m.warnings)
    assert m.all.num_params == 15 and m.all.N > 0 and math.isfinite(m.all.nsr)
    rows = {r.name: r for r in m.per_parameter}
    assert rows["unused.bias"].G == rows["unused.bias"].N == 0.0
    assert rows["body.weight"].N > 0
    p = bscrit.predict(m)
    assert math.isfinite(p.base.b_star)
    # the same numbers as a model without the head: the head only adds zeros
    plain = nn.Sequential()
    plain.add_module("body", model.body)
    m2 = bscrit.measure(plain, ds, nn.functional.cross_entropy, B, num_batches=K, groups=M)
    assert m2.all.G == pytest.approx(m.all.G) and m2.all.N == pytest.approx(m.all.N)
    assert "zero_gradient" not in m2.extra


def _sums(q: float) -> GroupSums:
    return GroupSums(((q, 0.0), (0.0, q)), (q, q), (2, 2))


def test_summary_leaves_zero_tensors_out_and_refuses_all_zero() -> None:
    live = TensorSums("w", (3,), _sums(1.0), 2.0, 0.1, 1.0)
    dead = TensorSums("head", (2,), _sums(0.0), 5.0, 0.0, 0.0)
    s = summarize_checkpoint("x", [live, dead], None, 0.0)
    assert s.zero_gradient_names == ("head",)
    assert s.stats.all.num_params == 3 and s.stats.all.R == 2.0
    assert [(r.name, r.G, r.N) for r in s.rows][1] == ("head", 0.0, 0.0)
    with pytest.raises(MeasurementError, match="zero on every batch"):
        summarize_checkpoint("x", [dead], None, 0.0)


# ----------------------------------------------------------------------------------------------
# The user's code raising, through the API
# ----------------------------------------------------------------------------------------------


def _measure(model: nn.Module, data: object, loss: object) -> None:
    bscrit.measure(model, data, loss, B, num_batches=K, groups=M)


def test_api_names_the_dataset_item_and_the_collate_function() -> None:
    with pytest.raises(MeasurementError, match=r"reading the examples failed at batch 0: "
                       r"KeyError: 'image_(\d+)' \(raised by dataset item \1\)"):  # fmt: skip
        _measure(tiny.make_model(), Broken(), nn.functional.cross_entropy)

    def collate(batch: list) -> object:
        raise ValueError("ragged batch")

    loader = DataLoader(tiny.make_dataset(n=64), batch_size=B, collate_fn=collate)
    with pytest.raises(MeasurementError, match=r"at batch 0: ValueError: ragged batch \(raised "
                       r"by the collate function\)") as e:  # fmt: skip
        _measure(tiny.make_model(), loader, nn.functional.cross_entropy)
    assert isinstance(e.value.__cause__, Exception)  # the original, for --debug


def test_api_names_the_model_and_the_loss() -> None:
    class Asserting(nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            assert x.shape[1] == 5, "expected 5 features"
            return super().forward(x)

    with pytest.raises(MeasurementError, match=r"at batch 0: AssertionError: expected 5 features "
                       r"\(raised by the model's forward\)"):  # fmt: skip
        _measure(Asserting(4, 3), tiny.make_dataset(n=64), nn.functional.cross_entropy)

    def loss_fn(model: nn.Module, batch: object) -> torch.Tensor:  # called loss_fn(model, batch)
        return {}["labels"]

    with pytest.raises(MeasurementError, match=r"KeyError: 'labels' \(raised by the loss "
                       r"function\)"):  # fmt: skip
        _measure(tiny.make_model(), tiny.make_dataset(n=64), loss_fn)


def test_api_refuses_a_model_on_the_meta_device() -> None:
    with torch.device("meta"):
        model = nn.Linear(4, 3)
    with pytest.raises(UsageError, match="2 tensor.s. on the meta device"):
        _measure(model, tiny.make_dataset(n=64), nn.functional.cross_entropy)


# ----------------------------------------------------------------------------------------------
# The engine: the DataLoader's workers, continued training
# ----------------------------------------------------------------------------------------------


def test_a_dataset_item_raising_in_a_worker_is_named_as_in_one_process() -> None:
    for workers in (0, 2):
        source = BatchSource(Broken(bad=3), torch.device("cpu"), num_workers=workers)
        with pytest.raises(UserCodeError) as e:
            list(source.batches(torch.tensor([[0, 1], [2, 3]]), seed=0))
        assert e.value.message == "KeyError: 'image_3' (raised by dataset item 3)"
        assert e.value.stage == "data" and e.value.exit_code == ExitCode.RUNTIME


def test_continued_training_names_the_users_code_and_the_step() -> None:
    class Later(nn.Linear):
        calls = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            Later.calls += 1
            if Later.calls > 2:
                raise KeyError("late_key")
            return super().forward(x)

    model = Later(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    steps = continue_training(
        model, list(model.parameters()), opt, tiny.make_dataset(n=64),
        nn.functional.cross_entropy, batch_size=B, points=[0, 5], seed=0,
        device=torch.device("cpu"),
    )  # fmt: skip
    assert next(steps) == 0
    with pytest.raises(RunError, match=r"in continued training at step 3 after the checkpoint: "
                       r"KeyError: 'late_key' \(raised by the model's forward\)"):  # fmt: skip
        next(steps)
    data = TensorDataset(torch.randn(16, 4), torch.randint(0, 3, (16,)))
    with pytest.raises(RunError, match="the loss function"):
        next(continue_training(
            nn.Linear(4, 3), [], opt, data, lambda out, y: out.missing, batch_size=B,
            points=[1], seed=0, device=torch.device("cpu"),
        ))  # fmt: skip


# ----------------------------------------------------------------------------------------------
# Messages; a torchrun rank's unexpected error
# ----------------------------------------------------------------------------------------------


def test_user_code_error_messages() -> None:
    e = UserCodeError("the model's forward", NotImplementedError("Cannot copy out of meta tensor"))
    assert e.message == (
        "NotImplementedError: Cannot copy out of meta tensor (raised by the model's forward)"
    )
    assert e.at("at batch 4").startswith("the forward/backward pass failed at batch 4: ")
    plain = UserCodeError("the loss function", RuntimeError("shapes differ\nmore"))
    assert plain.message == "shapes differ (raised by the loss function)"
    assert internal_message(KeyError()) == (
        "internal error: KeyError (a bug in bscrit: please report it; --debug shows the traceback)"
    )


def test_a_ranks_unexpected_error_is_exit_4_and_out_of_memory_exit_3() -> None:
    code, message = _describe_failure(KeyError("x"))
    assert code == ExitCode.INTERNAL == 4 and message.startswith("internal error: KeyError: 'x'")
    assert _describe_failure(torch.cuda.OutOfMemoryError("CUDA out of memory"))[0] == 3
    assert _describe_failure(MeasurementError("bad"))[0] == 3


@pytest.mark.skipif(not torch.distributed.is_available(), reason="needs torch.distributed")
def test_session_turns_an_internal_error_into_exit_4(monkeypatch: pytest.MonkeyPatch) -> None:
    from bscrit.engine.distributed import PeerFailed
    from bscrit.engine.session import Session

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for k, v in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0",
                 "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}.items():  # fmt: skip
        monkeypatch.setenv(k, v)
    said: list[str] = []
    with pytest.raises(PeerFailed) as e, Session("cpu", 30, on_error=said.append):
        raise ZeroDivisionError("a bug")
    assert e.value.exit_code == ExitCode.INTERNAL
    assert said == [internal_message(ZeroDivisionError("a bug"))]
    assert not torch.distributed.is_initialized()
