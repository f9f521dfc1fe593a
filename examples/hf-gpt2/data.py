"""The hf-gpt2 example's text: Python's own standard library sources, as byte-level tokens.

Each example is a dict of tensors, as a Hugging Face causal LM takes them: ``input_ids`` (bytes,
so the vocabulary is 256 and no tokenizer is downloaded), ``attention_mask`` (1 on text, 0 on
padding) and ``labels`` (the ids, −100 on padding so the model's loss ignores it). Lines of a fixed
list of files are packed greedily into examples of at most ``seq_len`` bytes, so many examples end
in padding: the model's mean loss is over a different number of tokens in each.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

import torch

#: Files of the standard library that every Python >= 3.10 ships (about 78 kB of source).
FILES = ("textwrap.py", "shlex.py", "string.py", "fnmatch.py", "colorsys.py", "heapq.py")
PAD = 0  # the NUL byte, absent from source files
IGNORE = -100  # labels the loss skips (PyTorch's and transformers' ignore_index)


def _rows(text: bytes, seq_len: int) -> list[bytes]:
    """Whole lines packed greedily into rows of at most ``seq_len`` bytes (long lines split)."""
    rows: list[bytes] = []
    row = b""
    for line in text.splitlines(keepends=True):
        while len(line) > seq_len:  # a line longer than a row fills rows of its own
            if row:
                rows.append(row)
                row = b""
            rows.append(line[:seq_len])
            line = line[seq_len:]
        if len(row) + len(line) > seq_len:
            rows.append(row)
            row = b""
        row += line
    if row:
        rows.append(row)
    return [r for r in rows if r.strip()]


class ByteExamples(torch.utils.data.Dataset):
    """Padded byte rows as ``{input_ids, attention_mask, labels}`` dicts of ``seq_len`` tensors."""

    def __init__(self, rows: list[bytes], seq_len: int) -> None:
        n = len(rows)
        self.input_ids = torch.full((n, seq_len), PAD, dtype=torch.long)
        self.attention_mask = torch.zeros((n, seq_len), dtype=torch.long)
        for i, r in enumerate(rows):
            self.input_ids[i, : len(r)] = torch.tensor(list(r), dtype=torch.long)
            self.attention_mask[i, : len(r)] = 1
        self.labels = self.input_ids.masked_fill(self.attention_mask == 0, IGNORE)

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.input_ids[i],
            "attention_mask": self.attention_mask[i],
            "labels": self.labels[i],
        }


def make_dataset(seq_len: int = 64, files: list[str] | tuple[str, ...] = FILES) -> ByteExamples:
    """The example's dataset: ``files`` of the standard library (``sysconfig``'s ``stdlib``
    folder), in this order, packed into rows of at most ``seq_len`` bytes."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    rows: list[bytes] = []
    for name in files:
        rows += _rows((stdlib / name).read_bytes(), seq_len)
    return ByteExamples(rows, seq_len)
