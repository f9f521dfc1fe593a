"""Lightning checkpoints from a real ``lightning.Trainer``: the net under any attribute name
(``self.net``) is found when exactly one prefix makes the keys fit; two fitting prefixes are a
clear error naming ``checkpoint.strip_prefix``; the optimizer and ``global_step`` are read."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

L = pytest.importorskip("lightning")
pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec:FutureWarning")  # lightning's own

from bscrit.errors import CheckpointError  # noqa: E402
from bscrit.load.checkpoints import load_model  # noqa: E402
from bscrit.specfile.document import parse_spec  # noqa: E402

ASSETS = Path(__file__).resolve().parents[1] / "assets"
sys.path.insert(0, str(ASSETS))
import tiny  # noqa: E402


class Module(L.LightningModule):
    """The tiny net as ``self.net``; with ``ema``, a second copy of it as ``self.ema_net``."""

    def __init__(self, ema: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = tiny.make_model()
        self.ema_net = tiny.make_model() if ema else None
        self.criterion = nn.CrossEntropyLoss(weight=torch.ones(3))  # a buffer: criterion.weight

    def training_step(self, batch, _):
        x, y = batch
        return self.criterion(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.net.parameters(), lr=0.01, weight_decay=0.05)


def fit(tmp_path: Path, module: Module, steps: int = 3) -> Path:
    loader = torch.utils.data.DataLoader(tiny.make_dataset(), batch_size=8)
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, loader)
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    return path


def spec(tmp_path: Path, **checkpoint):
    raw = {
        "model": {"factory": str(ASSETS / "tiny.py") + ":make_model"},
        "data": {"factory": str(ASSETS / "tiny.py") + ":make_dataset"},
        "loss": "cross_entropy",
        "batch_size": 8,
    }
    if checkpoint:
        raw["checkpoint"] = checkpoint
    return parse_spec(raw, "spec.yaml", tmp_path)


def same(model: nn.Module, ref: nn.Module) -> bool:
    a, b = model.state_dict(), ref.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_self_net_is_found_with_its_optimizer_and_step(tmp_path):
    module = fit(tmp_path, m := Module())
    model, ckpt = load_model(spec(tmp_path), module)
    assert same(model, m.net)
    assert ckpt.step == 3
    assert ckpt.optimizer.name == "adamw" and ckpt.optimizer.weight_decay == 0.05
    assert ckpt.optimizer_state is not None


def test_two_fitting_prefixes_are_not_guessed(tmp_path):
    path = fit(tmp_path, m := Module(ema=True))
    with pytest.raises(CheckpointError) as info:
        load_model(spec(tmp_path), path)
    msg = info.value.message
    assert "fit the model under 2 prefixes ('ema_net.', 'net.')" in msg
    assert "set checkpoint.strip_prefix" in msg
    model, _ = load_model(spec(tmp_path, path=str(path), strip_prefix="ema_net."))
    assert same(model, m.ema_net) and not same(model, m.net)
