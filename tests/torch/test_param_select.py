"""Which parameters count: the optimizer's, matched to the model by order and shape; the
scale-invariance tolerance that follows the parameters' dtype."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from bscrit.engine.loop import measure_model
from bscrit.engine.params import align, requires_grad_only, select_parameters
from bscrit.errors import CheckpointError
from bscrit.optim import registry as optim
from bscrit.specfile.document import load_spec
from bscrit.stats.summary import TAU_BF16, TAU_FP32
from bscrit.theory.scaled import scale_hyperparameters
from bscrit.workflows.measure import run_measurement
from bscrit.workflows.plan import MeasureOptions

NET = textwrap.dedent("""
    import torch
    from torch import nn

    def make_model(freeze: bool = False):
        torch.manual_seed(0)
        backbone = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
        model = nn.Sequential(backbone, nn.Linear(32, 3))
        if freeze:
            backbone.requires_grad_(False)
        return model

    def make_data(n: int = 512):
        g = torch.Generator().manual_seed(1)
        x = torch.randn(n, 8, generator=g)
        y = (x[:, :3] + 0.5 * torch.randn(n, 3, generator=g)).argmax(1)
        return torch.utils.data.TensorDataset(x, y)
""")


def make_model(freeze: bool = False) -> nn.Module:
    scope: dict = {}
    exec(NET, scope)  # the same factory the spec uses
    return scope["make_model"](freeze)


def train(model: nn.Module, opt: torch.optim.Optimizer, steps: int = 20) -> dict:
    g = torch.Generator().manual_seed(2)
    for _ in range(steps):
        x = torch.randn(16, 8, generator=g)
        loss = nn.functional.cross_entropy(model(x), x[:, :3].argmax(1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return opt.state_dict()


def no_decay_first(model: nn.Module, wd: float = 0.05) -> list[dict]:
    """timm's param_groups_weight_decay: biases (1-D) without decay, listed first."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": wd}]


# ---------------------------------------------------------------------------------------------
# select_parameters
# ---------------------------------------------------------------------------------------------


def test_frozen_backbone_in_the_optimizer_only():
    model = make_model()
    state = train(model, torch.optim.Adam(model[1].parameters(), lr=1e-2))
    fresh = make_model()  # the factory leaves the backbone trainable
    sel = select_parameters(fresh, state, "checkpoint c.pt")
    assert sel.names == ("1.weight", "1.bias") and sel.by == "the optimizer state"
    assert sel.state_indices == (0, 1) and sel.group_params == (99,)
    assert sel.to_dict() == {"selected_by": "the optimizer state",
                             "measured": {"tensors": 2, "params": 99},
                             "left_out": {"tensors": 4, "params": 1344}}  # fmt: skip
    assert "updates 2 of the model's 6 parameter tensors (99 of 1,443 parameters)" in sel.warning
    assert "but 6 have requires_grad (1,443)" in sel.warning
    # the factory that re-freezes agrees with the optimizer: no warning
    agree = select_parameters(make_model(freeze=True), state)
    assert agree.names == sel.names and agree.warning is None
    assert agree.by == "requires_grad, matching the optimizer state"


def test_no_decay_first_groups_match_one_to_one():
    model = make_model()
    state = train(model, torch.optim.AdamW(no_decay_first(model), lr=1e-3))
    sel = select_parameters(make_model(), state)
    names = [n for n, _ in model.named_parameters()]
    assert sel.names == tuple(names) and sel.warning is None
    # indices 0-2 are the biases (group 0), 3-5 the weights (group 1), whatever the model order
    assert [names[i] for i in range(6)] == list(sel.names)
    assert sel.state_indices == (3, 0, 4, 1, 5, 2)
    assert sel.group_params == (32 + 32 + 3, 8 * 32 + 32 * 32 + 32 * 3)


