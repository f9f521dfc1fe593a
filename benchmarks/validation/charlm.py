"""Character-level corpus from Python's own standard library, and a tiny causal transformer LM.

Used by ``adaptive_sweep.py``. Everything is offline and deterministic:

- **Corpus** (:func:`load_corpus`): the bytes of the sorted ``<stdlib>/*.py`` files, concatenated
  (each file followed by a NUL separator) until ``max_bytes``. Every ``heldout_every``-th file (in
  sorted order) goes to the held-out split, the others to the training split, so the split is by
  file and both splits cover the whole alphabet of module names. Vocabulary: the 256 byte values.
  The stdlib differs between Python versions, so the corpus is identified by the Python version
  and a SHA-256 of its bytes (both recorded in the results).
- **Examples** are windows of ``context + 1`` consecutive bytes (input = first ``context``, target
  = last ``context``); a batch of B sequences is B window start positions drawn uniformly *without
  replacement* from the n = len(train) − context possible ones. The loss is the mean over the
  B·context predicted tokens (nats/char).
- **Model** (:class:`TinyLM`): byte embedding + learned positions, ``layers`` pre-LayerNorm blocks
  (causal multi-head self-attention via ``scaled_dot_product_attention``, GELU MLP ×4), a final
  LayerNorm and an untied linear head; no dropout; GPT-2-style init (std 0.02, residual
  projections scaled by 1/√(2·layers)) under a fixed seed.
"""

from __future__ import annotations

import hashlib
import math
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

VOCAB = 256


@dataclass(frozen=True)
class Corpus:
    train: Tensor  # uint8 → long on use; 1-D
    heldout: Tensor
    files_train: int
    files_heldout: int
    sha256: str
    python: str

    def describe(self) -> dict:
        return {
            "source": "sorted(<stdlib>/*.py), bytes, NUL between files",
            "python": self.python,
            "sha256": self.sha256,
            "train_bytes": int(self.train.numel()),
            "heldout_bytes": int(self.heldout.numel()),
            "files_train": self.files_train,
            "files_heldout": self.files_heldout,
        }


def load_corpus(max_bytes: int = 1_500_000, heldout_every: int = 10) -> Corpus:
    """The stdlib corpus, split by file (every ``heldout_every``-th file is held out)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(root.glob("*.py"))
    chunks_tr: list[bytes] = []
    chunks_ho: list[bytes] = []
    total = 0
    for i, f in enumerate(files):
        data = f.read_bytes() + b"\0"
        if total + len(data) > max_bytes:
            data = data[: max_bytes - total]
        (chunks_ho if i % heldout_every == heldout_every - 1 else chunks_tr).append(data)
        total += len(data)
        if total >= max_bytes:
            break
    tr, ho = b"".join(chunks_tr), b"".join(chunks_ho)
    sha = hashlib.sha256(tr + b"|" + ho).hexdigest()
    to_t = lambda b: torch.frombuffer(bytearray(b), dtype=torch.uint8).clone()  # noqa: E731
    return Corpus(
        train=to_t(tr),
        heldout=to_t(ho),
        files_train=len(chunks_tr),
        files_heldout=len(chunks_ho),
        sha256=sha,
        python=sys.version.split()[0],
    )


def num_windows(text: Tensor, context: int) -> int:
    """n: the number of distinct (context + 1)-byte windows of ``text``."""
    return int(text.numel()) - context


def windows(text: Tensor, starts: Tensor, context: int) -> tuple[Tensor, Tensor]:
    """(inputs, targets), each len(starts) × context, long."""
    idx = starts.view(-1, 1) + torch.arange(context + 1).view(1, -1)
    w = text[idx].long()
    return w[:, :-1], w[:, 1:]


def sample_starts(n: int, batch: int, gen: torch.Generator) -> Tensor:
    """B distinct window starts out of n, uniformly (without replacement within the batch)."""
    if batch * 20 < n:  # rejection-free in practice: draw, and redraw only on a collision
        while True:
            s = torch.randint(n, (batch,), generator=gen)
            if torch.unique(s).numel() == batch:
                return s
    return torch.randperm(n, generator=gen)[:batch]


class Block(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc = nn.Linear(d, 4 * d)
        self.out = nn.Linear(4 * d, d)

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        sh = lambda z: z.view(b, t, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        a = F.scaled_dot_product_attention(sh(q), sh(k), sh(v), is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, d))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class TinyLM(nn.Module):
    """Byte-level causal transformer: embeddings, pre-LN blocks, final LN, untied head."""

    def __init__(self, d: int = 64, layers: int = 2, heads: int = 4, context: int = 64) -> None:
        super().__init__()
        self.context = context
        self.tok = nn.Embedding(VOCAB, d)
        self.pos = nn.Parameter(torch.zeros(context, d))
        self.blocks = nn.ModuleList([Block(d, heads) for _ in range(layers)])
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, VOCAB)
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
        return self.head(self.ln(h))


def lm_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy over all predicted tokens of the batch (nats/char)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def make_model(seed: int, d: int, layers: int, heads: int, context: int) -> TinyLM:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return TinyLM(d=d, layers=layers, heads=heads, context=context)


@torch.no_grad()
def evaluate(model: nn.Module, inputs: Tensor, targets: Tensor, chunk: int = 256) -> float:
    """Mean loss (nats/char) over fixed held-out windows."""
    was = model.training
    model.eval()
    tot, cnt = 0.0, 0
    for i in range(0, inputs.shape[0], chunk):
        x, y = inputs[i : i + chunk], targets[i : i + chunk]
        tot += float(lm_loss(model(x), y)) * y.numel()
        cnt += y.numel()
    model.train(was)
    return tot / cnt
