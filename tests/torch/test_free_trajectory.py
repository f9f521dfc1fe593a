"""Free mode along a training trajectory (the weights move), against the exact G(x_t), N^B(x_t).

Least squares with nearly as many features as examples (p = 36, n = 48), so the weights fit the
examples they were just trained on: inside a reshuffled epoch a step's slices come from the
examples not yet used, and pooling every step overestimates N and G (regime "within_epoch",
labelled not covered). Each epoch's first step is a fresh shuffle, independent of the weights
(regime "epoch_start"); a stream's draws are too (regime "stream"). The exact values come from all
n per-example gradients r_i·x_i at every step; the truth of a window is the mean over the steps it
pooled (docs/free.md "Regimes"; ``benchmarks/free_trajectory.py`` is the full benchmark).
"""

from __future__ import annotations

import statistics

import pytest
import torch
from torch import nn

from bscrit.engine.free_capture import FreeCapture
from bscrit.errors import UsageError
from bscrit.integrations.free import FreeWindow
from bscrit.stats.free import FreeStep, pool_steps

N, P, M, B_MICRO = 48, 36, 4, 4
BIG_B = M * B_MICRO


def _problem(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Generator]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(N, P, generator=gen, dtype=torch.float64)
    w_star = torch.randn(P, generator=gen, dtype=torch.float64)
    return x, x @ w_star + torch.randn(N, generator=gen, dtype=torch.float64), gen


