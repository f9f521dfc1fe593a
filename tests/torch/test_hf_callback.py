"""bscrit.integrations.transformers.BscritCallback on a tiny random GPT-2 (CPU, 20 steps).

The callback's hooks are driven by a hand-written training loop with real ``TrainerState`` /
``TrainerControl`` objects (always: the ``Trainer`` needs accelerate, which may be missing), and
by a real ``Trainer`` when accelerate is installed. Either way the run ends with the same
weights, bitwise, as one without the callback, and the series and log entries are written."""

from __future__ import annotations

import math
import random
import warnings
from types import SimpleNamespace

import pytest
import torch

transformers = pytest.importorskip("transformers")

import bscrit  # noqa: E402
from bscrit.errors import UsageError  # noqa: E402
from bscrit.integrations.recorder import SERIES_KEYS, read_series  # noqa: E402
from bscrit.integrations.transformers import BscritCallback  # noqa: E402

CONFIG = dict(
    vocab_size=64, n_positions=8, n_embd=16, n_layer=1, n_head=2, bos_token_id=0, eos_token_id=0
)
PER_DEVICE, STEPS, EVERY = 4, 20, 5
ADAMW_METRICS = ("bscrit/nsr_raw", "bscrit/b_star_raw",
                 "bscrit/nsr_preconditioned", "bscrit/b_star_preconditioned")  # fmt: skip


def gpt2() -> torch.nn.Module:
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(**CONFIG))


def examples(n: int = 64) -> list[dict[str, torch.Tensor]]:
    """Sequences with padding (labels −100 where the mask is 0): micro-batches weigh by the
    counted labels, as the Trainer does."""
    g = torch.Generator().manual_seed(1)
    out = []
    for i in range(n):
        ids = torch.randint(0, CONFIG["vocab_size"], (8,), generator=g)
        keep = 4 + i % 5
        mask = (torch.arange(8) < keep).long()
        out.append(
            {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}
        )
    return out


def hand_loop(callback: BscritCallback | None) -> tuple[torch.nn.Module, transformers.TrainerState]:
    """The Trainer's order of events: backward, on_pre_optimizer_step, step, global_step += 1,
    on_step_end, on_log; the data order drawn from torch's global RNG, dropout on."""
    torch.manual_seed(3)
    random.seed(3)
    model = gpt2()
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    loader = torch.utils.data.DataLoader(examples(), batch_size=PER_DEVICE, shuffle=True)
    args = SimpleNamespace(per_device_train_batch_size=PER_DEVICE, gradient_accumulation_steps=1)
    state, control = transformers.TrainerState(), transformers.TrainerControl()
    kw = dict(model=model, optimizer=opt, train_dataloader=loader)
    if callback is not None:
        callback.on_train_begin(args, state, control, **kw)
    it = iter(loader)
    while state.global_step < STEPS:
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        model(**batch).loss.backward()
        if callback is not None:
            callback.on_pre_optimizer_step(args, state, control, **kw)
        opt.step()
        opt.zero_grad()
        state.global_step += 1
        if callback is not None:
            callback.on_step_end(args, state, control, **kw)
            # a measured step asks the Trainer to log: the metrics go with that step's logs
            assert control.should_log == (state.global_step % EVERY == 0)
            control.should_log = False  # as CallbackHandler.on_log does
            logs = {"loss": 0.0}
            callback.on_log(args, state, control, logs=logs, **kw)
            if state.global_step % EVERY == 0:  # AdamW: the raw and preconditioned readings
                assert set(logs) == {"loss", *ADAMW_METRICS}
    return model, state


def same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def check_series(out, batch_size: int) -> list[dict]:
    rows = read_series(out / "series.jsonl")
    assert [r["step"] for r in rows] == list(range(EVERY, STEPS + 1, EVERY))
    assert all(tuple(r) == SERIES_KEYS for r in rows)
    assert all(r["batch_size"] == batch_size for r in rows)
    assert all(r["examples_seen"] == batch_size * r["step"] for r in rows)
    for r in rows:
        m = bscrit.load_measurement(out / r["file"])
        assert m.checkpoints[0].step == r["step"]
        assert m.optimizer is not None and m.optimizer.name == "adamw"
        nsr = bscrit.predict(m).base.nsr  # inf (null in the series) when Ĝ <= 0
        assert r["nsr"] == (pytest.approx(nsr) if math.isfinite(nsr) else None)
    return rows


