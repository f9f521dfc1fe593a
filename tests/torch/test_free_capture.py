"""FreeCapture: the slice sums it reads equal brute-force per-micro-batch gradients, it leaves
training bitwise unchanged, and its pooled estimate covers the truth at fixed weights."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bscrit.engine.free_capture import FreeCapture
from bscrit.errors import UsageError


def _model(dtype: torch.dtype = torch.float64) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).to(dtype)


def _data(n: int, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 5, generator=g, dtype=dtype), torch.randint(0, 3, (n,), generator=g)


LOSS = nn.CrossEntropyLoss()


def _reference(model: nn.Module, xs: list[torch.Tensor], ys: list[torch.Tensor]) -> tuple:
    """Σ_j ‖g_j‖² and ‖mean g_j‖², each g_j the gradient of micro-batch j's mean loss."""
    params = [p for p in model.parameters() if p.requires_grad]
    gs = []
    for x, y in zip(xs, ys):
        grads = torch.autograd.grad(LOSS(model(x), y), params)
        gs.append(torch.cat([g.flatten() for g in grads]))
    g = torch.stack(gs).double()
    return float(g.square().sum()), float(g.mean(0).square().sum())


@pytest.mark.parametrize("accumulation", ["mean", "sum"])
@pytest.mark.parametrize("boundaries", ["hooks", "manual"])
def test_sums_match_per_micro_batch_gradients(accumulation: str, boundaries: str) -> None:
    model = _model()
    x, y = _data(24)
    xs, ys = list(x.split(6)), list(y.split(6))  # M = 4 micro-batches of b = 6
    q_ref, m_ref = _reference(model, xs, ys)
    cap = FreeCapture(model, dataset_size=24, accumulation=accumulation, boundaries=boundaries)
    for step in range(2):
        for xb, yb in zip(xs, ys):
            loss = LOSS(model(xb), yb)
            (loss / 4 if accumulation == "mean" else loss).backward()
            cap.on_backward_end(examples=6)
        cap.on_step_end(6, step=step, examples_seen=24 * step)
        model.zero_grad(set_to_none=step == 0)
    steps, skipped = cap.steps()
    assert skipped == 0 and len(steps) == 2
    for s in steps:
        assert (s.slices, s.slice_size) == (4, 6)
        assert s.sum_sq == pytest.approx(q_ref, rel=1e-10)
        assert s.mean_sq == pytest.approx(m_ref, rel=1e-10)
    cap.close()


def test_stride_reads_every_kth_step_only() -> None:
    model = _model()
    x, y = _data(12)
    q_ref, m_ref = _reference(model, list(x.split(4)), list(y.split(4)))
    cap = FreeCapture(model, dataset_size=12, stride=3)
    for step in range(7):
        for xb, yb in zip(x.split(4), y.split(4)):
            (LOSS(model(xb), yb) / 3).backward()
        cap.on_step_end(4, step=step)
        model.zero_grad()
    steps, skipped = cap.steps()
    assert [s.step for s in steps] == [0, 3, 6] and skipped == 0
    assert all(s.sum_sq == pytest.approx(q_ref, rel=1e-10) for s in steps)
    assert all(s.mean_sq == pytest.approx(m_ref, rel=1e-10) for s in steps)


def test_hooks_read_the_gradient_before_clipping() -> None:
    """The HF Trainer clips before any callback after the last micro-batch: the hooks have read
    it inside backward(), so clipping does not change the sums."""
    model = _model()
    x, y = _data(12)
    q_ref, m_ref = _reference(model, list(x.split(4)), list(y.split(4)))
    cap = FreeCapture(model, dataset_size=12)
    for xb, yb in zip(x.split(4), y.split(4)):
        (LOSS(model(xb), yb) / 3).backward()
    nn.utils.clip_grad_norm_(model.parameters(), 1e-3)
    cap.on_step_end(4, step=0)
    (s,), _ = cap.steps()
    assert s.sum_sq == pytest.approx(q_ref, rel=1e-10)
    assert s.mean_sq == pytest.approx(m_ref, rel=1e-10)


