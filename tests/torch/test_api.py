"""The Python API (bscrit.measure / predict / scale): the same numbers and JSON as the command
line's pipeline, the three loss forms, Datasets and DataLoaders, a live optimizer, and the
guarantees (model, buffers, .grad, flags, mode, RNGs and optimizer state untouched, bitwise)."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

import bscrit
from bscrit.errors import UsageError
from bscrit.specfile.document import load_spec
from bscrit.workflows.measure import run_measurement
from bscrit.workflows.plan import MeasureOptions

ASSETS = Path(__file__).resolve().parents[1] / "assets"
sys.path.insert(0, str(ASSETS))
import tiny  # noqa: E402

B, K, M = 16, 40, 4


def trained(steps: int = 3, head_only: bool = False) -> tuple[nn.Module, TensorDataset, Any]:
    """The tiny BatchNorm net after a few AdamW steps, its data and its optimizer."""
    torch.manual_seed(0)
    model, ds = tiny.make_model(), tiny.make_dataset(n=128)
    params = model[3].parameters() if head_only else model.parameters()
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.05)
    x, y = ds.tensors
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model, ds, opt


def snapshot(model: nn.Module, opt: Any) -> dict[str, Any]:
    """Everything the measurement promises to leave alone, copied."""
    state = opt.state_dict()
    return {
        "params": {n: p.detach().clone() for n, p in model.named_parameters()},
        "buffers": {n: b.clone() for n, b in model.named_buffers()},
        "grads": {
            n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()
        },
        "flags": {n: p.requires_grad for n, p in model.named_parameters()},
        "training": [m.training for m in model.modules()],
        "torch_rng": torch.get_rng_state(),
        "py_rng": random.getstate(),
        "np_rng": np.random.get_state()[1].copy(),
        "opt_state": {
            i: {k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()}
            for i, s in state["state"].items()
        },
        "opt_groups": json.dumps(
            [{k: v for k, v in g.items() if k != "params"} for g in state["param_groups"]],
            default=str,
        ),
    }


def assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    for key in ("params", "buffers"):
        assert a[key].keys() == b[key].keys()
        for n in a[key]:
            assert torch.equal(a[key][n], b[key][n]), (key, n)
    for n in a["grads"]:
        ga, gb = a["grads"][n], b["grads"][n]
        assert (ga is None) == (gb is None) and (ga is None or torch.equal(ga, gb)), n
    assert a["flags"] == b["flags"] and a["training"] == b["training"]
    assert torch.equal(a["torch_rng"], b["torch_rng"])
    assert a["py_rng"] == b["py_rng"]
    assert np.array_equal(a["np_rng"], b["np_rng"])
    assert a["opt_groups"] == b["opt_groups"]
    assert a["opt_state"].keys() == b["opt_state"].keys()
    for i, s in a["opt_state"].items():
        for k, v in s.items():
            w = b["opt_state"][i][k]
            assert torch.equal(v, w) if torch.is_tensor(v) else v == w, (i, k)


class Augmented(Dataset):
    """Examples with noise from Python's and NumPy's global RNGs (an augmentation)."""

    def __init__(self, ds: TensorDataset) -> None:
        self.x, self.y = ds.tensors

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        noise = random.gauss(0, 0.01) + float(np.random.normal(0, 0.01))
        return self.x[i] + noise, self.y[i]


def test_measure_leaves_model_optimizer_and_rngs_bitwise_alone(capsys):
    torch.set_num_threads(1)
    model, ds, opt = trained()
    model[0].bias.requires_grad_(False)  # a frozen tensor stays frozen
    model.eval()  # measured in train mode, handed back in eval mode
    x, y = ds.tensors
    nn.functional.cross_entropy(model(x), y).backward()  # .grad holds something
    random.seed(5)
    np.random.seed(5)
    before = snapshot(model, opt)
    m = bscrit.measure(model, Augmented(ds), nn.CrossEntropyLoss(), B, num_batches=K, groups=M,
                       optimizer=opt)  # fmt: skip
    assert_same(before, snapshot(model, opt))
    assert m.mode == "train" and m.num_batches == K and m.groups == M
    assert capsys.readouterr().err == ""  # progress is off by default
    # the training that follows is the one that would have happened: the next random draws
    assert torch.equal(torch.rand(3), (torch.set_rng_state(before["torch_rng"]), torch.rand(3))[1])


def test_the_same_numbers_and_json_as_the_command_line(tmp_path):
    torch.set_num_threads(1)
    model, ds, opt = trained()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, tmp_path / "c.pt")
    (tmp_path / "data.py").write_text(
        f"import sys; sys.path.insert(0, {str(ASSETS)!r})\n"
        "import tiny\n"
        "def make_dataset():\n    return tiny.make_dataset(n=128)\n"
    )
    (tmp_path / "spec.yaml").write_text(
        f"model: {{factory: {ASSETS / 'tiny.py'}:make_model}}\n"
        "checkpoint: {path: c.pt}\n"
        "data: {factory: data.py:make_dataset}\n"
        f"loss: cross_entropy\nbatch_size: {B}\n"
        f"measure: {{batches: {K}, groups: {M}, device: cpu, seed: 3}}\n"
    )
    cli = run_measurement(load_spec(tmp_path / "spec.yaml"), options=MeasureOptions())
    api = bscrit.measure(model, ds, nn.functional.cross_entropy, B, num_batches=K, groups=M,
                         seed=3, optimizer=opt)  # fmt: skip
    a, c = api.to_dict(), cli.to_dict()
    assert a["stats"] == c["stats"]  # G, N, NSR, intervals, jackknife values, preconditioned
    assert a["per_parameter"] == c["per_parameter"]
    assert a["equilibrium"] == c["equilibrium"]
    for k in ("schema", "kind", "batch_size", "dataset_size", "num_batches", "groups", "seed"):
        assert a[k] == c[k], k
    assert a["optimizer"]["name"] == c["optimizer"]["name"] == "adamw"
    assert a["optimizer"]["lr"] == c["optimizer"]["lr"]
    assert a["optimizer"]["weight_decay"] == c["optimizer"]["weight_decay"]
    # save() writes what `bscrit measure --out` writes, and it reads back
    path = api.save(tmp_path / "api.json")
    assert path.exists() and (tmp_path / "api.params.csv").exists()
    back = bscrit.load_measurement(path)
    assert back.to_dict() == json.loads(path.read_text())
    assert json.loads(path.read_text())["stats"] == c["stats"]


class Dicts(Dataset):
    def __init__(self, ds: TensorDataset) -> None:
        self.x, self.y = ds.tensors

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "y": self.y[i]}


class Triples(Dicts):
    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:  # type: ignore[override]
        return self.x[i], self.y[i], i


def test_three_loss_forms_datasets_and_loaders_give_the_same_numbers():
    torch.set_num_threads(1)
    model, ds, _ = trained()
    kw = dict(num_batches=K, groups=M, seed=1)

    def outputs_style(logits, targets):
        return nn.functional.cross_entropy(logits, targets)

    def pairs(model, batch):
        x, y = batch
        return nn.functional.cross_entropy(model(x), y)

    def dicts(model, batch):
        return nn.functional.cross_entropy(model(batch["x"]), batch["y"])

    def triples(model, batch):
        x, y, idx = batch
        assert idx.shape == (B,)  # the batch arrives whole, collated
        return nn.functional.cross_entropy(model(x), y)

    def collate(items):
        return {
            "x": torch.stack([i["x"] for i in items]),
            "y": torch.stack([i["y"] for i in items]),
        }

    ref = bscrit.measure(model, ds, nn.CrossEntropyLoss(), B, **kw).all
    runs = {
        "outputs-named function": bscrit.measure(model, ds, outputs_style, B, **kw),
        "model, batch on tensors": bscrit.measure(model, ds, pairs, B, **kw),
        "DataLoader": bscrit.measure(model, DataLoader(ds, batch_size=4), pairs, B, **kw),
        "dict examples": bscrit.measure(model, Dicts(ds), dicts, B, **kw),
        "custom collate": bscrit.measure(
            model, DataLoader(Dicts(ds), collate_fn=collate), dicts, B, **kw
        ),
        "triples": bscrit.measure(model, Triples(ds), triples, B, **kw),
        "micro-batches": bscrit.measure(
            model, ds, pairs, B, micro_batch_size=4, mode="eval", **kw
        ),  # fmt: skip
    }
    ref_eval = bscrit.measure(model, ds, nn.CrossEntropyLoss(), B, mode="eval", **kw).all
    for name, m in runs.items():
        r = ref_eval if name == "micro-batches" else ref
        assert m.all.G == pytest.approx(r.G, rel=1e-5), name
        assert m.all.N == pytest.approx(r.N, rel=1e-5), name


def test_model_loss_for_hugging_face_style_models():
    torch.set_num_threads(1)

    class WithLoss(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.net = tiny.make_model()

        def forward(self, x, labels):
            return {"loss": nn.functional.cross_entropy(self.net(x), labels)}

    model = WithLoss()
    ds = tiny.make_dataset(n=128)
    x, y = ds.tensors
    items = [{"x": x[i], "labels": y[i]} for i in range(len(x))]
    m = bscrit.measure(model, items, "model", B, num_batches=K, groups=M)
    ref = bscrit.measure(model.net, ds, nn.CrossEntropyLoss(), B, num_batches=K, groups=M)
    assert m.all.G == pytest.approx(ref.all.G, rel=1e-5)
    assert m.all.N == pytest.approx(ref.all.N, rel=1e-5)


def test_the_optimizer_decides_which_parameters_count():
    torch.set_num_threads(1)
    model, ds, opt = trained(head_only=True)
    m = bscrit.measure(model, ds, nn.CrossEntropyLoss(), B, num_batches=K, groups=M,
                       optimizer=opt)  # fmt: skip
    assert m.all.num_tensors == 2 and m.all.num_params == 8 * 3 + 3
    assert m.extra["parameters"]["left_out"]["tensors"] == 4
    assert any("updates 2 of the model's 6" in w for w in m.warnings)
    assert m.optimizer is not None and m.optimizer.groups[0].params == 27
    assert m.preconditioned is not None  # AdamW's exp_avg_sq of the head
    every = bscrit.measure(model, ds, nn.CrossEntropyLoss(), B, num_batches=K, groups=M)
    assert every.all.num_tensors == 6 and every.optimizer is None
    assert every.preconditioned_reason == "no optimizer given (optimizer=...)"


class Stream(IterableDataset):
    def __iter__(self):
        return iter([])


def test_bad_inputs_are_refused_before_any_batch():
    model, ds, opt = trained(steps=0)
    other = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    cases = [
        (dict(data=Stream()), "IterableDataset"),
        (dict(data=3), "expected a torch Dataset"),
        (dict(loss_fn="mean"), "the only string accepted is 'model'"),
        (dict(loss_fn=3), "expected a callable"),
        (dict(data=Dicts(ds)), "the examples are dicts \\(keys: x, y\\)"),
        (dict(optimizer=other), "none of its 2 parameters is one of the model's"),
        (dict(optimizer=object()), "expected a torch.optim.Optimizer"),
        (dict(model="net"), "expected a torch.nn.Module"),
        (dict(groups=1), "at least 2"),
        (dict(batch_size=0), "positive integer"),
        (dict(micro_batch_size=5), "does not divide"),
        (dict(mode="test"), "'train' or 'eval'"),
        (dict(seed=-1), "seed: expected a non-negative integer"),
        (dict(step=2**63), r"step: expected a non-negative integer \(int64"),
        (dict(num_batches=5, groups=4), r"num_batches: expected at least 2 \* groups = 8"),
    ]
    for kw, message in cases:
        args = dict(model=model, data=ds, loss_fn=nn.CrossEntropyLoss(), batch_size=B) | kw
        with pytest.raises(UsageError, match=message):
            bscrit.measure(**args)


def test_predict_and_scale_take_measurements_or_paths(tmp_path):
    torch.set_num_threads(1)
    model, ds, opt = trained()
    m = bscrit.measure(model, ds, nn.CrossEntropyLoss(), B, num_batches=K, groups=M,
                       optimizer=opt)  # fmt: skip
    path = m.save(tmp_path / "m.json")
    one, from_file, both = bscrit.predict(m), bscrit.predict(path), bscrit.predict([m, path])
    assert one.base.b_star == from_file.base.b_star == both.measurements[1].b_star
    assert one.to_dict()["recommended"] == from_file.to_dict()["recommended"]
    s = bscrit.scale(64, m)
    assert s == bscrit.scale(64, path) and s.optimizer == "adamw" and s.batch_size == B
    assert s.new["lr"] == pytest.approx(1e-2 * 2)  # square-root rule, κ = 4
    assert bscrit.scale(64, optimizer="sgd", batch_size=16, lr=0.1).new["lr"] == pytest.approx(0.4)
    with pytest.raises(UsageError, match="expected a Measurement"):
        bscrit.predict([3])


def test_progress_is_told_every_batch_when_asked(capsys):
    torch.set_num_threads(1)
    model, ds, _ = trained(steps=0)
    seen: list[int] = []
    bscrit.measure(model, ds, nn.CrossEntropyLoss(), B, num_batches=K, groups=M,
                   progress=seen.append)  # fmt: skip
    assert sum(seen) == K
    bscrit.measure(model, ds, nn.CrossEntropyLoss(), B, num_batches=K, groups=M, progress=True)
    assert f"bscrit: {K} batches" in capsys.readouterr().err


@pytest.mark.gpu
def test_on_cuda_the_cuda_rng_and_the_model_are_left_alone():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    model, ds, opt = trained()
    model.cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x, y = (t.cuda() for t in ds.tensors)
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    cuda_rng = torch.cuda.get_rng_state()
    before = snapshot(model, opt)
    m = bscrit.measure(model, ds, nn.CrossEntropyLoss(), B, num_batches=K, groups=M, optimizer=opt)
    assert m.device.startswith("cuda")
    assert torch.equal(cuda_rng, torch.cuda.get_rng_state())
    assert_same(before, snapshot(model, opt))
    cpu = bscrit.measure(model, ds, nn.CrossEntropyLoss(), B, num_batches=K, groups=M,
                         device="cpu", mode="eval")  # fmt: skip
    gpu = bscrit.measure(model, ds, nn.CrossEntropyLoss(), B, num_batches=K, groups=M, mode="eval")
    assert gpu.all.N == pytest.approx(cpu.all.N, rel=1e-3)
