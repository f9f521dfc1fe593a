"""Data, models and training loops of the pre-registered validation (evaluation data only).

Nothing here was used to choose any of bscrit's defaults (docs/validation.md, "Pre-registered
validation"). Everything is generated or read locally and deterministically:

- **teacher**: a teacher-student classification task. x ~ N(0, I_32); a fixed random teacher
  (32 → 64 tanh → 8 logits, seed 2026) gives class probabilities softmax(logits); the label is
  *sampled* from them (so the Bayes error is well above 0). 4096 train / 2048 test examples.
- **mnist1d-v2**: MNIST-1D (the ``mnist1d`` package) generated with other parameters than the
  calibration data (seed 2026, 6000 samples, stronger correlated and i.i.d. noise, more shear):
  4800 train / 1200 test signals of length 40.
- **prose**: the package descriptions (the ``METADATA`` files of the installed distributions, the
  text after the headers: READMEs in prose and Markdown), sorted by distribution name, every 10th
  distribution held out; tokenized with a byte-level BPE (``tokenizers``) trained here on the
  training split only (vocabulary 1024). The installed packages differ between machines, so the
  corpus is identified by the list of distributions and a SHA-256 (both recorded).

Models: a scale-invariant MLP (every trainable weight feeds a BatchNorm without affine, fixed head
+ BatchNorm on the logits) and an ordinary one (affine BN, biases, trainable head), a 1-D CNN with
BatchNorm, and a causal transformer LM with tied embeddings.
"""

from __future__ import annotations

import functools
import hashlib
import math
import random
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset, TensorDataset

# ----------------------------------------------------------------------------------------------
# classification data
# ----------------------------------------------------------------------------------------------


@functools.cache
def _teacher_arrays(seed: int = 2026) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    d, h, c = 32, 64, 8
    w1 = torch.randn(d, h, generator=g) / math.sqrt(d)
    w2 = torch.randn(h, c, generator=g) * (5.0 / math.sqrt(h))
    x = torch.randn(4096 + 2048, d, generator=g)
    probs = torch.softmax(torch.tanh(x @ w1 * 2.0) @ w2 * 2.0, dim=1)
    y = torch.multinomial(probs, 1, generator=g).squeeze(1)
    return x[:4096], y[:4096], x[4096:], y[4096:]


@functools.cache
def _mnist1d_v2_arrays() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed, args.num_samples = 2026, 6000
    args.corr_noise_scale, args.iid_noise_scale, args.shear_scale = 0.35, 0.05, 0.9
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        d = make_dataset(args)  # generated locally, no download
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    t = lambda a, dt: torch.tensor(np.asarray(a), dtype=dt)  # noqa: E731
    return (t(d["x"], torch.float32), t(d["y"], torch.int64),
            t(d["x_test"], torch.float32), t(d["y_test"], torch.int64))  # fmt: skip


def load_tensors(name: str, split: str) -> tuple[Tensor, Tensor]:
    """``(x, y)`` of ``name`` ("teacher" or "mnist1d-v2"), ``split`` "train" or "test"."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    arrays = {"teacher": _teacher_arrays, "mnist1d-v2": _mnist1d_v2_arrays}[name]()
    return arrays[:2] if split == "train" else arrays[2:]


def make_dataset(name: str, split: str = "train") -> TensorDataset:
    """Spec factory: the data set ``name`` as a TensorDataset."""
    return TensorDataset(*load_tensors(name, split))


# ----------------------------------------------------------------------------------------------
# classification models
# ----------------------------------------------------------------------------------------------


def make_mlp(name: str, width: int, affine: bool, seed: int = 0) -> nn.Sequential:
    """Two hidden Linear→BN→ReLU blocks; scale-invariant unless ``affine`` (module docstring)."""
    d_in, classes = (32, 8) if name == "teacher" else (40, 10)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layers: list[nn.Module] = []
        d = d_in
        for _ in range(2):
            layers += [nn.Linear(d, width, bias=affine), nn.BatchNorm1d(width, affine=affine),
                       nn.ReLU()]  # fmt: skip
            d = width
        head = nn.Linear(d, classes, bias=affine)
        layers.append(head)
        if not affine:
            head.weight.requires_grad_(False)  # a fixed random head, then BN fixes the scale
            layers.append(nn.BatchNorm1d(classes, affine=False))
    return nn.Sequential(*layers)


class CNN1d(nn.Module):
    """Three Conv1d→BN→ReLU layers (16, 32, 32 channels; strides 1, 2, 2) and a linear head."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv1d(1, 16, 5, padding=2), nn.BatchNorm1d(16), nn.ReLU(),
            nn.Conv1d(16, 32, 5, stride=2, padding=2), nn.BatchNorm1d(32), nn.ReLU(),
            nn.Conv1d(32, 32, 3, stride=2, padding=1), nn.BatchNorm1d(32), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Linear(32 * 10, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x.unsqueeze(1)).flatten(1))


