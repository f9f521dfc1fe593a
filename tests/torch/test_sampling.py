"""``measure --sample-steps``: the run's optimizer and data order, continued against a hand-written
loop; the checkpoint, the model and the global RNG left alone; the plan and its cost."""

from __future__ import annotations

import copy
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from bscrit.engine.sampling import continue_training, epoch_batches, run_optimizer
from bscrit.errors import UsageError
from bscrit.optim.registry import OptimizerInfo
from bscrit.specfile.document import load_spec
from bscrit.stats.sample_plan import plan_samples
from bscrit.workflows.measure import run_measurement
from bscrit.workflows.plan import MeasureOptions

ASSETS = Path(__file__).resolve().parents[1] / "assets"
sys.path.insert(0, str(ASSETS))
import tiny  # noqa: E402


def _trained(steps: int = 5) -> tuple[nn.Module, torch.optim.Optimizer]:
    """The tiny model after a few SGD-momentum steps, with a no-decay group for the biases."""
    torch.manual_seed(0)
    model = tiny.make_model()
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    rest = [p for n, p in model.named_parameters() if not n.endswith("weight")]
    opt = torch.optim.SGD(
        [{"params": decay}, {"params": rest, "weight_decay": 0.0}],
        lr=0.1, momentum=0.9, weight_decay=5e-4,
    )  # fmt: skip
    ds = tiny.make_dataset()
    for i in range(steps):
        x, y = ds[i * 8 : (i + 1) * 8]
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model, opt


def test_run_optimizer_loads_the_saved_state_and_keeps_its_groups() -> None:
    model, opt = _trained()
    saved = copy.deepcopy(opt.state_dict())
    params = [p for g in opt.param_groups for p in g["params"]]  # the optimizer's own order
    info = OptimizerInfo("sgd", lr=0.1, momentum=0.9, weight_decay=5e-4)
    new, notes = run_optimizer(params, info, saved)
    assert "loaded from the checkpoint (2 group(s))" in notes[0]
    assert [g["weight_decay"] for g in new.param_groups] == [5e-4, 0.0]
    for p in params:
        assert torch.equal(new.state[p]["momentum_buffer"], opt.state[p]["momentum_buffer"])
    for p in params:  # a step of the new optimizer changes neither the saved dict nor the old one
        p.grad = torch.ones_like(p)
    new.step()
    old_state, new_state = opt.state_dict()["state"], new.state_dict()["state"]
    for k, v in saved["state"].items():
        assert torch.equal(v["momentum_buffer"], old_state[k]["momentum_buffer"])
        assert not torch.equal(v["momentum_buffer"], new_state[k]["momentum_buffer"])
    # a spec value that differs from the first saved group replaces it where it was used
    spec_opt = OptimizerInfo("sgd", lr=0.05, momentum=0.9, weight_decay=5e-4, source="spec")
    other, notes = run_optimizer(params, spec_opt, saved)
    assert [g["lr"] for g in other.param_groups] == [0.05, 0.05]
    assert any("lr 0.1 of the saved state replaced by 0.05" in n for n in notes)


def test_run_optimizer_starts_fresh_when_the_state_does_not_match() -> None:
    model, opt = _trained()
    params = [p for g in opt.param_groups for p in g["params"]][:-1]  # one tensor short
    new, notes = run_optimizer(params, OptimizerInfo("sgd", lr=0.1, momentum=0.9), opt.state_dict())
    assert "starts fresh" in notes[0] and not new.state
    new, notes = run_optimizer(params, OptimizerInfo("sgd", lr=0.1), None)
    assert "no optimizer state" in notes[0]


def test_epoch_batches_are_permutations_without_the_last_incomplete_batch() -> None:
    rows = epoch_batches(10, 3, torch.Generator().manual_seed(1))
    first = [next(rows) for _ in range(3)]  # 10 // 3 = 3 batches per epoch
    seen = torch.cat(first)
    assert len(seen) == 9 and len(set(seen.tolist())) == 9
    again = epoch_batches(10, 3, torch.Generator().manual_seed(1))
    assert all(torch.equal(a, next(again)) for a in first)


def test_continue_training_is_plain_training_and_leaves_the_global_rng_alone() -> None:
    model, opt = _trained()
    ds = tiny.make_dataset()
    ref_model, ref_opt = copy.deepcopy((model, opt))  # one memo: the optimizer keeps its params
    state = torch.random.get_rng_state()
    params = [p for g in opt.param_groups for p in g["params"]]
    points = [0, 3, 7]
    seen = list(continue_training(
        model, params, opt, ds, nn.functional.cross_entropy, batch_size=8, points=points,
        seed=5, device=torch.device("cpu"),
    ))  # fmt: skip
    assert seen == points
    assert torch.equal(torch.random.get_rng_state(), state)
    # brute force: the same 7 steps by hand, batches from the same permutation stream
    from bscrit.engine.sampling import ORDER_SEED_OFFSET

    rows = epoch_batches(len(ds), 8, torch.Generator().manual_seed(5 + ORDER_SEED_OFFSET))
    for _ in range(7):
        x, y = ds[next(rows)]
        ref_opt.zero_grad()
        nn.functional.cross_entropy(ref_model(x), y).backward()
        ref_opt.step()
    for a, b in zip(model.state_dict().values(), ref_model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6)
    assert all(p.grad is None for p in params)


