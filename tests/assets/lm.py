"""Tiny token models and padded dict examples for the tests of dict batches, ``loss: model`` and
micro-batches (imported by file path from specs; transformers only where GPT-2 is asked for)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

VOCAB = 256


class Tokens(torch.utils.data.Dataset):
    """n padded sequences as dict examples: ``input_ids``, ``attention_mask`` and ``labels``
    (−100 on the padding), of lengths drawn from [min_len, length] (deterministic)."""

    def __init__(
        self, n: int = 64, length: int = 12, min_len: int = 2, seed: int = 0, vocab: int = VOCAB
    ) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, vocab, (n, length), generator=g)
        lengths = torch.randint(min_len, length + 1, (n,), generator=g)
        self.mask = (torch.arange(length) < lengths[:, None]).long()
        self.labels = self.ids.masked_fill(self.mask == 0, -100)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i], "labels": self.labels[i]}


def make_tokens(n: int = 64, length: int = 12, min_len: int = 2, path: str | None = None):
    """The padded dict examples; with ``path``, the token ids are read from that file."""
    ds = Tokens(n, length, min_len)
    if path is not None:
        ds.ids = torch.load(path, weights_only=True)[:n, :length]
        ds.labels = ds.ids.masked_fill(ds.mask == 0, -100)
    return ds


def make_pairs(n: int = 64, length: int = 12, min_len: int = 2):
    """The same sequences as ``(input_ids, labels)`` pairs (a TensorDataset)."""
    ds = Tokens(n, length, min_len)
    return torch.utils.data.TensorDataset(ds.ids, ds.labels)


class Tagger(nn.Module):
    """Embedding → Linear: a token classifier whose own loss is the mean cross-entropy over the
    labels that are not −100 (no shift), returned in a dict as ``{"loss", "logits"}``."""

    def __init__(self, vocab: int = VOCAB, dim: int = 8) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.out = nn.Linear(dim, vocab)

    def forward(self, input_ids, attention_mask=None, labels=None):
        logits = self.out(torch.tanh(self.emb(input_ids)))
        result = {"logits": logits}
        if labels is not None:
            result["loss"] = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)
            )
        return result


class MLPTagger(nn.Module):
    """Linear layers only (the per-example estimator's modules): one-hot tokens → logits."""

    def __init__(self, vocab: int = VOCAB, dim: int = 8) -> None:
        super().__init__()
        self.vocab = vocab
        self.hidden = nn.Linear(vocab, dim)
        self.out = nn.Linear(dim, vocab)

    def forward(self, input_ids, attention_mask=None, labels=None):
        logits = self.out(torch.tanh(self.hidden(F.one_hot(input_ids, self.vocab).float())))
        loss = F.cross_entropy(logits.reshape(-1, self.vocab), labels.reshape(-1))
        return {"loss": loss, "logits": logits}


def make_tagger(dim: int = 8) -> nn.Module:
    return Tagger(dim=dim)


def make_gpt2(n_embd: int = 16, n_layer: int = 1, n_positions: int = 32) -> nn.Module:
    """A tiny GPT-2 (random init, no dropout: micro-batches then reproduce the batch exactly)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=VOCAB, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer, n_head=2,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    torch.manual_seed(0)
    return GPT2LMHeadModel(config)
