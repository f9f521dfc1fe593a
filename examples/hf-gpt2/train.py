"""Train the hf-gpt2 example's tiny GPT-2 and save it in three forms bscrit reads.

    python examples/hf-gpt2/train.py                 # 300 steps, about 20 s on 2 CPU cores
    python examples/hf-gpt2/train.py --steps 50 --out /tmp/run

A GPT-2 from a ``GPT2Config`` (random init, byte-level vocabulary of 256: no download), trained
with AdamW (weight decay 0.1 except on biases and LayerNorm weights, as the HF Trainer groups
them; constant learning rate after a linear warm-up) on byte rows of the standard library's
sources (``data.py``). Under ``--out`` it writes:

- ``gpt2-tiny/``: ``save_pretrained`` (config.json, model.safetensors without the tied
  ``lm_head.weight``);
- ``trainer/checkpoint-N/``: the layout of an HF Trainer checkpoint (model.safetensors,
  config.json, optimizer.pt, scheduler.pt, trainer_state.json), written by hand because
  ``transformers.Trainer`` needs the ``accelerate`` package; no training_args.bin;
- ``ckpt.pt``: a plain ``torch.save({"model": state_dict, "optimizer": ..., "step": N})``.

Dropout is off so that a measurement is a deterministic function of the weights and the seed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch.utils.data import default_collate

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from data import make_dataset  # noqa: E402

CONFIG = dict(
    vocab_size=256,  # bytes
    n_positions=64,  # the longest row (data.make_dataset's seq_len)
    n_embd=64,
    n_layer=2,
    n_head=4,
    resid_pdrop=0.0,  # no dropout: the gradient is a function of weights and batch only
    embd_pdrop=0.0,
    attn_pdrop=0.0,
    bos_token_id=0,
    eos_token_id=0,
)


def make_model(seed: int = 0):
    """The tiny GPT-2, randomly initialised from ``CONFIG`` with ``seed``."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(**CONFIG))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay for weight matrices, none for biases and LayerNorm weights (the HF Trainer's rule),
    decayed group first; each parameter once (the tied lm_head is the embedding)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        is_norm = "ln_" in name or name.endswith("bias")
        (no_decay if is_norm else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def train(
    steps: int = 300,
    out: Path = HERE / "run",
    *,
    batch_size: int = 16,
    lr: float = 1e-3,
    weight_decay: float = 0.1,
    warmup: int = 20,
    seed: int = 0,
) -> dict[str, Path]:
    """Train and save the three forms; returns their paths by name."""
    out = Path(out)
    model = make_model(seed)
    ds = make_dataset(seq_len=CONFIG["n_positions"])
    opt = torch.optim.AdamW(param_groups(model, weight_decay), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(ds), generator=gen)
    pos, log = 0, []
    model.train()
    for step in range(1, steps + 1):
        if pos + batch_size > len(order):  # a new epoch: reshuffle
            order, pos = torch.randperm(len(ds), generator=gen), 0
        batch = default_collate([ds[int(i)] for i in order[pos : pos + batch_size]])
        pos += batch_size
        loss = model(**batch).loss  # mean over the non-padding tokens
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 50 == 0 or step == steps:
            log.append({"step": step, "loss": round(loss.item(), 4)})
            print(f"step {step:4d}  loss {loss.item():.3f}", flush=True)

    paths = {
        "save_pretrained": out / "gpt2-tiny",
        "trainer": out / "trainer" / f"checkpoint-{steps}",
    }
    model.save_pretrained(paths["save_pretrained"])
    ck = paths["trainer"]
    model.save_pretrained(ck)
    torch.save(opt.state_dict(), ck / "optimizer.pt")
    torch.save(sched.state_dict(), ck / "scheduler.pt")
    state = {
        "global_step": steps,
        "max_steps": steps,
        "epoch": steps * batch_size / len(ds),
        "train_batch_size": batch_size,
        "log_history": log,
    }
    (ck / "trainer_state.json").write_text(json.dumps(state, indent=2) + "\n")
    paths["torch"] = out / "ckpt.pt"
    torch.save(
        {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": steps}, paths["torch"]
    )
    return paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=300, help="optimizer steps (default 300)")
    ap.add_argument("--out", type=Path, default=HERE / "run", help="output folder")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    paths = train(args.steps, args.out, seed=args.seed)
    for name, p in paths.items():
        print(f"wrote {name}: {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
