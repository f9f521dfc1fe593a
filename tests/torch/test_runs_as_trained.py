"""Runs as they trained (issue 27): on a plain loop with OneCycleLR, a Lightning run with StepLR
and an HF Trainer run with a cosine schedule, a no-decay group and accumulation, what bscrit reads
(base LR = the schedule's peak, the LR at the checkpoint, momentum, each param group's values, the
remaining schedule) is what the run did, and confirm's branches train with it."""

from __future__ import annotations

import json
import math
import shutil
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from bscrit.load.checkpoints import load_checkpoint
from bscrit.optim import lr_schedule
from bscrit.runs.common.optimizer import lr_factor, make_optimizer
from bscrit.runs.confirm.plan import prepare_confirm
from bscrit.runs.confirm.run import run_branch
from bscrit.specfile.document import load_spec

ASSETS = Path(__file__).parents[1] / "assets"
sys.path.insert(0, str(ASSETS))
import tiny  # noqa: E402

SAVE_AT, TOTAL, MAX_LR = 20, 60, 0.2


def _groups(model: nn.Module, wd: float) -> list[dict]:
    decay = [p for n, p in model.named_parameters() if n.endswith("weight") and p.dim() > 1]
    rest = [p for n, p in model.named_parameters() if not (n.endswith("weight") and p.dim() > 1)]
    return [{"params": decay, "weight_decay": wd}, {"params": rest, "weight_decay": 0.0}]


def _onecycle_run(tmp_path: Path) -> tuple[Path, list[float]]:
    """SGD Nesterov with a no-decay group under OneCycleLR; saved at step 20 of 60 with its
    scheduler; returns the spec and the LRs the run then used at steps 20..59."""
    torch.manual_seed(0)
    model = tiny.make_model()
    ds = tiny.make_dataset()
    opt = torch.optim.SGD(_groups(model, 1e-3), lr=0.1, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=MAX_LR, total_steps=TOTAL)
    g = torch.Generator().manual_seed(0)
    lrs: list[float] = []
    for step in range(TOTAL):
        if step == SAVE_AT:
            saved = {"model": model.state_dict(), "optimizer": opt.state_dict(),
                     "scheduler": sched.state_dict(), "step": step}  # fmt: skip
            torch.save(saved, tmp_path / "c.pt")
        if step >= SAVE_AT:
            lrs.append(opt.param_groups[0]["lr"])
        idx = torch.randperm(len(ds), generator=g)[:8]
        x, y = ds.tensors[0][idx], ds.tensors[1][idx]
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        sched.step()
    shutil.copy(ASSETS / "tiny.py", tmp_path / "tiny.py")
    (tmp_path / "spec.yaml").write_text(textwrap.dedent("""
        model: {factory: tiny.py:make_model}
        checkpoint: {path: c.pt}
        data: {factory: tiny.py:make_dataset}
        loss: cross_entropy
        batch_size: 8
        optimizer: sgd
        measure: {seed: 0, device: cpu}
        """))  # fmt: skip
    return tmp_path / "spec.yaml", lrs


