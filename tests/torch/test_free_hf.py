"""mode="free" of the Hugging Face callback, driven in the Trainer's order of events with
gradient accumulation (backward × M, clip, on_pre_optimizer_step, step, on_step_end, on_log): the
run ends bitwise as one without the callback; one series line per window; the logs carry NSR."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch

transformers = pytest.importorskip("transformers")

from test_hf_callback import PER_DEVICE, examples, gpt2, same  # noqa: E402

from bscrit.errors import UsageError  # noqa: E402
from bscrit.integrations.recorder import SERIES_KEYS, read_series  # noqa: E402
from bscrit.integrations.transformers import BscritCallback  # noqa: E402

ACC, STEPS, EVERY = 2, 12, 4


def accumulation_loop(callback: BscritCallback | None):
    torch.manual_seed(3)
    random.seed(3)
    model = gpt2()
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    loader = torch.utils.data.DataLoader(examples(), batch_size=PER_DEVICE, shuffle=True)
    args = SimpleNamespace(per_device_train_batch_size=PER_DEVICE, gradient_accumulation_steps=ACC)
    state, control = transformers.TrainerState(), transformers.TrainerControl()
    kw = dict(model=model, optimizer=opt, train_dataloader=loader)
    if callback is not None:
        callback.on_train_begin(args, state, control, **kw)
    it = iter(loader)
    logged = []
    while state.global_step < STEPS:
        for _ in range(ACC):
            try:
                batch = next(it)
            except StopIteration:
                it = iter(loader)
                batch = next(it)
            (model(**batch).loss / ACC).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)  # the Trainer clips first
        if callback is not None:
            callback.on_pre_optimizer_step(args, state, control, **kw)
        opt.step()
        opt.zero_grad()
        state.global_step += 1
        if callback is not None:
            callback.on_step_end(args, state, control, **kw)
            logs = {"loss": 0.0}
            callback.on_log(args, state, control, logs=logs, **kw)
            logged.append(logs)
    if callback is not None:
        callback.on_train_end(args, state, control, **kw)
    return model, state, logged


def test_free_mode_leaves_the_run_bitwise_unchanged_and_writes_windows(tmp_path):
    torch.set_num_threads(1)
    plain, _, _ = accumulation_loop(None)
    out = tmp_path / "free"
    measured, state, logged = accumulation_loop(BscritCallback(out, EVERY, mode="free"))
    assert same(plain, measured)
    rows = read_series(out / "series.jsonl")
    assert [r["step"] for r in rows] == [3, 7, 11]
    for r in rows:
        assert tuple(r)[: len(SERIES_KEYS)] == SERIES_KEYS and r["mode"] == "free"
        assert r["batch_size"] == ACC * PER_DEVICE
        assert r["free"]["slices"] == ACC and r["free"]["dataset_size"] == 64
        assert r["free"]["steps_pooled"] == EVERY and r["drift"]["relative"] > 0
    assert [h["step"] for h in state.log_history if "bscrit/nsr" in h] == [3, 7, 11]
    assert sum("bscrit/b_star" in logs for logs in logged) == 3


def test_free_mode_refuses_a_single_micro_batch(tmp_path):
    cb = BscritCallback(tmp_path, 4, mode="free")
    args = SimpleNamespace(per_device_train_batch_size=4, gradient_accumulation_steps=1)
    kw = dict(model=gpt2(), optimizer=None, train_dataloader=None)
    with pytest.raises(UsageError, match="accumulation"):
        cb.on_train_begin(args, transformers.TrainerState(), transformers.TrainerControl(), **kw)


def test_a_real_trainer_run_in_free_mode(tmp_path):
    """The Trainer accumulates 2 micro-batches and clips (max_grad_norm = 1) before
    on_pre_optimizer_step: the hooks read the micro-batches inside backward()."""
    pytest.importorskip("accelerate")
    from test_hf_callback import trainer_run

    torch.set_num_threads(1)
    plain, _ = trainer_run(tmp_path / "plain", [])
    out = tmp_path / "free"
    measured, trainer = trainer_run(tmp_path / "measured", [BscritCallback(out, 5, mode="free")])
    assert same(plain, measured)
    rows = read_series(out / "series.jsonl")
    assert [r["step"] for r in rows] == [4, 9, 14, 19]
    for r in rows:
        assert r["free"]["slices"] == 2 and r["free"]["micro_batch_size"] == PER_DEVICE
        assert r["free"]["steps_pooled"] == 5 and r["free"]["steps_skipped"] == 0
    history = [h["step"] for h in trainer.state.log_history if "bscrit/nsr" in h]
    assert history == [4, 9, 14, 19]
