"""bscrit confirm's torch part: the optimizer state at the branch point (v/κ), equal examples in
both branches, the checkpoint and the caller's state untouched, base divergence an error."""

from __future__ import annotations

import hashlib
import shutil
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from bscrit.errors import RunError
from bscrit.runs.common.optimizer import make_optimizer
from bscrit.runs.confirm.plan import prepare_confirm
from bscrit.runs.confirm.run import (
    _start,
    decay_factor,
    load_saved_state,
    run_branch,
    run_confirm,
)
from bscrit.specfile.document import load_spec

ASSETS = Path(__file__).parents[1] / "assets"


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: int = 20) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    y = torch.randint(0, 3, (64,), generator=g)
    for _ in range(steps):
        idx = torch.randperm(64, generator=g)[:8]
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def _spec(tmp_path: Path, optimizer: str, ckpt: dict) -> Path:
    shutil.copy(ASSETS / "tiny.py", tmp_path / "tiny.py")
    torch.save(ckpt, tmp_path / "c.pt")
    (tmp_path / "spec.yaml").write_text(
        textwrap.dedent(f"""
        model: {{factory: tiny.py:make_model, kwargs: {{width: 8}}}}
        checkpoint: {{path: c.pt}}
        data: {{factory: tiny.py:make_dataset, kwargs: {{n: 64}}}}
        eval_data: {{factory: tiny.py:make_dataset, kwargs: {{n: 32, seed: 1}}}}
        loss: cross_entropy
        batch_size: 8
        optimizer: {optimizer}
        measure: {{seed: 0, device: cpu}}
        """)
    )
    return tmp_path / "spec.yaml"


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


ADAM = "{name: adam, lr: 0.001, betas: [0.9, 0.999], eps: 1.0e-8}"
SGD = "{name: sgd, lr: 0.05, momentum: 0.9, weight_decay: 1.0e-3}"


@pytest.mark.parametrize("cls, key", [(torch.optim.Adam, "exp_avg_sq"),
                                      (torch.optim.RMSprop, "square_avg")])  # fmt: skip
def test_saved_second_moment_is_divided_by_kappa_first_moment_kept(cls, key):
    torch.set_num_threads(1)
    model = _model()
    opt = cls(model.parameters(), lr=1e-2)
    _train(model, opt)
    saved = [opt.state_dict()["state"][i] for i in range(len(list(model.parameters())))]
    params = [p.detach().clone().requires_grad_() for p in model.parameters()]
    before = [p.detach().clone() for p in params]
    fresh = cls(params, lr=0.5)
    load_saved_state(fresh, saved, kappa=4.0)
    assert fresh.param_groups[0]["lr"] == 0.5  # the branch's hyperparameters, not the saved ones
    for p, st in zip(params, saved, strict=True):
        new = fresh.state[p]
        assert torch.allclose(new[key], st[key] / 4.0)
        if "exp_avg" in st:
            assert torch.equal(new["exp_avg"], st["exp_avg"])
        assert float(new["step"]) == float(st["step"])
    assert all(torch.equal(a, b) for a, b in zip(params, before, strict=True))  # nothing moved
    assert all(float(st[key].sum()) > 0 for st in saved)  # the saved state itself is untouched


def _adam_plan(tmp_path: Path, **kw):
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    _train(model, opt)
    spec = _spec(tmp_path, ADAM, {"model": model.state_dict(), "optimizer": opt.state_dict()})
    plan = prepare_confirm(load_spec(spec), target_batch_size=32, examples=256, seeds=2, **kw)
    return plan, spec, opt.state_dict()


def test_target_branch_starts_from_v_over_kappa_base_from_the_saved_state(tmp_path):
    torch.set_num_threads(1)
    plan, _, saved = _adam_plan(tmp_path)
    assert plan.saved_state is not None and plan.kappa == 4.0
    assert plan.target_optimizer.lr == pytest.approx(2e-3)  # square-root rule
    assert plan.target_optimizer.betas[1] == pytest.approx(1 - 4 * 0.001)
    for which, kappa in (("base", 1.0), ("target", 4.0)):
        params = [p.detach().clone().requires_grad_() for p in plan.model.parameters()]
        opt = make_optimizer(params, getattr(plan, f"{which}_optimizer"))
        _start(plan, which, {})(opt, params)
        for i, p in enumerate(params):
            st = saved["state"][i]
            assert torch.allclose(opt.state[p]["exp_avg_sq"], st["exp_avg_sq"] / kappa)
            assert torch.equal(opt.state[p]["exp_avg"], st["exp_avg"])


