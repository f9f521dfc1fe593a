"""The error of bf16 measurements against fp32 on the same batches (``--precision``).

At one checkpoint per model, ``bscrit.engine.loop.measure_model`` runs three times on the same
k batches (same seed, same index rows): fp32 (the reference), ``bf16-autocast`` (torch.autocast
in bf16, float32 weights) and ``bf16-weights`` (a bf16 copy of the model, inputs cast as FSDP2's
``cast_forward_inputs`` does; gradients cast to float32 before the sums). The table gives G, N and
NSR = N/G over all trainable parameters, their relative errors against fp32, and the NSR error as
a fraction of the fp32 run's own 95% jackknife half-width (below 1: bf16 moves NSR less than the
sampling error of the measurement does).

Models (CPU, no download):

- ``digits``: the scale-invariant digits MLP of ``examples/digits`` (sklearn's 8×8 digits), after
  ``--train-steps`` of SGD (lr 0.1, B = 32, weight decay 5e-4).
- ``charlm``: a tiny causal transformer LM (2 pre-norm layers, d = 64, tied embedding) on bytes
  of Python's standard library sources (64-byte rows), after ``--train-steps`` of AdamW (lr 3e-3,
  B = 16).

Usage::

    python benchmarks/bf16_error.py --out benchmarks/precision_results/bf16.md   # ~2 min here
    python benchmarks/bf16_error.py --device cuda
"""

from __future__ import annotations

import argparse
import sys
import sysconfig
import time
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bscrit.engine.loop import measure_model
from bscrit.examples.digits.data import make_dataset
from bscrit.examples.digits.model import make_model
from bscrit.stats.estimators import noise_stats
from bscrit.stats.summary import set_sums

GROUPS = 10
PRECISIONS = {"fp32": {}, "bf16-autocast": {"amp": "bf16"}, "bf16-weights": {"weights": "bf16"}}
FILES = ("textwrap.py", "shlex.py", "string.py", "fnmatch.py", "colorsys.py", "heapq.py")


class CharLM(nn.Module):
    """Byte-level causal transformer: embedding (tied to the head), 2 pre-norm layers, d = 64."""

    def __init__(self, seq_len: int = 64, d: int = 64, layers: int = 2, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.emb = nn.Embedding(256, d)
        self.pos = nn.Parameter(torch.randn(seq_len, d) * 0.02)
        layer = nn.TransformerEncoderLayer(
            d, 4, 2 * d, dropout=0.0, batch_first=True, norm_first=True
        )
        self.body = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)

    def forward(self, ids: Tensor) -> Tensor:
        t = ids.shape[1]
        mask = torch.ones(t, t, dtype=torch.bool, device=ids.device).triu(1)
        h = self.body(self.emb(ids) + self.pos[:t], mask=mask, is_causal=True)
        return self.norm(h) @ self.emb.weight.T


def lm_loss(out: Tensor, y: Tensor) -> Tensor:
    return nn.functional.cross_entropy(out.flatten(0, 1), y.flatten())


def byte_rows(seq_len: int = 64) -> TensorDataset:
    """Non-overlapping (seq_len + 1)-byte windows of the standard library files: (x, next bytes)."""
    lib = Path(sysconfig.get_paths()["stdlib"])
    data = b"".join((lib / f).read_bytes() for f in FILES)
    ids = torch.tensor(list(data), dtype=torch.long)
    n = (len(ids) - 1) // (seq_len + 1)
    rows = ids[: n * (seq_len + 1)].view(n, seq_len + 1)
    return TensorDataset(rows[:, :-1].contiguous(), rows[:, 1:].contiguous())


def checkpoint(
    name: str, steps: int, device: torch.device
) -> tuple[nn.Module, object, object, int]:
    """(model after ``steps`` training steps, dataset, loss, B)."""
    gen = torch.Generator().manual_seed(0)
    if name == "digits":
        model, data, loss, b = make_model(width=64, affine=False, seed=0), make_dataset(), None, 32
        loss = nn.functional.cross_entropy
        params = [p for p in model.parameters() if p.requires_grad]
        opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=0.1, weight_decay=5e-4)
    else:
        model, data, loss, b = CharLM(), byte_rows(), lm_loss, 16
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
    model = model.to(device)
    x_all, y_all = (t.to(device) for t in data.tensors)
    for _ in range(steps):
        idx = torch.randint(0, len(x_all), (b,), generator=gen).to(device)
        opt.zero_grad(set_to_none=True)
        loss(model(x_all[idx]), y_all[idx]).backward()
        opt.step()
    return model, TensorDataset(x_all, y_all), loss, b


def measure(model, data, loss, b, k, seed, device, kw) -> dict[str, float]:  # noqa: ANN001
    t0 = time.perf_counter()
    raw = measure_model(model, data, loss, batch_size=b, num_batches=k, groups=GROUPS,
                        seed=seed, device=device, **kw)  # fmt: skip
    s = noise_stats(set_sums(raw.tensors))
    lo, hi = s.nsr_ci95
    return {"G": s.G.value, "N": s.N.value, "NSR": s.nsr, "half": (hi - lo) / 2,
            "t": time.perf_counter() - t0}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--models", default="digits,charlm")
    ap.add_argument("--batches", type=int, default=200, help="k batches per measurement")
    ap.add_argument("--seeds", type=int, default=2, help="batch seeds (each: its own k batches)")
    ap.add_argument("--train-steps", type=int, default=200)
    ap.add_argument("--out", type=Path, help="also write the table here (markdown)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    lines = [
        f"# bf16 against fp32 on the same batches: k = {args.batches} batches, m = {GROUPS} "
        f"groups, {device}, {torch.get_num_threads()} thread(s), torch {torch.__version__}; "
        f"checkpoints after {args.train_steps} training steps",
        "",
        "Command: `python benchmarks/bf16_error.py "
        + " ".join(a for a in (argv if argv is not None else sys.argv[1:]) if a)
        + "`",
        "",
        "| model | seed | precision | G | N | NSR | G rel. err | N rel. err | NSR rel. err "
        "| NSR err / fp32 95% half-width | seconds |",
        "|" + "---|" * 11,
    ]
    print("\n".join(lines), flush=True)
    for name in args.models.split(","):
        model, data, loss, b = checkpoint(name, args.train_steps, device)
        for seed in range(args.seeds):
            ref = None
            for prec, kw in PRECISIONS.items():
                r = measure(model, data, loss, b, args.batches, seed, device, kw)
                ref = ref or r
                err = {q: r[q] / ref[q] - 1 for q in ("G", "N", "NSR")}
                line = (
                    f"| {name} (B = {b}) | {seed} | {prec} | {r['G']:.5g} | {r['N']:.5g} | "
                    f"{r['NSR']:.5g} | {err['G']:+.2e} | {err['N']:+.2e} | {err['NSR']:+.2e} | "
                    f"{abs(r['NSR'] - ref['NSR']) / ref['half']:.3f} | {r['t']:.1f} |"
                )
                print(line, flush=True)
                lines.append(line)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