def test_hand_driven_hooks_leave_the_run_bitwise_unchanged(tmp_path):
    torch.set_num_threads(1)
    plain, _ = hand_loop(None)
    out = tmp_path / "bscrit"
    measured, state = hand_loop(BscritCallback(out, every_n_steps=EVERY, num_batches=8, groups=2))
    assert same(plain, measured)
    rows = check_series(out, PER_DEVICE)
    history = [h for h in state.log_history if "bscrit/nsr_raw" in h]
    assert [h["step"] for h in history] == [r["step"] for r in rows]
    for h, r in zip(history, rows):  # each name is one reading, as `bscrit predict` gives it
        assert set(h) == {"step", *ADAMW_METRICS}
        p = bscrit.predict(bscrit.load_measurement(out / r["file"]))
        assert p.base.param_set == "preconditioned" == r["param_set"]
        (raw,) = p.base.other_readings
        assert raw.name == "all"
        assert h["bscrit/nsr_preconditioned"] == pytest.approx(p.base.nsr)
        assert h["bscrit/b_star_preconditioned"] == pytest.approx(p.base.b_star)
        assert h["bscrit/nsr_raw"] == pytest.approx(raw.nsr)
        assert h["bscrit/b_star_raw"] == pytest.approx(raw.b_star)


def test_bad_settings_are_refused_before_training(tmp_path):
    cb = BscritCallback(tmp_path, loss_fn="mean")
    args = SimpleNamespace(per_device_train_batch_size=4, gradient_accumulation_steps=1)
    with pytest.raises(UsageError, match="'model'"):
        cb.on_train_begin(args, transformers.TrainerState(), transformers.TrainerControl())
    cb = BscritCallback(tmp_path, micro_batch_size=3)
    with pytest.raises(UsageError, match="does not divide"):
        cb.on_train_begin(args, transformers.TrainerState(), transformers.TrainerControl())


def test_hooks_outside_a_trainer_warn_that_report_to_is_not_reached(tmp_path):
    """No CallbackHandler on the call stack to go first in: said when report_to names some."""
    args = SimpleNamespace(
        per_device_train_batch_size=4, gradient_accumulation_steps=1, report_to=["tensorboard"]
    )
    state, control = transformers.TrainerState(), transformers.TrainerControl()
    with pytest.warns(UserWarning, match=r"report_to integrations \(\['tensorboard'\]\)"):
        BscritCallback(tmp_path).on_train_begin(args, state, control)
    args.report_to = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        BscritCallback(tmp_path).on_train_begin(args, state, control)


def test_other_ranks_ask_for_the_same_logs_and_measure_nothing(tmp_path):
    """The Trainer's log gathers the loss across processes (a collective): every rank must log
    at the measured step, not rank 0 alone, or the run would hang."""
    state, control = transformers.TrainerState(), transformers.TrainerControl()
    state.is_world_process_zero, state.global_step = False, EVERY
    BscritCallback(tmp_path / "x", every_n_steps=EVERY).on_step_end(None, state, control)
    assert control.should_log and not (tmp_path / "x").exists() and not state.log_history


def trainer_run(tmp_path, callbacks):
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=PER_DEVICE,
        gradient_accumulation_steps=2,
        max_steps=STEPS,
        learning_rate=1e-3,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_steps=5,
        seed=5,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    model = gpt2()
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=examples(), callbacks=list(callbacks)
    )
    trainer.train()
    return model, trainer


def test_a_real_trainer_run_is_bitwise_unchanged(tmp_path):
    pytest.importorskip("accelerate")
    torch.set_num_threads(1)
    plain, _ = trainer_run(tmp_path / "plain", [])
    out = tmp_path / "bscrit"
    cb = BscritCallback(out, every_n_steps=EVERY, num_batches=8, groups=2)
    measured, trainer = trainer_run(tmp_path / "measured", [cb])
    assert same(plain, measured)
    check_series(out, 2 * PER_DEVICE)
    m = bscrit.load_measurement(out / "step-0000005.json")
    assert m.micro_batch_size == PER_DEVICE  # chunks of the per-device batch, like a step
    history = [h for h in trainer.state.log_history if "bscrit/b_star_raw" in h]
    assert [h["step"] for h in history] == [5, 10, 15, 20]