def test_plan_samples_defaults_and_errors() -> None:
    sp = plan_samples(None, None, 156.25, "1/(2ηλ)", 50, 200)
    assert sp.steps == 1562 and sp.samples == 20 and sp.points[0] == 0 and sp.points[-1] == 1562
    assert sp.forward_backward == 1562 + 20 * 50
    assert sp.cost == pytest.approx((1562 + 1000) / 200)
    with pytest.raises(UsageError, match="no default for"):
        plan_samples(None, 5, None, "sgd without weight decay has no equilibrium", 50, 200)
    assert plan_samples(100, 5, None, "no τ", 50, 200).points == (0, 25, 50, 75, 100)
    with pytest.raises(UsageError, match="at least 2"):
        plan_samples(100, 1, 10.0, "", 50, 200)
    with pytest.raises(UsageError, match="shorter than"):
        plan_samples(3, 10, 10.0, "", 50, 200)


@pytest.fixture()
def work(tmp_path: Path) -> Path:
    for name in ("tiny.py", "tiny.pt", "valid.yaml"):
        shutil.copy(ASSETS / name, tmp_path / name)
    return tmp_path


def test_sampling_through_the_pipeline(work: Path) -> None:
    before = (work / "tiny.pt").read_bytes()
    torch.manual_seed(123)
    told = []
    m = run_measurement(
        load_spec(work / "valid.yaml"),
        options=MeasureOptions(sample_steps=30, samples=4, batches=12),
        on_sampling=lambda plan, opt: told.append((plan, opt)),
    )
    assert (work / "tiny.pt").read_bytes() == before
    after_sampling = torch.random.get_rng_state()
    plan, opt = told[0]
    assert plan.points == (0, 10, 20, 30) and opt.name == "sgd"
    assert [c.step for c in m.checkpoints] == [0, 10, 20, 30]
    assert m.checkpoints[1].path.endswith("tiny.pt +10")
    assert m.num_batches == 12 and len(m.checkpoints) == 4
    s = m.extra["sampling"]
    assert s["forward_backward"] == 30 + 4 * 12
    assert s["cost_in_measurements"] == pytest.approx((30 + 48) / 200)  # n = 48, B = 8: k = 200
    e = m.equilibrium_interval
    assert e is not None and e.checkpoints == 4 and e.steps == (0, 10, 20, 30)
    # the tiny run's τ = 1000 steps: 30 steps are one draw, and the output says so
    assert e.scope == "checkpoints" and any("one draw" in w for w in m.warnings)
    # the first point is the checkpoint itself: the same numbers as measuring it (same seed);
    # the training drew nothing from the global RNG (building the model draws the same)
    torch.manual_seed(123)
    plain = run_measurement(load_spec(work / "valid.yaml"), options=MeasureOptions(batches=12))
    assert torch.equal(torch.random.get_rng_state(), after_sampling)
    assert m.checkpoints[0].all.G == pytest.approx(plain.all.G, rel=1e-9)
    assert math.isfinite(m.all.nsr)


def test_sampling_is_refused_for_several_checkpoints_and_without_an_optimizer(work: Path) -> None:
    spec = load_spec(work / "valid.yaml")
    shutil.copy(work / "tiny.pt", work / "b.pt")
    with pytest.raises(UsageError, match="continues one checkpoint"):
        run_measurement(spec, [work / "tiny.pt", work / "b.pt"], MeasureOptions(samples=3))
    text = (
        (work / "valid.yaml")
        .read_text()
        .replace("optimizer: {name: sgd, lr: 0.1, momentum: 0.9, weight_decay: 5.0e-4}\n", "")
    )
    (work / "noopt.yaml").write_text(text)
    torch.save({"model": torch.load(work / "tiny.pt")["model"]}, work / "bare.pt")
    with pytest.raises(UsageError, match="none is known"):
        run_measurement(load_spec(work / "noopt.yaml"), [work / "bare.pt"],
                        MeasureOptions(samples=3, sample_steps=4, batches=8))  # fmt: skip


def test_sampling_trains_only_what_the_run_optimizer_updates(work: Path) -> None:
    """A checkpoint whose optimizer updated only the head (the body still has requires_grad):
    the continued training must not move the body, and the saved state loads onto the head."""
    from bscrit.engine.params import select_parameters
    from bscrit.engine.sampling import _trained_parameters

    torch.manual_seed(0)
    model = tiny.make_model()
    head = list(model[3].parameters())
    opt = torch.optim.SGD(head, lr=0.1, momentum=0.9)
    x, y = tiny.make_dataset()[:8]
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    chosen = _trained_parameters(model, select_parameters(model, opt.state_dict(), "head.pt"))
    assert len(chosen) == 2 and all(a is b for a, b in zip(chosen, head, strict=True))
    # without a saved state: every requires_grad tensor, as the measurement does
    every = _trained_parameters(model, select_parameters(model, None, "x"))
    assert len(every) == len(list(model.parameters()))

    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, work / "head.pt")
    body = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("3.")}
    spec = load_spec(work / "valid.yaml")
    seen: list[dict[str, torch.Tensor]] = []

    import bscrit.engine.sampling as sampling

    real = sampling.continue_training

    def spy(m, params, *a, **k):  # the model at every point, as the measurement sees it
        for point in real(m, params, *a, **k):
            seen.append({n: t.detach().clone() for n, t in m.state_dict().items()})
            yield point

    sampling.continue_training = spy
    try:
        m = run_measurement(spec, [work / "head.pt"],
                            MeasureOptions(sample_steps=20, samples=2, batches=8))  # fmt: skip
    finally:
        sampling.continue_training = real
    assert [c.step for c in m.checkpoints] == [0, 20] and len(seen) == 2
    for state in seen:
        for k, v in body.items():
            if k.startswith("0."):  # the first Linear: not in the optimizer, must not move
                assert torch.equal(state[k], v), k
    assert not torch.equal(seen[-1]["3.weight"], model.state_dict()["3.weight"])