def test_ambiguous_match_is_an_error():
    # two identical blocks, the optimizer over one of them: which one cannot be told
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    state = train_linear(model, torch.optim.SGD(model[1].parameters(), lr=0.1, momentum=0.9))
    with pytest.raises(
        CheckpointError,
        match="cannot tell which of the model's 4 parameter "
        r"tensors its optimizer state's 2 are: two runs .*fit.*requires_grad=False",
    ):
        select_parameters(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4)), state)  # fmt: skip
    # no state tensors to compare shapes (plain SGD) and a count that settles nothing
    model = make_model()
    plain = train(model, torch.optim.SGD(model[1].parameters(), lr=0.1))
    assert plain["state"] == {} or all(not s for s in plain["state"].values())
    with pytest.raises(CheckpointError, match="two runs"):
        select_parameters(make_model(), plain)
    # ... while an optimizer over every tensor needs no shapes
    everything = train(model, torch.optim.SGD(model.parameters(), lr=0.1))
    assert select_parameters(make_model(), everything).warning is None


def train_linear(model: nn.Module, opt: torch.optim.Optimizer) -> dict:
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    return opt.state_dict()


def test_state_of_another_model_falls_back_with_a_warning():
    other = nn.Linear(4, 7)
    state = train_linear(nn.Sequential(other), torch.optim.Adam(other.parameters()))
    sel = select_parameters(make_model(), state)
    assert sel.by == "requires_grad" and len(sel.names) == 6
    assert "cannot be matched to the model's 6 parameter tensors" in sel.warning


def test_align_counts_placements():
    shapes = [(2,), (3,), (2,), (3,)]
    assert align(shapes, [[(3,)]], range(4), cover=False)[0] == 2  # two places
    assert align(shapes, [[(2,), (3,)], [(2,), (3,)]], range(4), cover=True)[0] == 2  # swap
    assert align([(2,), (3,), (4,)], [[(2,), (4,)], [(3,)]], range(3), cover=True) == (
        1, [[0, 2], [1]])  # fmt: skip
    assert align(shapes, [[None, None]], [1, 2], cover=True) == (1, [[1, 2]])
    assert align(shapes, [[(5,)]], range(4), cover=False) == (0, None)


def test_requires_grad_only_restores_every_flag():
    model = make_model()
    model[0][0].weight.requires_grad_(False)
    before = [p.requires_grad for p in model.parameters()]
    with requires_grad_only(model, ["0.0.weight", "1.bias"]):
        assert [p.requires_grad for p in model.parameters()] == [
            True, False, False, False, False, True]  # fmt: skip
    assert [p.requires_grad for p in model.parameters()] == before
    with pytest.raises(RuntimeError), requires_grad_only(model, []):
        raise RuntimeError
    assert [p.requires_grad for p in model.parameters()] == before


# ---------------------------------------------------------------------------------------------
# Through the pipeline
# ---------------------------------------------------------------------------------------------


def write_spec(tmp_path: Path, ckpt: dict, optimizer: str = "") -> Path:
    (tmp_path / "net.py").write_text(NET)
    torch.save(ckpt, tmp_path / "c.pt")
    spec = (
        textwrap.dedent("""
        model: {factory: net.py:make_model}
        checkpoint: {path: c.pt}
        data: {factory: net.py:make_data}
        loss: cross_entropy
        batch_size: 16
        measure: {batches: 40, groups: 4, device: cpu}
    """)
        + optimizer
    )
    (tmp_path / "spec.yaml").write_text(spec)
    return tmp_path / "spec.yaml"


def test_pipeline_measures_what_the_optimizer_updates(tmp_path):
    torch.set_num_threads(1)
    model = make_model()
    state = train(model, torch.optim.Adam(model[1].parameters(), lr=1e-2))
    spec = write_spec(tmp_path, {"model": model.state_dict(), "optimizer": state})
    m = run_measurement(load_spec(spec), options=MeasureOptions())
    assert (m.all.num_params, m.all.num_tensors) == (99, 2)
    assert m.extra["parameters"]["left_out"] == {"tensors": 4, "params": 1344}
    assert any("updates 2 of the model's 6 parameter tensors" in w for w in m.warnings)
    assert m.preconditioned is not None  # Adam's exp_avg_sq matched to the head's tensors
    # what was measured before: every tensor with requires_grad, a different noise ratio
    everything = measure_model(model, _data(tmp_path), nn.functional.cross_entropy,
                               batch_size=16, num_batches=40, groups=4)  # fmt: skip
    assert sum(t.numel for t in everything.tensors) == 1443


