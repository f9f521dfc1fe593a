"""bscrit.integrations.lightning.BscritCallback in a real Lightning run (CPU, 20 steps): the
run ends with the same weights, bitwise, as one without the callback; one JSON per measured
step, series.jsonl, the metrics in the logger; bad settings refused before the first step."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

L = pytest.importorskip("lightning")
pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec:FutureWarning", "ignore:.*num_workers")

import bscrit  # noqa: E402
from bscrit.errors import UsageError  # noqa: E402
from bscrit.integrations.lightning import BscritCallback  # noqa: E402
from bscrit.integrations.recorder import SERIES_KEYS, read_series  # noqa: E402


class Noisy(Dataset):
    """Gaussian inputs, teacher labels, and an augmentation drawn from Python's and NumPy's
    global RNGs (a measurement that moved them would change the training batches after it)."""

    def __init__(self, n: int = 96) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 4, generator=g)
        self.y = (self.x @ torch.randn(4, 3, generator=g)).argmax(1)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i] + 0.01 * random.random() + 0.01 * float(np.random.rand()), self.y[i]


class Module(L.LightningModule):
    """BatchNorm (buffers), dropout (the torch RNG), AdamW (a state), logging in training_step."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3)
        )

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=0.01, weight_decay=0.05)


class Collect(L.pytorch.loggers.Logger):
    def __init__(self) -> None:
        super().__init__()
        self.metrics: list[tuple[int, dict]] = []

    @property
    def name(self) -> str:
        return "collect"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        self.metrics.append((step, dict(metrics)))


def fit(tmp_path, callbacks=(), steps: int = 20, accumulate: int = 1):
    L.seed_everything(7, workers=True)
    module = Module()
    loader = DataLoader(Noisy(), batch_size=8, shuffle=True)
    logger = Collect()
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=logger,
        callbacks=list(callbacks),
        accumulate_grad_batches=accumulate,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        log_every_n_steps=1,
    )
    trainer.fit(module, loader)
    return module, logger


def test_the_run_is_bitwise_unchanged_and_the_series_is_written(tmp_path):
    torch.set_num_threads(1)
    plain, plain_log = fit(tmp_path / "plain")
    out = tmp_path / "bscrit"
    cb = BscritCallback(out, every_n_steps=5, num_batches=20, groups=4)
    measured, log = fit(tmp_path / "measured", [cb])
    a, b = plain.state_dict(), measured.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the run's own metrics are the same too (training_step's self.log was silenced for bscrit)
    train_losses = [m["train_loss"] for _, m in log.metrics if "train_loss" in m]
    assert train_losses == [m["train_loss"] for _, m in plain_log.metrics if "train_loss" in m]

    rows = read_series(out / "series.jsonl")
    assert [r["step"] for r in rows] == [5, 10, 15, 20]
    assert all(tuple(r) == SERIES_KEYS for r in rows)
    assert all(r["batch_size"] == 8 and r["examples_seen"] == 8 * r["step"] for r in rows)
    for r in rows:
        m = bscrit.load_measurement(out / r["file"])
        assert m.checkpoints[0].step == r["step"] and m.num_batches == 20
        assert m.optimizer is not None and m.optimizer.name == "adamw"
        p = bscrit.predict(m)
        assert r["nsr"] == pytest.approx(p.base.nsr) and r["b_star"] == pytest.approx(p.base.b_star)
        lo, hi = r["b_star_ci95"]
        assert lo is not None and lo <= r["b_star"] and (hi is None or r["b_star"] <= hi)
    logged = [(s, m) for s, m in log.metrics if "bscrit/nsr_raw" in m]
    assert [s for s, _ in logged] == [5, 10, 15, 20]
    for (_, m), r in zip(logged, rows):  # AdamW: the series' reading is the preconditioned one
        assert r["param_set"] == "preconditioned"
        assert math.isclose(m["bscrit/nsr_preconditioned"], r["nsr"])
        assert math.isclose(m["bscrit/b_star_preconditioned"], r["b_star"])
        assert m["bscrit/nsr_raw"] != m["bscrit/nsr_preconditioned"]  # two readings, two names
    # one file per measured step, each the JSON `bscrit measure` writes
    assert sorted(p.name for p in out.glob("step-*.json")) == [
        f"step-{s:07d}.json" for s in (5, 10, 15, 20)
    ]
    assert json.loads((out / "step-0000005.json").read_text())["kind"] == "bscrit.measurement"


def test_accumulation_sets_b_and_measures_once_per_optimizer_step(tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "acc"
    cb = BscritCallback(out, every_n_steps=2, num_batches=8, groups=2)
    fit(tmp_path, [cb], steps=4, accumulate=2)
    rows = read_series(out / "series.jsonl")
    assert [r["step"] for r in rows] == [2, 4]
    assert all(r["batch_size"] == 16 for r in rows)  # 8 per batch x 2 accumulated
    m = bscrit.load_measurement(out / rows[0]["file"])
    assert m.micro_batch_size == 8  # measured in chunks of the training batch


def test_bad_settings_are_refused_before_training(tmp_path):
    with pytest.raises(UsageError, match="mode: expected one of"):
        BscritCallback(tmp_path, mode="sometimes")
    with pytest.raises(UsageError, match="every_n_steps"):
        BscritCallback(tmp_path, every_n_steps=0)
    cb = BscritCallback(tmp_path / "x", every_n_steps=1, groups=1)
    with pytest.raises(UsageError, match="groups"):
        fit(tmp_path, [cb], steps=2)
    assert not (tmp_path / "x").exists()
