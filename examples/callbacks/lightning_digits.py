"""bscrit inside a Lightning run: B*(t) of the digits MLP while it trains (CPU, ~20 s).

The scale-invariant digits network of ``bscrit demo`` (BatchNorm after every weight layer),
SGD + momentum + weight decay, B = 32, 600 steps; ``BscritCallback`` measures every 100 steps
(k = 100 batches) at the new weights, writes ``OUT/step-XXXXXXX.json`` and
``OUT/series.jsonl``, and logs ``bscrit/nsr_raw``, ``bscrit/b_star_raw`` (and the
scale-invariant reading, ``bscrit/*_scale_invariant``) to the CSV logger.

    python examples/callbacks/lightning_digits.py [OUT]      # default OUT: bscrit-lightning
    bscrit predict bscrit-lightning/step-0000600.json         # the last point, in full
"""

from __future__ import annotations

import sys

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader

from bscrit.examples.digits.data import make_dataset
from bscrit.examples.digits.model import make_model
from bscrit.integrations.lightning import BscritCallback


class Digits(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = make_model(width=64)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        return loss  # the callback's default loss: this, with self.log silenced

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4)


def main(out: str = "bscrit-lightning", steps: int = 600, every: int = 100) -> list[dict]:
    torch.set_num_threads(1)
    L.seed_everything(0, verbose=False)
    callback = BscritCallback(out, every_n_steps=every, num_batches=100, groups=10)
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        callbacks=[callback],
        logger=L.pytorch.loggers.CSVLogger(out, name="logs"),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=50,
    )
    trainer.fit(Digits(), DataLoader(make_dataset(), batch_size=32, shuffle=True))
    print(f"{'step':>6} {'NSR':>9} {'B*':>9}  95% interval of B*")
    for r in callback.recorder.rows:
        lo, hi = r["b_star_ci95"]
        hi_s = f"{hi:.0f}" if hi is not None else "unbounded"
        nsr = f"{r['nsr']:.3g}" if r["nsr"] is not None else "inf"
        b = f"{r['b_star']:.0f}" if r["b_star"] is not None else "inf"
        print(f"{r['step']:>6} {nsr:>9} {b:>9}  [{lo:.0f}, {hi_s}]")
    return callback.recorder.rows


if __name__ == "__main__":
    main(*sys.argv[1:2])
