"""The callbacks' metrics reach the user's tracker: TensorBoard event files written by a real
``transformers.Trainer`` (``report_to=["tensorboard"]``) and by Lightning's ``TensorBoardLogger``
are read back, and carry the ``bscrit/*`` names of :data:`bscrit.integrations.recorder.METRICS`
at the trainer's step numbers, with the values of ``series.jsonl`` / the step JSONs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    EventAccumulator,
)

import bscrit  # noqa: E402
from bscrit.integrations.recorder import METRICS, read_series  # noqa: E402

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*LeafSpec:FutureWarning", "ignore:.*num_workers", "ignore:.*does not have many workers"
)


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series of the one TensorBoard run under ``folder``: tag → [(step, value)]."""
    (run,) = {p.parent for p in folder.rglob("events.out.tfevents.*")}
    acc = EventAccumulator(str(run), size_guidance={"scalars": 0})  # 0: keep every point
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def close(a: float, b: float | None) -> bool:
    """A float32 event value against a JSON number (null: inf, B* unbounded)."""
    if b is None:
        return math.isinf(a)
    return math.isclose(a, b, rel_tol=1e-5)


# -- the Hugging Face Trainer -------------------------------------------------------------------


def hf_run(tmp_path: Path, callback, steps: int, accumulation: int = 1):
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    import transformers
    from test_hf_callback import PER_DEVICE, examples, gpt2

    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "run"),
        per_device_train_batch_size=PER_DEVICE,
        gradient_accumulation_steps=accumulation,
        max_steps=steps,
        learning_rate=1e-3,
        use_cpu=True,
        report_to=["tensorboard"],
        save_strategy="no",
        logging_steps=3,  # not a multiple of every_n_steps: the callback asks for its own logs
        seed=5,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = transformers.Trainer(
        model=gpt2(), args=args, train_dataset=examples(), callbacks=[callback]
    )
    trainer.train()
    return trainer, scalars(tmp_path / "run")


def test_hf_trainer_every_n_metrics_reach_tensorboard(tmp_path):
    from bscrit.integrations.transformers import BscritCallback

    torch.set_num_threads(1)
    out = tmp_path / "bscrit"
    cb = BscritCallback(out, every_n_steps=5, num_batches=8, groups=2)
    trainer, tb = hf_run(tmp_path, cb, steps=10)
    # the callback went before the report_to integration, whose tags are train/<key>
    assert type(trainer.callback_handler.callbacks[0]) is BscritCallback
    rows = read_series(out / "series.jsonl")
    assert [r["step"] for r in rows] == [5, 10]
    adamw = ("nsr_raw", "b_star_raw", "nsr_preconditioned", "b_star_preconditioned")
    assert {t for t in tb if t.startswith("train/bscrit/")} == {f"train/bscrit/{k}" for k in adamw}
    assert {f"bscrit/{k}" for k in adamw} <= set(METRICS)
    for k in adamw:  # at the Trainer's step numbers, the measured steps
        assert [s for s, _ in tb[f"train/bscrit/{k}"]] == [5, 10]
    # the Trainer's own logs: every 3 steps, and at the measured steps (control.should_log)
    assert [s for s, _ in tb["train/loss"]] == [3, 5, 6, 9, 10]
    for r, (_, pre), (_, raw) in zip(
        rows, tb["train/bscrit/b_star_preconditioned"], tb["train/bscrit/b_star_raw"]
    ):
        p = bscrit.predict(bscrit.load_measurement(out / r["file"]))
        assert r["param_set"] == p.base.param_set == "preconditioned"
        assert close(pre, r["b_star"])  # the series' B* is predict's reading, preconditioned
        (other,) = p.base.other_readings
        assert other.name == "all" and close(raw, other.b_star)


