"""Train the scale-invariant digits MLP with SGD + weight decay at a constant LR to equilibrium.

Example::

    python examples/digits/train.py --out examples/digits/ckpt.pt   # 1000 epochs, ~30 s on CPU
    python -m bscrit.examples.digits.train --save-every 100 --save-from 600  # same code

The log prints, every few epochs, the train loss/accuracy, the test accuracy, ``R = ‖x‖²`` of the
scale-invariant weights and the equilibrium residual of [LMA21] eq. (11) (docs/theory.md §3)::

    ρ = (2 − ηλ) λ R / (η · mean‖g‖²) − 1,

where mean‖g‖² is the average squared norm of the (weight-decay-free) batch gradients of the
scale-invariant weights over the epoch, an estimate of ``G + N^B``. At equilibrium R is flat and
ρ ≈ 0. With random reshuffling the steps of one epoch are not independent, so ρ is a rough check,
not a measurement (``bscrit measure`` does that properly at the saved checkpoint).

Checkpoints are ``{"model": state_dict, "optimizer": ..., "epoch": ..., "batch_size": ...,
"config": {...}}``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

#: Default output: ``ckpt.pt`` in the current directory (the spec in examples/digits expects it
#: beside itself: run from there, or pass --out).
HERE = Path.cwd()


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy and accuracy in eval mode (BatchNorm running statistics)."""
    was_training = model.training
    model.eval()
    logits = model(x)
    loss = F.cross_entropy(logits, y).item()
    acc = (logits.argmax(1) == y).float().mean().item()
    model.train(was_training)
    return loss, acc


def _print_header(
    width: int,
    affine: bool,
    n: int,
    batch_size: int,
    steps_per_epoch: int,
    lr: float,
    weight_decay: float,
    momentum: float,
) -> None:
    print(
        f"digits MLP width={width} affine={affine}  n={n} B={batch_size} "
        f"steps/epoch={steps_per_epoch} lr={lr} wd={weight_decay} momentum={momentum}"
    )
    print(
        f"{'epoch':>5} {'lr':>8} {'train_loss':>10} {'train_acc':>9} {'test_acc':>8} "
        f"{'R':>9} {'mean|g|^2':>10} {'rho':>7} {'sec':>5}"
    )


def _print_line(rec: dict[str, float], seconds: float) -> None:
    print(
        f"{rec['epoch']:5d} {rec['lr']:8.4g} {rec['train_loss']:10.4f} {rec['train_acc']:9.4f} "
        f"{rec['test_acc']:8.4f} {rec['R']:9.3f} {rec['mean_sq_grad']:10.4g} {rec['rho']:+7.3f} "
        f"{seconds:5.1f}"
    )