def test_svag_trains_what_the_optimizer_trained(tmp_path):
    from bscrit.runs.svag.plan import prepare_svag

    model = make_model()
    state = train(model, torch.optim.Adam(model[1].parameters(), lr=1e-2))
    spec = write_spec(tmp_path, {"model": model.state_dict(), "optimizer": state})
    plan = prepare_svag(load_spec(spec), target_batch_size=32, ls=(1, 2, 4), effective_steps=2)
    trained = [n for n, p in plan.model.named_parameters() if p.requires_grad]
    assert trained == ["1.weight", "1.bias"]
    assert any("updates 2 of the model's 6" in w for w in plan.warnings)


def _data(tmp_path: Path):
    scope: dict = {}
    exec((tmp_path / "net.py").read_text(), scope)
    return scope["make_data"]()


def test_pipeline_no_decay_first_groups(tmp_path):
    torch.set_num_threads(1)
    model = make_model()
    state = train(model, torch.optim.AdamW(no_decay_first(model), lr=1e-3))
    spec = write_spec(tmp_path, {"model": model.state_dict(), "optimizer": state})
    m = run_measurement(load_spec(spec), options=MeasureOptions())
    opt = m.optimizer
    assert (opt.name, opt.weight_decay) == ("adamw", 0.05)  # not group 0's 0.0
    assert [(g.values["weight_decay"], g.params) for g in opt.groups] == [(0.0, 67), (0.05, 1376)]
    assert m.preconditioned is not None  # indices matched one to one across the two groups
    assert m.extra["parameters"]["left_out"] == {"tensors": 0, "params": 0}
    scaled = scale_hyperparameters(opt, 16, 64)  # κ = 4: every group by the same rule
    assert [(g.index, g.new["weight_decay"]) for g in scaled.groups] == [(0, 0.0), (1, 0.1)]
    assert [g.new["lr"] for g in scaled.groups] == pytest.approx([2e-3, 2e-3])


def test_pipeline_spec_name_alone_settles_an_older_adamw_state(tmp_path):
    torch.set_num_threads(1)
    model = make_model()
    state = train(model, torch.optim.AdamW(no_decay_first(model), lr=1e-3))
    for g in state["param_groups"]:
        del g["decoupled_weight_decay"]  # as PyTorch < 2.6 saved it
    spec = write_spec(tmp_path, {"model": model.state_dict(), "optimizer": state})
    m = run_measurement(load_spec(spec), options=MeasureOptions())
    assert m.optimizer is None
    assert any("fits adam and adamw" in w and "optimizer.name" in w for w in m.warnings)
    spec = write_spec(tmp_path, {"model": model.state_dict(), "optimizer": state},
                      "optimizer: {name: adamw}\n")  # fmt: skip
    m = run_measurement(load_spec(spec), options=MeasureOptions())
    assert (m.optimizer.name, m.optimizer.weight_decay, len(m.optimizer.groups)) == (
        "adamw", 0.05, 2)  # fmt: skip
    assert optim.group_optimizers(m.optimizer)


# ---------------------------------------------------------------------------------------------
# The scale-invariance tolerance follows the dtype
# ---------------------------------------------------------------------------------------------


def test_bf16_weights_get_the_bf16_tolerance():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(4, 8, bias=False), nn.LayerNorm(8, elementwise_affine=False), nn.ReLU(),
        nn.Linear(8, 3),
    ).to(torch.bfloat16)  # fmt: skip
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(256, 4, generator=g), torch.randint(0, 3, (256,), generator=g)
    ds = torch.utils.data.TensorDataset(x.to(torch.bfloat16), y)
    raw = measure_model(model, ds, nn.functional.cross_entropy, batch_size=16, num_batches=40,
                        groups=4)  # fmt: skip
    assert raw.amp is None and raw.tau == TAU_BF16
    first, *rest = raw.tensors
    # the weight before the normalisation is scale-invariant, up to bf16 rounding that the fp32
    # tolerance would not forgive
    assert TAU_FP32 < first.invariance_ratio < TAU_BF16 and first.is_scale_invariant(raw.tau)
    assert not any(t.is_scale_invariant(raw.tau) for t in rest)
    assert measure_model(model.float(), torch.utils.data.TensorDataset(x, y),
                         nn.functional.cross_entropy, batch_size=16, num_batches=40,
                         groups=4).tau == TAU_FP32  # fmt: skip