def _exact(w: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(G, T₁) of ℓ_i = ½(w·x_i − y_i)² over all n examples."""
    g = (x @ w - y)[:, None] * x
    mu = g.mean(0)
    return float(mu @ mu), float((g - mu).square().sum(1).mean())


def _train(seed: int, stream: bool, burn: int = 15, window: int = 40):
    """SGD (η = 0.1, λ = 1e-3) for ``burn`` epochs, then ``window`` epochs read by the capture
    (every step, epochs marked); returns the recorded steps and the exact (G, T₁) per step."""
    x, y, gen = _problem(seed)
    model = nn.Linear(P, 1, bias=False).double()
    nn.init.zeros_(model.weight)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=1e-3)
    cap, truth, t = None, {}, 0
    for epoch in range(burn + window):
        if epoch == burn:
            cap = FreeCapture(model, dataset_size=None if stream else N, within_epoch=True)
        if cap is not None and not stream:
            cap.epoch_begin()
        perm = torch.randperm(N, generator=gen)
        for k in range(N // BIG_B):
            idx = torch.randint(N, (BIG_B,), generator=gen) if stream else perm[k * BIG_B :][:BIG_B]
            m = M if cap is not None else 1
            if cap is not None:
                truth[t] = _exact(model.weight[0].detach(), x, y)
            for sl in idx.chunk(m):
                (0.5 * (model(x[sl])[:, 0] - y[sl]).square().mean() / m).backward()
            if cap is not None:
                cap.on_step_end(B_MICRO, step=t)
            opt.step()
            opt.zero_grad()
            t += 1
    assert cap is not None
    steps, skipped = cap.steps()
    assert skipped == 0
    return steps, truth


def _errors(steps: list[FreeStep], truth: dict, n: int | None, pool: str) -> dict:
    """The pooled estimate against the mean truth over the steps it pooled."""
    est = pool_steps(steps, n, pool=pool)
    used = [s.step for s in steps if n is None or pool == "all" or s.epoch_start]
    assert est.steps == len(used)
    f = 1 / BIG_B if n is None else (n - BIG_B) / (BIG_B * (n - 1))
    g = statistics.fmean(truth[s][0] for s in used)
    n_true = statistics.fmean(truth[s][1] for s in used) * f
    return {
        "regime": est.regime,
        "covered": est.covered,
        "N_ratio": est.N.value / n_true,
        "z_G": (est.G.value - g) / est.G.se,
        "G_in": est.G.ci95[0] <= g <= est.G.ci95[1],
        "N_in": est.N.ci95[0] <= n_true <= est.N.ci95[1],
    }


@pytest.fixture(scope="module")
def epoch_runs() -> list[tuple[list[FreeStep], dict]]:
    torch.set_num_threads(1)
    return [_train(seed, stream=False) for seed in range(5)]


def test_epoch_starts_are_unbiased_along_training(epoch_runs) -> None:
    rows = [_errors(steps, truth, N, "auto") for steps, truth in epoch_runs]
    assert all(r["regime"] == "epoch_start" and r["covered"] for r in rows)
    # unbiased: N̂ within a few % of the trajectory mean (each run pools 40 epoch starts)
    assert 0.93 < statistics.fmean(r["N_ratio"] for r in rows) < 1.07
    assert abs(statistics.fmean(r["z_G"] for r in rows)) < 1.2
    assert sum(r["G_in"] for r in rows) >= 4 and sum(r["N_in"] for r in rows) >= 4


def test_steps_inside_epochs_are_biased_and_labelled(epoch_runs) -> None:
    """The same trajectories, every step pooled: N̂ above the truth in every run (the bias the
    epoch-start regime removes), and the estimate says it is not covered."""
    rows = [_errors(steps, truth, N, "all") for steps, truth in epoch_runs]
    assert all(r["regime"] == "within_epoch" and not r["covered"] for r in rows)
    assert min(r["N_ratio"] for r in rows) > 1.08
    assert statistics.fmean(r["z_G"] for r in rows) > 1.2


def test_a_stream_is_unbiased() -> None:
    torch.set_num_threads(1)
    rows = [_errors(*_train(seed, stream=True, window=25), None, "auto") for seed in range(3)]
    assert all(r["regime"] == "stream" and r["covered"] for r in rows)
    assert 0.9 < statistics.fmean(r["N_ratio"] for r in rows) < 1.1
    assert abs(statistics.fmean(r["z_G"] for r in rows)) < 1.5


def test_the_capture_reads_only_epoch_starts_once_epochs_are_marked() -> None:
    """Default capture: epoch_begin() marks a fresh shuffle; only those steps are read (whatever
    the stride) and pooled; one epoch start is refused with the reason; unmarked steps of a finite
    set are pooled but labelled within_epoch, not covered."""
    x, y, gen = _problem(0)
    model = nn.Linear(P, 1, bias=False).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    marked = FreeCapture(model, dataset_size=N, stride=2)
    plain = FreeCapture(model, dataset_size=N)
    t = 0
    for epoch in range(3):
        if epoch < 2:
            marked.epoch_begin()
        perm = torch.randperm(N, generator=gen)
        for k in range(N // BIG_B):
            for sl in perm[k * BIG_B :][:BIG_B].chunk(M):
                (0.5 * (model(x[sl])[:, 0] - y[sl]).square().mean() / M).backward()
            marked.on_step_end(B_MICRO, step=t)
            plain.on_step_end(B_MICRO, step=t)
            opt.step()
            opt.zero_grad()
            t += 1
        if epoch == 0:
            with pytest.raises(UsageError, match="1 epoch start.*at least 2 epochs"):
                marked.estimate()
    steps, _ = marked.steps()
    assert [(s.step, s.epoch_start) for s in steps] == [(0, True), (3, True)]
    est = marked.estimate()
    assert est.regime == "epoch_start" and est.covered and est.steps == 2
    assert est.to_dict()["regime"]["name"] == "epoch_start"
    unmarked = plain.estimate()
    assert unmarked.regime == "within_epoch" and not unmarked.covered and unmarked.steps == 9
    label = unmarked.to_dict()["regime"]
    assert label["covered"] is False and "NOT COVERED" in label["note"]
    assert "epoch_begin" in label["note"]  # says what to do


def test_the_callback_window_waits_for_two_epoch_starts(tmp_path) -> None:
    """FreeWindow (both callbacks): epochs marked, a window is pooled only once it holds 2 epoch
    starts; the series line and the metrics carry the regime."""
    x, y, gen = _problem(1)
    model = nn.Linear(P, 1, bias=False).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    win = FreeWindow(tmp_path, every_n_steps=2, c2=2.0)
    win.start(
        model, optimizer=opt, dataset_size=N, batch_size=BIG_B, micro_batch_size=B_MICRO, slices=M
    )
    logged, t = [], 0
    for _epoch in range(4):
        win.epoch_begin()
        perm = torch.randperm(N, generator=gen)
        for k in range(N // BIG_B):
            for sl in perm[k * BIG_B :][:BIG_B].chunk(M):
                (0.5 * (model(x[sl])[:, 0] - y[sl]).square().mean() / M).backward()
            metrics = win.step_end(t, t * BIG_B, write=True)
            if metrics is not None:
                logged.append((t, metrics))
            opt.step()
            opt.zero_grad()
            t += 1
    win.close()
    assert [s for s, _ in logged] == [3, 9]  # windows of epoch starts 0, 3 and 6, 9
    assert all(m["bscrit/free_covered"] == 1.0 for _, m in logged)
    assert [(r["regime"], r["free"]["steps_pooled"]) for r in win.rows] == [("epoch_start", 2)] * 2
    assert (tmp_path / "series.jsonl").read_text().count('"regime": "epoch_start"') == 2


def test_a_run_too_short_for_two_epoch_starts_says_why(tmp_path) -> None:
    x, y, gen = _problem(2)
    model = nn.Linear(P, 1, bias=False).double()
    win = FreeWindow(tmp_path, every_n_steps=2, c2=2.0)
    win.start(
        model, optimizer=None, dataset_size=N, batch_size=BIG_B, micro_batch_size=B_MICRO, slices=M
    )
    win.epoch_begin()  # one epoch of 3 steps: one epoch start
    perm = torch.randperm(N, generator=gen)
    for t in range(N // BIG_B):
        for sl in perm[t * BIG_B :][:BIG_B].chunk(M):
            (0.5 * (model(x[sl])[:, 0] - y[sl]).square().mean() / M).backward()
        assert win.step_end(t, t * BIG_B, write=True) is None
        model.zero_grad()
    with pytest.warns(UserWarning, match=r"no window.*\(1 in the last one\).*without a length"):
        win.close()
    assert not (tmp_path / "series.jsonl").exists()