def make_classifier(name: str, arch: str, width: int = 96, seed: int = 0) -> nn.Module:
    """Spec factory: ``arch`` "si" (scale-invariant MLP), "affine" (ordinary MLP) or "cnn"."""
    if arch == "cnn":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return CNN1d()
    return make_mlp(name, width, affine=arch == "affine", seed=seed)


def train_classifier(
    name: str, arch: str, B: int, lr: float, wd: float, epochs: int, decay_epoch: int, seed: int,
    width: int = 96, save_at: int | None = None, save_to: Path | None = None,
) -> dict[str, float]:  # fmt: skip
    """SGD (coupled weight decay), random reshuffling, last incomplete batch dropped, LR ×0.1
    after ``decay_epoch``; the final test error and loss in eval mode. With ``save_at``, the
    model and optimizer after that epoch go to ``save_to`` (a torch.save dict)."""
    x, y = load_tensors(name, "train")
    xt, yt = load_tensors(name, "test")
    model = make_classifier(name, arch, width, seed)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr,
                          weight_decay=wd)  # fmt: skip
    gen = torch.Generator().manual_seed(1_000_003 * seed + B)
    n = len(y)
    diverged = False
    for epoch in range(1, epochs + 1):
        for g in opt.param_groups:
            g["lr"] = lr * (0.1 if epoch > decay_epoch else 1.0)
        model.train()
        perm = torch.randperm(n, generator=gen)
        for s in range(n // B):
            idx = perm[s * B : (s + 1) * B]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            if not torch.isfinite(loss):
                diverged = True
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if diverged:
            break
        if save_at == epoch and save_to is not None:
            save_to.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                        "epoch": epoch, "step": epoch * (n // B)}, save_to)  # fmt: skip
    model.eval()
    with torch.no_grad():
        out = model(xt)
        err = float((out.argmax(1) != yt).float().mean())
        tl = float(F.cross_entropy(out, yt))
    if diverged or not math.isfinite(tl):
        return {"test_error": 1.0, "test_loss": float("inf"), "diverged": True}
    return {"test_error": err, "test_loss": tl, "diverged": False}


# ----------------------------------------------------------------------------------------------
# prose corpus, BPE, LM
# ----------------------------------------------------------------------------------------------

CONTEXT = 64
VOCAB = 1024


def _description(text: str) -> str:
    """The body of a METADATA file (after the first blank line: the headers end there)."""
    head, _, body = text.partition("\n\n")
    return body.strip()


@functools.cache
def prose_corpus(max_chars: int = 1_200_000) -> dict:
    """Train/held-out text of the installed distributions' descriptions, and their identity."""
    import importlib.metadata as md

    seen: dict[str, str] = {}
    for dist in md.distributions():
        name = (dist.metadata["Name"] or "").lower()
        text = dist.read_text("METADATA") or ""
        body = _description(text)
        if name and len(body) > 400 and name not in seen:
            seen[name] = body
    names = sorted(seen)
    train, held, total = [], [], 0
    for i, nm in enumerate(names):
        (held if i % 10 == 9 else train).append(seen[nm])
        total += len(seen[nm])
        if total >= max_chars:
            break
    tr, ho = "\n\n".join(train), "\n\n".join(held)
    sha = hashlib.sha256((tr + "\0" + ho).encode()).hexdigest()
    return {
        "train": tr,
        "heldout": ho,
        "sha256": sha,
        "distributions": names[: len(train) + len(held)],
    }


@functools.cache
def tokenized(max_chars: int = 1_200_000) -> tuple[Tensor, Tensor, str]:
    """(train ids, held-out ids, tokenizer sha): byte-level BPE trained on the training split."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    c = prose_corpus(max_chars)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    chunks = c["train"].split("\n\n")
    tok.train_from_iterator(chunks, trainer=trainer)
    enc = lambda s: torch.tensor(tok.encode(s).ids, dtype=torch.int16)  # noqa: E731
    sha = hashlib.sha256(tok.to_str().encode()).hexdigest()
    return enc(c["train"]), enc(c["heldout"]), sha


class WindowData(Dataset):
    """Spec data: example i = the (CONTEXT + 1)-token window starting at i of the training ids."""

    def __init__(self, split: str = "train") -> None:
        tr, ho, _ = tokenized()
        self.ids = tr if split == "train" else ho

    def __len__(self) -> int:
        return int(self.ids.numel()) - CONTEXT

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        w = self.ids[i : i + CONTEXT + 1].long()
        return w[:-1], w[1:]


def make_windows(split: str = "train") -> WindowData:
    return WindowData(split)


class Block(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc, self.out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        sh = lambda z: z.view(b, t, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        a = F.scaled_dot_product_attention(sh(q), sh(k), sh(v), is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, d))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class ProseLM(nn.Module):
    """Causal pre-LN transformer, learned positions, output head tied to the token embedding."""

    def __init__(self, d: int, layers: int, heads: int = 4) -> None:
        super().__init__()
        self.tok = nn.Embedding(VOCAB, d)
        self.pos = nn.Parameter(torch.zeros(CONTEXT, d))
        self.blocks = nn.ModuleList([Block(d, heads) for _ in range(layers)])
        self.ln = nn.LayerNorm(d)
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.dim() >= 2 and "ln" not in name:
                resid = name.endswith(("proj.weight", "out.weight"))
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * layers) if resid else 0.02)

    def forward(self, x: Tensor) -> Tensor:
        h = self.tok(x) + self.pos[: x.shape[1]]
        for blk in self.blocks:
            h = blk(h)
        return self.ln(h) @ self.tok.weight.T


def make_lm(d: int, layers: int, seed: int = 0) -> ProseLM:
    """Spec factory of the LM."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ProseLM(d, layers)


def lm_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy over the predicted tokens (nats/token)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def lm_param_groups(model: nn.Module, wd: float) -> list[dict]:
    """AdamW groups: matrices decay, biases/LayerNorm/positions do not (a no-decay group)."""
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and n != "pos"]
    rest = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and n != "pos")]
    return [{"params": decay, "weight_decay": wd}, {"params": rest, "weight_decay": 0.0}]


def sample_windows(ids: Tensor, B: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """B random windows (with replacement across batches) of the token ids."""
    starts = torch.randint(int(ids.numel()) - CONTEXT, (B,), generator=gen)
    w = ids[starts.view(-1, 1) + torch.arange(CONTEXT + 1).view(1, -1)].long()
    return w[:, :-1], w[:, 1:]


@torch.no_grad()
def heldout_loss(model: nn.Module, windows: int = 512) -> float:
    """Mean loss on fixed held-out windows (evenly spaced starts)."""
    _, ho, _ = tokenized()
    starts = torch.linspace(0, ho.numel() - CONTEXT - 2, windows).long()
    w = ho[starts.view(-1, 1) + torch.arange(CONTEXT + 1).view(1, -1)].long()
    was = model.training
    model.eval()
    tot = sum(float(lm_loss(model(w[i : i + 128, :-1]), w[i : i + 128, 1:])) for i in
              range(0, windows, 128)) / math.ceil(windows / 128)  # fmt: skip
    model.train(was)
    return tot


def make_lm_loss():
    """Spec loss factory: the mean cross-entropy over the B × 64 predicted tokens."""
    return lm_loss