def test_hf_trainer_free_mode_metrics_reach_tensorboard(tmp_path):
    from bscrit.integrations.transformers import BscritCallback

    torch.set_num_threads(1)
    out = tmp_path / "free"
    trainer, tb = hf_run(tmp_path, BscritCallback(out, 5, mode="free"), steps=20, accumulation=2)
    rows = read_series(out / "series.jsonl")
    assert rows and all(r["optimizer"]["name"] == "adamw" for r in rows)
    # the raw reading under the same name as in every_n mode; nothing preconditioned
    tags = {t for t in tb if t.startswith("train/bscrit/")}
    assert {"train/bscrit/nsr_raw", "train/bscrit/b_star_raw", "train/bscrit/drift"} <= tags
    assert not any("preconditioned" in t for t in tags)
    assert tags <= {f"train/{k}" for k in METRICS}
    history = [h for h in trainer.state.log_history if "bscrit/b_star_raw" in h]
    steps = [s for s, _ in tb["train/bscrit/b_star_raw"]]
    assert steps == [h["step"] for h in history] and len(steps) == len(rows)
    assert set(steps) <= {s for s, _ in tb["train/loss"]}  # with the Trainer's log of that step
    for r, s, (_, v) in zip(rows, steps, tb["train/bscrit/b_star_raw"]):
        assert r["step"] <= s <= 20 and close(v, r["b_star"])


# -- Lightning ------------------------------------------------------------------------------------


def lightning_run(tmp_path: Path, callback, steps: int, accumulate: int = 1):
    L = pytest.importorskip("lightning")
    from test_lightning_callback import Module, Noisy
    from torch.utils.data import DataLoader

    L.seed_everything(7, workers=True)
    logger = L.pytorch.loggers.TensorBoardLogger(save_dir=str(tmp_path / "tb"), name="run")
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=logger,
        callbacks=[callback],
        accumulate_grad_batches=accumulate,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        log_every_n_steps=3,  # the callback logs at its own steps whatever this says
    )
    trainer.fit(Module(), DataLoader(Noisy(), batch_size=8, shuffle=True))
    return trainer, scalars(Path(logger.log_dir))


def test_lightning_every_n_metrics_reach_tensorboard(tmp_path):
    pytest.importorskip("lightning")
    from bscrit.integrations.lightning import BscritCallback

    torch.set_num_threads(1)
    out = tmp_path / "bscrit"
    cb = BscritCallback(out, every_n_steps=5, num_batches=20, groups=4)
    trainer, tb = lightning_run(tmp_path, cb, steps=10)
    rows = read_series(out / "series.jsonl")
    assert [r["step"] for r in rows] == [5, 10] and trainer.global_step == 10
    adamw = ("nsr_raw", "b_star_raw", "nsr_preconditioned", "b_star_preconditioned")
    assert {f"bscrit/{k}" for k in adamw} <= {t for t in tb if t.startswith("bscrit/")}
    assert {t for t in tb if t.startswith("bscrit/")} <= set(METRICS)
    for k in adamw:  # trainer.global_step after the measured step
        assert [s for s, _ in tb[f"bscrit/{k}"]] == [5, 10]
    # the module's own self.log (log_every_n_steps=3) went to the same run, at
    # trainer.global_step before the step's increment: the loss of steps 3, 6, 9 at 2, 5, 8
    assert [s for s, _ in tb["train_loss"]] == [2, 5, 8]
    for r, (_, nsr) in zip(rows, tb["bscrit/nsr_preconditioned"]):
        assert r["param_set"] == "preconditioned" and close(nsr, r["nsr"])


def test_lightning_free_mode_metrics_reach_tensorboard(tmp_path):
    pytest.importorskip("lightning")
    from bscrit.integrations.lightning import BscritCallback

    torch.set_num_threads(1)
    out = tmp_path / "free"
    cb = BscritCallback(out, every_n_steps=5, mode="free")
    _, tb = lightning_run(tmp_path, cb, steps=20, accumulate=2)
    rows = read_series(out / "series.jsonl")
    assert rows and all(r["optimizer"]["name"] == "adamw" for r in rows)
    assert {"bscrit/nsr_raw", "bscrit/b_star_raw", "bscrit/drift"} <= set(tb)
    assert not any("preconditioned" in t for t in tb)
    steps = [s for s, _ in tb["bscrit/b_star_raw"]]
    assert len(steps) == len(rows)
    for r, s, (_, v) in zip(rows, steps, tb["bscrit/b_star_raw"]):
        # the series' step and the logged one in trainer.global_step's numbering (1 = first)
        assert 1 <= r["free"]["first_step"] < r["step"] <= s <= 20
        assert r["examples_seen"] == 16 * r["step"] and close(v, r["b_star"])