def test_onecycle_base_lr_is_the_peak_and_confirm_continues_the_remaining_schedule(tmp_path):
    torch.set_num_threads(1)
    spec, lrs = _onecycle_run(tmp_path)
    ckpt = load_checkpoint(tmp_path / "c.pt")
    opt = ckpt.optimizer
    assert opt is not None and opt.lr == pytest.approx(MAX_LR)  # max_lr, not max_lr/25
    assert opt.lr_current == pytest.approx(lrs[0])
    assert opt.momentum == pytest.approx(0.85)  # OneCycle's momentum at the peak
    assert opt.nesterov
    assert [g.values["weight_decay"] for g in opt.groups] == [1e-3, 0.0]
    assert ckpt.schedule is not None and ckpt.schedule["name"] == "onecycle"
    for k, lr in enumerate(lrs):
        assert MAX_LR * lr_schedule.factor_at(ckpt.schedule, SAVE_AT + k) == pytest.approx(lr)

    plan = prepare_confirm(load_spec(spec), target_batch_size=16, examples=160, seeds=1,
                           eval_batches=2, decay=False)  # fmt: skip
    assert plan.start_step == SAVE_AT and plan.kappa == 2
    total = plan.grid_base[-1]
    for k in range(total):  # the base branch: the run's own LRs from step 20 on
        f = lr_factor(plan.schedule, SAVE_AT + k, SAVE_AT + k + 1, SAVE_AT + total)
        assert plan.base_optimizer.lr * f == pytest.approx(lrs[k])
    s0 = SAVE_AT / 2
    for k in range(plan.grid_target[-1]):  # at B' = 2B: κ·lr at base step 20 + 2k (SGD)
        f = lr_factor(plan.target_schedule, s0 + k, s0 + k + 1, s0 + total)
        assert plan.target_optimizer.lr * f == pytest.approx(2 * lrs[2 * k])
    # each param group trained with its own values, scaled by the rule
    assert [g.values["weight_decay"] for g in plan.target_optimizer.groups] == [1e-3, 0.0]
    model = tiny.make_model()
    params = list(model.parameters())
    built = make_optimizer(params, plan.target_optimizer, plan.param_groups)
    assert sorted(g["weight_decay"] for g in built.param_groups) == [0.0, 1e-3]
    assert all(g["lr"] == pytest.approx(2 * MAX_LR) and g["nesterov"] for g in built.param_groups)
    assert not any("main group" in n for n in plan.notes)
    assert any("onecycle" in n for n in plan.notes)
    assert any("cycled the momentum" in n for n in plan.notes)  # what differs, said
    branch = run_branch(plan, "target", 0)  # it runs, with those groups
    assert all(math.isfinite(v) for v in branch.values["train_loss"])


def test_without_a_schedule_the_runs_continue_at_the_lr_at_the_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = tiny.make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.8, momentum=0.9, weight_decay=1e-3)
    for g in opt.param_groups:  # a decay done by hand: initial_lr 0.8, lr 0.08 now
        g["initial_lr"], g["lr"] = 0.8, 0.08
    shutil.copy(ASSETS / "tiny.py", tmp_path / "tiny.py")
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, tmp_path / "c.pt")
    (tmp_path / "spec.yaml").write_text(textwrap.dedent("""
        model: {factory: tiny.py:make_model}
        checkpoint: {path: c.pt}
        data: {factory: tiny.py:make_dataset}
        loss: cross_entropy
        batch_size: 8
        measure: {seed: 0, device: cpu}
        """))  # fmt: skip
    plan = prepare_confirm(load_spec(tmp_path / "spec.yaml"), target_batch_size=16, seeds=1,
                           eval_batches=2, decay=False)  # fmt: skip
    assert plan.base_optimizer.lr == pytest.approx(0.8)
    assert plan.base_optimizer.lr * lr_factor(plan.schedule, 0, 1, 10) == pytest.approx(0.08)
    assert plan.target_optimizer.lr * lr_factor(plan.target_schedule, 0, 1, 10) == pytest.approx(
        0.16
    )
    assert any("constant LR, the LR at the checkpoint" in n for n in plan.notes)
    # the default budget counts relaxation times at the LR at the checkpoint: 1/(2·0.08/(1-0.9)·λ)
    assert plan.examples == pytest.approx(2 * 8 / (2 * 0.8 * 1e-3), rel=0.05)


# ----------------------------------------------------------------------------------------------
# Lightning: SGD momentum, StepLR stepped once per epoch
# ----------------------------------------------------------------------------------------------


def test_lightning_steplr_per_epoch_is_read_in_optimizer_steps(tmp_path):
    L = pytest.importorskip("lightning")

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.net = tiny.make_model()

        def training_step(self, batch, _):
            x, y = batch
            return nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            opt = torch.optim.SGD(self.net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
            return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)]

    loader = torch.utils.data.DataLoader(tiny.make_dataset(), batch_size=8)  # 8 steps per epoch
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(Module(), loader)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    ckpt = load_checkpoint(tmp_path / "last.ckpt")
    assert ckpt.optimizer.lr == pytest.approx(0.1)
    assert ckpt.optimizer.lr_current == pytest.approx(0.025)  # two epochs, × 0.5 each
    s = ckpt.schedule
    assert s is not None and s["name"] == "step" and s["unit_steps"] == 8
    assert 0.1 * lr_schedule.factor_at(s, 16) == pytest.approx(0.025)
    assert 0.1 * lr_schedule.factor_at(s, 23) == pytest.approx(0.025)
    assert 0.1 * lr_schedule.factor_at(s, 24) == pytest.approx(0.0125)
    assert ckpt.schedule_note and "epochs" in ckpt.schedule_note