class _Checkpointed(nn.Module):
    """A middle block under activation checkpointing (recomputed in backward)."""

    def __init__(self, reentrant: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.e, self.a, self.b = nn.Linear(5, 5), nn.Linear(5, 7), nn.Linear(7, 3)
        self.reentrant = reentrant
        self.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torch.utils.checkpoint import checkpoint

        h = checkpoint(lambda z: torch.tanh(self.a(z)), self.e(x), use_reentrant=self.reentrant)
        return self.b(h)


@pytest.mark.parametrize("reentrant", [False, True])
def test_hooks_with_activation_checkpointing(reentrant: bool) -> None:
    """Non-reentrant checkpointing recomputes inside the same backward; reentrant runs a nested
    backward, whose hooks come after the output layer's queued the callback on the outer one."""
    x, y = _data(12)
    q_ref, m_ref = _reference(_Checkpointed(False), list(x.split(4)), list(y.split(4)))
    model = _Checkpointed(reentrant)
    cap = FreeCapture(model, dataset_size=12)
    for xb, yb in zip(x.split(4), y.split(4)):
        (LOSS(model(xb), yb) / 3).backward()
    cap.on_step_end(4)
    (s,), _ = cap.steps()
    assert s.slices == 3
    assert s.sum_sq == pytest.approx(q_ref, rel=1e-10)
    assert s.mean_sq == pytest.approx(m_ref, rel=1e-10)


def _train(capture: str | None, steps: int = 4, m: int = 3) -> list[torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    x, y = _data(steps * m * 8, torch.float32)
    cap = None if capture is None else FreeCapture(model, dataset_size=len(x), boundaries=capture)
    for t in range(steps):
        for j in range(m):
            sl = slice((t * m + j) * 8, (t * m + j + 1) * 8)
            (LOSS(model(x[sl]), y[sl]) / m).backward()
            if cap is not None:
                cap.on_backward_end()
        if cap is not None:
            cap.on_step_end(8, step=t)
        nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        opt.step()
        opt.zero_grad()
    if cap is not None:
        est = cap.estimate()
        assert est.steps == steps and est.drift is not None and est.drift.relative > 0
    state = model.state_dict()
    return [state[k].clone() for k in sorted(state)] + [
        opt.state[p]["momentum_buffer"].clone() for p in model.parameters()
    ]


@pytest.mark.parametrize("capture", ["hooks", "manual"])
def test_training_is_bitwise_unchanged(capture: str) -> None:
    plain = _train(None)
    with_capture = _train(capture)
    assert all(torch.equal(a, b) for a, b in zip(plain, with_capture, strict=True))


def test_unequal_or_single_micro_batches_are_skipped() -> None:
    model = _model()
    x, y = _data(20)
    cap = FreeCapture(model, dataset_size=20)
    for sizes in ([6, 6, 6], [8, 8, 4], [10]):
        sizes_x, sizes_y = x[: sum(sizes)], y[: sum(sizes)]
        for xb, yb in zip(sizes_x.split(sizes), sizes_y.split(sizes)):
            (LOSS(model(xb), yb) / len(sizes)).backward()
            cap.on_backward_end(examples=len(xb))
        cap.on_step_end(sizes[0])
        model.zero_grad()
    steps, skipped = cap.steps()
    assert len(steps) == 1 and skipped == 2


def test_paused_backward_is_not_a_micro_batch() -> None:
    model = _model()
    x, y = _data(12)
    q_ref, _ = _reference(model, list(x.split(6)), list(y.split(6)))
    cap = FreeCapture(model, dataset_size=12)
    for xb, yb in zip(x.split(6), y.split(6)):
        (LOSS(model(xb), yb) / 2).backward()
    saved = [p.grad.clone() for p in model.parameters()]
    with cap.paused():  # e.g. another measurement that restores .grad afterwards
        model.zero_grad()
        LOSS(model(x), y).backward()
    for p, g in zip(model.parameters(), saved):
        p.grad = g
    cap.on_step_end(6)
    (s,), _ = cap.steps()
    assert s.slices == 2 and s.sum_sq == pytest.approx(q_ref, rel=1e-10)


def test_drift_matches_the_weights() -> None:
    model = _model()
    x, y = _data(16)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    start = torch.cat([p.detach().flatten() for p in model.parameters()]).clone()
    cap = FreeCapture(model, dataset_size=16)
    for t in range(3):
        for xb, yb in zip(x.split(4), y.split(4)):
            (LOSS(model(xb), yb) / 4).backward()
        cap.on_step_end(4, step=t)
        if t < 2:
            opt.step()
        opt.zero_grad()
    end = torch.cat([p.detach().flatten() for p in model.parameters()])
    d = cap.estimate().drift
    assert d is not None
    assert d.relative == pytest.approx(float((end - start).norm() / start.norm()), rel=1e-9)
    assert d.norm_sq_end - d.norm_sq_start == pytest.approx(float(end @ end - start @ start))


def test_estimate_covers_the_truth_at_fixed_weights() -> None:
    """lr = 0: every step sees the same weights; slices come from a shuffled DataLoader (epochs
    of one shuffle). Ḡ and N^B lie within 3 jackknife standard errors of the full-data truth."""
    model = _model()
    n, b, m = 64, 4, 4
    x, y = _data(n)
    params = list(model.parameters())
    per = []
    for i in range(n):
        grads = torch.autograd.grad(LOSS(model(x[i : i + 1]), y[i : i + 1]), params)
        per.append(torch.cat([g.flatten() for g in grads]))
    per_ex = torch.stack(per)
    mu = per_ex.mean(0)
    g_true = float(mu @ mu)
    t1 = float((per_ex - mu).square().sum(1).mean())
    n_true = t1 * (n - m * b) / (m * b * (n - 1))

    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y),
        batch_size=b,
        shuffle=True,
        generator=torch.Generator().manual_seed(3),
    )
    cap = FreeCapture(model, dataset_size=n)
    step = 0
    for _epoch in range(25):
        it = iter(loader)
        for _ in range(n // (m * b)):
            for _j in range(m):
                xb, yb = next(it)
                (LOSS(model(xb), yb) / m).backward()
            cap.on_step_end(b, step=step)
            model.zero_grad()
            step += 1
    est = cap.estimate()
    assert est.steps == 100 and est.batch_size == 16
    assert abs(est.G.value - g_true) < 3 * est.G.se
    assert abs(est.N.value - n_true) < 3 * est.N.se
    # the interval is bounded here (Ḡ's interval excludes 0), so covering the truth is a claim
    assert est.signal_detected and math.isfinite(est.nsr_ci95[1])
    assert est.nsr_ci95[0] <= n_true / g_true <= est.nsr_ci95[1]
    assert est.nsr_ci95[1] < 2 * n_true / g_true  # and informative, not merely wide
    # unmarked epochs of a finite set: labelled (fine at frozen weights, biased along training)
    assert est.regime == "within_epoch" and not est.covered


def test_bad_arguments() -> None:
    model = _model()
    with pytest.raises(UsageError):
        FreeCapture(model, accumulation="avg")  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        FreeCapture(nn.Linear(2, 2).requires_grad_(False))
    cap = FreeCapture(model, dataset_size=10)
    x, y = _data(12)
    for xb, yb in zip(x.split(6), y.split(6)):
        LOSS(model(xb), yb).backward()
    with pytest.raises(UsageError, match="exceed the dataset size"):
        cap.on_step_end(6)


# ----------------------------------------------------------------------------------------------
# DDP: two gloo ranks, each accumulating 2 micro-batches (torchrun in a subprocess)
# ----------------------------------------------------------------------------------------------

DDP_WORKER = """
import contextlib, copy, json, sys
import torch, torch.distributed as dist
from torch import nn
from bscrit.engine.free_capture import FreeCapture

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
g = torch.Generator().manual_seed(1)
x, y = torch.randn(48, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (48,), generator=g)
loss_fn, acc, b = nn.CrossEntropyLoss(), 2, 3


def train(capture):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()
    ref = copy.deepcopy(model)
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
    cap = FreeCapture(ddp, dataset_size=48) if capture else None
    refs = []
    for t in range(4):  # 4 steps of 2 ranks x 2 micro-batches x 3 examples: 48 examples once
        base = t * world * acc * b
        ref.load_state_dict(ddp.module.state_dict())
        hs = []
        for r in range(world):  # every rank's slice gradient, by brute force
            lo = base + r * acc * b
            loss = loss_fn(ref(x[lo:lo + acc * b]), y[lo:lo + acc * b])
            grads = torch.autograd.grad(loss, list(ref.parameters()))
            hs.append(torch.cat([gr.flatten() for gr in grads]))
        h = torch.stack(hs)
        refs.append([float(h.square().sum()), float(h.mean(0).square().sum())])
        lo = base + rank * acc * b
        for j in range(acc):
            sl = slice(lo + j * b, lo + (j + 1) * b)
            with ddp.no_sync() if j < acc - 1 else contextlib.nullcontext():
                (loss_fn(ddp(x[sl]), y[sl]) / acc).backward()
        if cap is not None:
            cap.on_step_end(b, step=t)
        opt.step()
        opt.zero_grad()
    out = {"refs": refs, "weights": [float(v) for p in model.parameters() for v in p.flatten()]}
    if cap is not None:
        steps, skipped = cap.steps()
        out["steps"] = [[s.sum_sq, s.mean_sq, s.slices, s.slice_size] for s in steps]
        out["skipped"] = skipped
        out["estimate"] = cap.estimate().to_dict()
    return out


out = {"with": train(True), "without": train(False)}
if rank == 0:
    with open(sys.argv[1], "w") as f:
        json.dump(out, f)
dist.barrier()  # both ranks tear gloo down together (one left alone aborted once in CI)
dist.destroy_process_group()
"""


@pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="needs torch.distributed with gloo",
)
def test_ddp_ranks_are_read_in_the_comm_hook(tmp_path) -> None:
    import json
    import os
    import subprocess
    import sys

    (tmp_path / "worker.py").write_text(DDP_WORKER)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    out = tmp_path / "out.json"
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
            "2", "worker.py", str(out)]  # fmt: skip
    r = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=90)
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads(out.read_text())
    with_cap, without = results["with"], results["without"]
    assert with_cap["weights"] == without["weights"]  # bitwise: floats round-trip through JSON
    assert with_cap["skipped"] == 0 and len(with_cap["steps"]) == 4
    for (q, m, slices, size), (q_ref, m_ref) in zip(with_cap["steps"], with_cap["refs"]):
        assert (slices, size) == (2, 6)
        assert q == pytest.approx(q_ref, rel=1e-10)
        assert m == pytest.approx(m_ref, rel=1e-10)
    assert with_cap["estimate"]["batch_size"] == 12 and with_cap["estimate"]["steps_pooled"] == 4