def _epoch(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    si_params: list[torch.nn.Parameter],
    gen: torch.Generator,
    batch_size: int,
) -> dict[str, float]:
    """One reshuffled epoch of SGD (full batches only); R, the mean squared gradient of the
    scale-invariant tensors, the equilibrium residual ρ ([LMA21] eq. 11, no momentum) and the
    losses and accuracies after it."""
    (x_tr, y_tr), (x_te, y_te) = train, test
    n = len(y_tr)
    steps_per_epoch = n // batch_size
    perm = torch.randperm(n, generator=gen)
    sq = 0.0
    for s in range(steps_per_epoch):
        idx = perm[s * batch_size : (s + 1) * batch_size]
        loss = F.cross_entropy(model(x_tr[idx]), y_tr[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            sq += float(sum(p.grad.pow(2).sum() for p in si_params)) if si_params else 0.0
        opt.step()
    with torch.no_grad():
        r = float(sum(p.pow(2).sum() for p in si_params)) if si_params else float("nan")
    msg = sq / steps_per_epoch
    group = opt.param_groups[0]
    cur_lr, lam = group["lr"], group["weight_decay"]
    rho = (2 - cur_lr * lam) * lam * r / (cur_lr * msg) - 1 if msg > 0 else float("nan")
    tr_loss, tr_acc = evaluate(model, x_tr, y_tr)
    te_loss, te_acc = evaluate(model, x_te, y_te)
    return dict(
        R=r,
        mean_sq_grad=msg,
        rho=rho,
        train_loss=tr_loss,
        train_acc=tr_acc,
        test_loss=te_loss,
        test_acc=te_acc,
    )


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` into a temporary file created exclusively beside ``path``, then renamed over
    it: an interrupted save leaves no half checkpoint, and a link at ``path`` is replaced, never
    followed (nothing outside the folder is written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            mask = os.umask(0)
            os.umask(mask)
            os.fchmod(f.fileno(), 0o666 & ~mask)  # as open() would give, not mkstemp's 0600
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def train(
    out: str | Path | None = HERE / "ckpt.pt",
    epochs: int = 1000,
    batch_size: int = 32,
    lr: float = 0.1,
    weight_decay: float = 5e-4,
    momentum: float = 0.0,
    seed: int = 0,
    width: int = 64,
    affine: bool = False,
    save_every: int | None = None,
    save_from: int | None = None,
    decay_epoch: int | None = None,
    decay_factor: float = 0.1,
    log_every: int = 50,
    verbose: bool = True,
) -> dict[str, Any]:
    """Train the digits MLP with SGD (random reshuffling, full batches only) and save checkpoints.

    Args:
        out: final checkpoint path (None: do not save). Phase checkpoints go beside it as
            ``{stem}_epoch{E:04d}{suffix}``.
        epochs: number of epochs.
        batch_size: B (the last incomplete batch of each reshuffled epoch is dropped).
        lr: learning rate η (constant unless ``decay_epoch`` is set).
        weight_decay: coupled weight decay λ (PyTorch SGD ``weight_decay``).
        momentum: SGD momentum (the equilibrium formula in the log assumes 0).
        seed: seeds the model initialisation and the batch order.
        width: hidden width.
        affine: False → scale-invariant network; True → ordinary network (see model.py).
        save_every: save an extra checkpoint every this many epochs (None: none) ...
        save_from: ... starting at this epoch (default: ``save_every``).
        decay_epoch: multiply the LR by ``decay_factor`` after this many epochs (None: never).
        decay_factor: LR decay factor.
        log_every: print a log line every this many epochs (and at the first and last).
        verbose: print the log.

    Returns:
        Dict with final ``train_loss``, ``train_acc``, ``test_loss``, ``test_acc``, ``history``
        (per-epoch dicts: epoch, lr, R, mean_sq_grad, rho, train_loss, train_acc, test_loss,
        test_acc), ``R_history`` (R per epoch),
        ``checkpoints`` (paths written) and ``seconds``.
    """
    from bscrit.examples.digits import data as data_mod
    from bscrit.examples.digits import model as model_mod

    x_tr, y_tr = data_mod.load_tensors("train")
    x_te, y_te = data_mod.load_tensors("test")
    model = model_mod.make_model(width=width, affine=affine, seed=seed)
    model.train()
    si_names = set(model_mod.scale_invariant_names(model))
    si_params = [p for n, p in model.named_parameters() if n in si_names]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    n = len(y_tr)
    steps_per_epoch = n // batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"batch_size {batch_size} exceeds the {n} training examples")
    out_path = Path(out) if out is not None else None
    config = dict(
        dataset="digits",
        width=width,
        affine=affine,
        seed=seed,
        lr=lr,
        weight_decay=weight_decay,
        momentum=momentum,
        batch_size=batch_size,
        epochs=epochs,
        decay_epoch=decay_epoch,
        decay_factor=decay_factor,
    )
    saved: list[str] = []

    def save(path: Path, epoch: int) -> None:
        state = {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "epoch": epoch,
            "step": epoch * steps_per_epoch,  # the training step: how far apart checkpoints are
            "batch_size": batch_size,
            "config": config,
        }
        save_atomic(state, path)
        saved.append(str(path))

    start = save_from if save_from is not None else save_every
    history: list[dict[str, float]] = []
    t0 = time.perf_counter()
    if verbose:
        _print_header(width, affine, n, batch_size, steps_per_epoch, lr, weight_decay, momentum)
    for epoch in range(1, epochs + 1):
        cur_lr = lr * (decay_factor if decay_epoch is not None and epoch > decay_epoch else 1.0)
        for group in opt.param_groups:
            group["lr"] = cur_lr
        rec = _epoch(model, opt, (x_tr, y_tr), (x_te, y_te), si_params, gen, batch_size)
        rec = {"epoch": epoch, "lr": cur_lr} | rec
        history.append(rec)
        if verbose and (epoch == 1 or epoch % log_every == 0 or epoch == epochs):
            _print_line(rec, time.perf_counter() - t0)
        due = save_every and epoch >= start and (epoch - start) % save_every == 0
        if out_path is not None and due:
            save(out_path.with_name(f"{out_path.stem}_epoch{epoch:04d}{out_path.suffix}"), epoch)
    if out_path is not None:
        save(out_path, epochs)
    final = history[-1]
    return dict(
        train_loss=final["train_loss"],
        train_acc=final["train_acc"],
        test_loss=final["test_loss"],
        test_acc=final["test_acc"],
        history=history,
        R_history=[h["R"] for h in history],
        checkpoints=saved,
        seconds=time.perf_counter() - t0,
        config=config,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="Train the scale-invariant digits MLP (SGD + weight decay, constant LR) to "
        "equilibrium and save a checkpoint for `bscrit measure`."
    )
    p.add_argument("--out", default=str(HERE / "ckpt.pt"), help="checkpoint path")
    p.add_argument("--epochs", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.1, help="learning rate η")
    p.add_argument("--weight-decay", type=float, default=5e-4, help="coupled weight decay λ")
    p.add_argument("--momentum", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--affine", action="store_true", help="ordinary (non-scale-invariant) variant")
    p.add_argument("--save-every", type=int, default=None, help="extra checkpoint every E epochs")
    p.add_argument("--save-from", type=int, default=None, help="first epoch of extra checkpoints")
    p.add_argument("--decay-epoch", type=int, default=None, help="LR × decay-factor after it")
    p.add_argument("--decay-factor", type=float, default=0.1)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (tiny model: 1)")
    p.add_argument("--json", default=None, help="also write the summary + history as JSON here")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    res = train(
        out=a.out,
        epochs=a.epochs,
        batch_size=a.batch_size,
        lr=a.lr,
        weight_decay=a.weight_decay,
        momentum=a.momentum,
        seed=a.seed,
        width=a.width,
        affine=a.affine,
        save_every=a.save_every,
        save_from=a.save_from,
        decay_epoch=a.decay_epoch,
        decay_factor=a.decay_factor,
        log_every=a.log_every,
    )
    print(
        f"final: train_acc={res['train_acc']:.4f} test_acc={res['test_acc']:.4f} "
        f"train_loss={res['train_loss']:.4f} test_loss={res['test_loss']:.4f} "
        f"({res['seconds']:.1f}s); wrote {', '.join(res['checkpoints']) or 'nothing'}"
    )
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1, default=float))
    return 0 if math.isfinite(res["train_loss"]) else 3


if __name__ == "__main__":
    sys.exit(main())
