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
    logged, should_log = [], []
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
            should_log.append(control.should_log)
            control.should_log = False  # as CallbackHandler.on_log does
            logs = {"loss": 0.0}
            callback.on_log(args, state, control, logs=logs, **kw)
            logged.append(logs)
    if callback is not None:
        callback.on_train_end(args, state, control, **kw)
    return model, state, logged, should_log


def test_free_mode_leaves_the_run_bitwise_unchanged_and_writes_windows(tmp_path):
    torch.set_num_threads(1)
    plain, _, _, _ = accumulation_loop(None)
    out = tmp_path / "free"
    cb = BscritCallback(out, EVERY, mode="free")
    measured, state, logged, should_log = accumulation_loop(cb)
    assert same(plain, measured)
    rows = read_series(out / "series.jsonl")
    # the Trainer's numbers of the windows' last steps (global_step once each is taken)
    assert [r["step"] for r in rows] == [4, 8, 12]
    for r in rows:
        assert tuple(r)[: len(SERIES_KEYS)] == SERIES_KEYS and r["mode"] == "free"
        assert r["batch_size"] == ACC * PER_DEVICE
        assert r["free"]["slices"] == ACC and r["free"]["dataset_size"] == 64
        assert r["free"]["steps_pooled"] == EVERY and r["drift"]["relative"] > 0
    assert [h["step"] for h in state.log_history if "bscrit/nsr_raw" in h] == [4, 8, 12]
    # logged at those steps (on_step_end asks the Trainer to log), raw: the only free reading
    assert [i + 1 for i, logs in enumerate(logged) if "bscrit/b_star_raw" in logs] == [4, 8, 12]
    assert [i + 1 for i, flag in enumerate(should_log) if flag] == [4, 8, 12]
    assert not any("preconditioned" in k for logs in logged for k in logs)
    check_schedule_reads_the_optimizer(out / "series.jsonl")


def check_schedule_reads_the_optimizer(series) -> None:
    """The lines record the live optimizer: `bscrit schedule` scales it (stages with
    hyperparameters); a bad record is refused naming the line and key (exit 2)."""
    import json

    from typer.testing import CliRunner

    from bscrit.cli import app

    lines = series.read_text().splitlines()
    assert all(json.loads(x)["optimizer"]["name"] == "adamw" for x in lines)
    r = CliRunner().invoke(app, ["schedule", str(series), "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["optimizer"] == "adamw"
    assert all(st["hyperparameters"] and st["hyperparameters"]["lr"] > 0 for st in d["stages"])
    bad = json.loads(lines[0])
    bad["optimizer"]["lr"] = -1
    series.write_text("\n".join([json.dumps(bad), *lines[1:]]) + "\n")
    r = CliRunner().invoke(app, ["schedule", str(series), "--json"])
    assert r.exit_code == 2 and "series.jsonl:1" in r.output and "optimizer.lr" in r.output


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
    from test_hf_callback import STEPS as TRAINER_STEPS
    from test_hf_callback import trainer_run

    torch.set_num_threads(1)
    plain, _ = trainer_run(tmp_path / "plain", [])
    out = tmp_path / "free"
    measured, trainer = trainer_run(tmp_path / "measured", [BscritCallback(out, 5, mode="free")])
    assert same(plain, measured)
    rows = read_series(out / "series.jsonl")
    assert rows and all(r["regime"] == "epoch_start" for r in rows)  # the Trainer marks epochs
    for r in rows:
        assert r["free"]["slices"] == 2 and r["free"]["micro_batch_size"] == PER_DEVICE
        assert r["free"]["steps_pooled"] >= 2 and r["free"]["steps_skipped"] == 0
        # the Trainer's step numbers (state.global_step once the step is taken: 1, 2, …)
        assert 1 <= r["free"]["first_step"] < r["step"] <= TRAINER_STEPS
        assert r["examples_seen"] == 2 * PER_DEVICE * r["step"]
        assert r["optimizer"]["name"] == "adamw"  # so `bscrit schedule` scales it
    # logged at the step where each window closed, with the Trainer's own log of that step
    history = [h["step"] for h in trainer.state.log_history if "bscrit/nsr_raw" in h]
    trainer_logs = {h["step"] for h in trainer.state.log_history if "loss" in h}
    assert len(history) == len(rows) and set(history) <= trainer_logs
    assert all(r["step"] <= h for r, h in zip(rows, history))