# ----------------------------------------------------------------------------------------------
# HF Trainer: AdamW with the no-decay group, cosine with warm-up, accumulation 2
# ----------------------------------------------------------------------------------------------


def test_hf_trainer_cosine_schedule_groups_and_lr_at_the_checkpoint(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from test_hf_callback import examples, gpt2  # noqa: PLC0415

    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=4, gradient_accumulation_steps=2,
        learning_rate=1e-3, weight_decay=0.01, lr_scheduler_type="cosine", warmup_steps=3,
        max_steps=12, save_steps=6, logging_steps=1, report_to=[], use_cpu=True, seed=0,
        disable_tqdm=True,
    )  # fmt: skip
    transformers.Trainer(model=gpt2(), args=args, train_dataset=examples()).train()
    folder = tmp_path / "checkpoint-6"
    ckpt = load_checkpoint(folder)
    logged = {
        e["step"]: e["learning_rate"]
        for e in json.loads((tmp_path / "checkpoint-12" / "trainer_state.json").read_text())[
            "log_history"
        ]
        if "learning_rate" in e
    }
    opt = ckpt.optimizer
    assert opt.name == "adamw" and opt.lr == pytest.approx(1e-3)  # the peak
    # the Trainer logs at step t the LR that step used (λ(t − 1); older versions λ(t))
    lag = 1 if math.isclose(logged[7], opt.lr_current) else 0
    assert opt.lr_current == pytest.approx(logged[6 + lag])
    assert sorted(g.values["weight_decay"] for g in opt.groups) == [0.0, 0.01]
    s = ckpt.schedule
    assert s is not None and (s["decay"], s["warmup_steps"], s["total_steps"]) == ("cosine", 3, 12)
    assert 1e-3 * lr_schedule.factor_at(s, 6) == pytest.approx(opt.lr_current)
    for step, lr in logged.items():  # including the steps after the checkpoint
        assert 1e-3 * lr_schedule.factor_at(s, step - lag) == pytest.approx(lr, rel=1e-6, abs=1e-12)


def test_saved_state_reaches_its_own_parameter_when_groups_reorder_them():
    """The optimizer numbers its state group by group; the saved state follows the model's order.
    Same shapes everywhere, so a mix-up would not crash: each parameter must get its own state."""
    from bscrit.optim.registry import OptimizerInfo
    from bscrit.optim.state import ParamGroupInfo
    from bscrit.runs.confirm.run import load_saved_state

    params = [nn.Parameter(torch.zeros(3)) for _ in range(4)]
    groups = (1, 0, 1, 0)  # model order: decayed, no-decay, decayed, no-decay
    opt = OptimizerInfo("adam", lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1, groups=(
        ParamGroupInfo(0, 2, {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8,
                              "weight_decay": 0.0}),
        ParamGroupInfo(1, 2, {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8,
                              "weight_decay": 0.1}),
    ))  # fmt: skip
    built = make_optimizer(params, opt, groups)
    assert [g["weight_decay"] for g in built.param_groups] == [0.0, 0.1]
    saved = [{"step": torch.tensor(5.0), "exp_avg": torch.full((3,), float(i)),
              "exp_avg_sq": torch.full((3,), 10.0 + i)} for i in range(4)]  # fmt: skip
    load_saved_state(built, saved, kappa=2.0, params=params)
    for i, p in enumerate(params):
        assert torch.equal(built.state[p]["exp_avg"], torch.full((3,), float(i)))
        assert torch.equal(built.state[p]["exp_avg_sq"], torch.full((3,), (10.0 + i) / 2))