def test_branches_see_equal_examples_and_leave_checkpoint_model_and_rng(tmp_path):
    torch.set_num_threads(1)
    plan, spec, _ = _adam_plan(tmp_path)
    ckpt = tmp_path / "c.pt"
    sha = _sha(ckpt)
    weights = {k: v.clone() for k, v in plan.model.state_dict().items()}
    drawn: dict[int, int] = {}
    stream = plan.train.stream

    def counting(batch_size, generator):
        for x, y in stream(batch_size, generator):
            drawn[batch_size] = drawn.get(batch_size, 0) + len(y)
            yield x, y

    plan.train.stream = counting
    rng = torch.get_rng_state()
    r = run_confirm(plan)
    assert torch.equal(torch.get_rng_state(), rng)
    assert _sha(ckpt) == sha
    assert all(torch.equal(v, plan.model.state_dict()[k]) for k, v in weights.items())
    k = len(plan.seeds)
    assert drawn == {8: 256 * k, 32: 256 * k}  # the same examples, in both branches
    for s in plan.seeds:
        assert r.branch("base", s).examples == r.branch("target", s).examples
        assert r.branch("base", s).steps[-1] == 4 * r.branch("target", s).steps[-1]
    assert r.verdict.metric == "eval_loss"
    assert "v/κ" in r.optimizer_state and "[MLPA22] Thm 5.3" in r.optimizer_state
    assert r.verdict.code in ("holds", "fails", "inconclusive")


def test_seeds_change_the_batches_and_the_same_seed_repeats(tmp_path):
    torch.set_num_threads(1)
    plan, _, _ = _adam_plan(tmp_path)
    a = run_branch(plan, "base", 0)
    b = run_branch(plan, "base", 0)
    c = run_branch(plan, "base", 1)
    assert a.values["train_loss"] == b.values["train_loss"]
    assert a.values["train_loss"] != c.values["train_loss"]


def test_adam_without_a_saved_state_is_warm_started_at_each_batch_size(tmp_path):
    torch.set_num_threads(1)
    model = _model()
    spec = _spec(tmp_path, ADAM, {"model": model.state_dict()})
    plan = prepare_confirm(load_spec(spec), target_batch_size=16, examples=64, seeds=1)
    assert plan.saved_state is None and plan.uses_warm_start()
    assert len(plan.base_batches[0]) == 8 and len(plan.fixed_batches[0]) == 16
    r = run_confirm(plan)
    assert "warm-started" in r.optimizer_state
    assert r.verdict.code == "inconclusive"  # one seed: no interval


def test_sgd_momentum_buffer_comes_from_the_checkpoint(tmp_path):
    torch.set_num_threads(1)
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    _train(model, opt)
    spec = _spec(tmp_path, SGD, {"model": model.state_dict(), "optimizer": opt.state_dict()})
    plan = prepare_confirm(load_spec(spec), target_batch_size=16, examples=64, seeds=1)
    assert plan.saved_state is not None
    params = [p.detach().clone().requires_grad_() for p in plan.model.parameters()]
    fresh = make_optimizer(params, plan.target_optimizer)
    _start(plan, "target", {})(fresh, params)
    saved = opt.state_dict()["state"]
    assert all(torch.equal(fresh.state[p]["momentum_buffer"], saved[i]["momentum_buffer"])
               for i, p in enumerate(params))  # fmt: skip
    # no buffer saved: fresh
    spec = _spec(tmp_path, SGD, {"model": model.state_dict()})
    plan = prepare_confirm(load_spec(spec), target_batch_size=16, examples=64, seeds=1)
    assert plan.saved_state is None and not plan.uses_warm_start()


def test_a_base_branch_that_diverges_is_a_run_error(tmp_path):
    torch.set_num_threads(1)
    plan, _, _ = _adam_plan(tmp_path)
    plan.saved_state = None
    plan.warm_start = False
    plan.base_optimizer = replace(plan.base_optimizer, lr=1e30)
    with pytest.raises(RunError, match="base branch"):
        run_confirm(plan)


def test_decay_factor_ramps_linearly_to_zero_over_the_last_fifth():
    f = [decay_factor(k, 10) for k in range(10)]
    assert f[:8] == [1.0] * 8 and f[8] == pytest.approx(1.0) and f[9] == pytest.approx(0.5)
    f = [decay_factor(k, 100) for k in range(100)]
    assert f[79] == 1.0 and f[80] == pytest.approx(1.0) and f[99] == pytest.approx(1 / 20)
    assert all(a >= b for a, b in zip(f, f[1:]))
