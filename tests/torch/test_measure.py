"""The measurement engine against brute-force truth, and its promise not to touch the model."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
from reference import mse as _mse
from reference import tiny_problem as _tiny_problem
from reference import truth
from torch import nn
from torch.utils.data import TensorDataset

from bscrit.engine.data import group_counts, sample_batches
from bscrit.engine.loop import measure_model
from bscrit.errors import DataError, MeasurementError
from bscrit.stats.summary import param_set_stats, summarize_checkpoint


def test_sampled_batches_are_distinct_within_and_independent_across() -> None:
    rows = sample_batches(50, 8, 300, seed=3)
    assert rows.shape == (300, 8)
    assert all(len(set(r.tolist())) == 8 for r in rows)
    # every example is drawn with frequency B/n per batch (uniform): 300*8/50 = 48 on average
    counts = torch.bincount(rows.reshape(-1), minlength=50).double()
    assert abs(float(counts.mean()) - 48) < 1e-9
    assert float(counts.std()) < 3 * math.sqrt(48)
    assert not torch.equal(rows, sample_batches(50, 8, 300, seed=4))
    assert torch.equal(rows, sample_batches(50, 8, 300, seed=3))


def test_batch_plan_is_lazy_and_row_for_row_sample_batches() -> None:
    from bscrit.engine.data import BatchPlan, group_blocks

    for n, b, k, seed in [(50, 8, 300, 3), (64, 64, 12, 0), (2_000_000, 4, 30, 2)]:
        rows = sample_batches(n, b, k, seed)
        blocks = list(group_blocks(BatchPlan(n, b, k, seed).chunks(), group_counts(k, 7), 5))
        assert all(len(r) <= 5 for _, r in blocks)
        sizes = [sum(len(r) for i, r in blocks if i == j) for j in range(7)]
        assert sizes == group_counts(k, 7)  # groups in order, each cut into blocks
        assert torch.equal(torch.cat([r for _, r in blocks]), rows)
    # 10^9 batches: the first block comes at once, without the 10^9 x B rows (64 GB)
    plan = BatchPlan(50, 8, 10**9, seed=0)
    j, first = next(group_blocks(plan.chunks(), group_counts(10**9, 10), 1024))
    assert j == 0 and first.shape == (1024, 8)
    assert torch.equal(first, sample_batches(50, 8, 1024, seed=0))


def test_a_huge_k_starts_at_once_and_an_absurd_one_is_refused(monkeypatch) -> None:
    import bscrit.engine.loop
    from bscrit.engine.data import MAX_BATCHES
    from bscrit.errors import UsageError

    def eager(*args: object, **kwargs: object) -> None:
        raise AssertionError("the whole batch plan was materialised before the first batch")

    monkeypatch.setattr(bscrit.engine.loop, "sample_batches", eager, raising=False)
    model, ds = _tiny_problem()

    class Started(Exception):
        pass

    def progress(n: int) -> None:
        raise Started

    with pytest.raises(Started):  # the loop runs: rows are drawn as it goes
        measure_model(model, ds, _mse, batch_size=6, num_batches=MAX_BATCHES, progress=progress)
    with pytest.raises(UsageError, match=r"batches 1,000,000,000,000 is more than") as e:
        measure_model(model, ds, _mse, batch_size=6, num_batches=10**12)
    assert "--target-rel-error" in e.value.for_cli()


def test_the_time_per_batch_is_estimated_once_early() -> None:
    model, ds = _tiny_problem()
    seen: list[float] = []
    measure_model(model, ds, _mse, batch_size=6, num_batches=200, groups=4, estimate=seen.append)
    assert len(seen) == 1 and 0 < seen[0] < 1


def test_group_counts() -> None:
    assert group_counts(23, 5) == [5, 5, 5, 4, 4]
    assert sum(group_counts(200, 10)) == 200


def test_one_measurement_matches_truth_and_float64_reference() -> None:
    model, ds = _tiny_problem()
    b = 6
    g_true, _, n_true = truth(model, ds, b)
    raw = measure_model(model, ds, _mse, batch_size=b, num_batches=2000, groups=10, seed=0)
    s = param_set_stats(raw.tensors)
    # 2000 batches: both well inside their own 95% intervals' scale of the truth
    assert abs(s.G - g_true) < 4 * s.G_se
    assert abs(s.N - n_true) < 4 * s.N_se
    assert s.N_se / s.N < 0.1


def test_unbiased_and_jackknife_coverage_over_many_seeds() -> None:
    """Mean of Ĝ, N̂ over 200 seeds within 3 s.e. of the truth; 95% intervals cover 85-99%."""
    model, ds = _tiny_problem()
    b, reps = 6, 200
    g_true, _, n_true = truth(model, ds, b)
    gs, ns, cover_g, cover_n = [], [], 0, 0
    for seed in range(reps):
        raw = measure_model(model, ds, _mse, batch_size=b, num_batches=40, groups=10, seed=seed)
        s = param_set_stats(raw.tensors)
        gs.append(s.G)
        ns.append(s.N)
        cover_g += s.G_ci95[0] <= g_true <= s.G_ci95[1]
        cover_n += s.N_ci95[0] <= n_true <= s.N_ci95[1]
    se_g = statistics.stdev(gs) / math.sqrt(reps)
    se_n = statistics.stdev(ns) / math.sqrt(reps)
    assert abs(statistics.fmean(gs) - g_true) < 3 * se_g
    assert abs(statistics.fmean(ns) - n_true) < 3 * se_n
    assert 0.85 <= cover_g / reps <= 0.99
    assert 0.85 <= cover_n / reps <= 0.99


def test_naive_mean_norm_is_biased_but_estimator_is_not() -> None:
    """‖ḡ‖² overestimates G by N^B/k: the correction makes Ĝ unbiased (docs/theory.md §2)."""
    model, ds = _tiny_problem()
    b, k = 6, 8
    g_true, _, n_true = truth(model, ds, b)
    naive, corrected = [], []
    for seed in range(300):
        raw = measure_model(model, ds, _mse, batch_size=b, num_batches=k, groups=2, seed=seed)
        s = param_set_stats(raw.tensors)
        corrected.append(s.G)
        naive.append(s.G + s.N / k)
    se = statistics.stdev(corrected) / math.sqrt(300)
    assert abs(statistics.fmean(corrected) - g_true) < 3 * se
    assert statistics.fmean(naive) - g_true > 3 * se  # the bias n_true/k is detectable
    assert n_true / k > 3 * se


def _bn_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(5, 16, bias=False),
        nn.BatchNorm1d(16),
        nn.ReLU(),
        nn.Linear(16, 3),
    )


def _bn_data(n: int = 64) -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    return TensorDataset(torch.randn(n, 5, generator=g), torch.randint(0, 3, (n,), generator=g))


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_model_and_buffers_bitwise_unchanged(mode: str) -> None:
    model = _bn_net()
    ds = _bn_data()
    # make running statistics non-trivial first
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 5))
    model.eval()  # the user's flag must come back as it was
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng_before = torch.get_rng_state().clone()
    raw = measure_model(
        model, ds, nn.functional.cross_entropy, batch_size=8, num_batches=20, groups=4, mode=mode
    )
    after = model.state_dict()
    assert set(before) == set(after)
    for k, v in before.items():
        assert torch.equal(v, after[k]), k
    assert int(after["1.num_batches_tracked"]) == 3
    assert not model.training
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert raw.num_batches == 20


def test_train_mode_uses_batch_statistics() -> None:
    model = _bn_net()
    ds = _bn_data()
    common = dict(batch_size=8, num_batches=20, groups=4, seed=0)
    t = param_set_stats(
        measure_model(model, ds, nn.functional.cross_entropy, mode="train", **common).tensors
    )
    e = param_set_stats(
        measure_model(model, ds, nn.functional.cross_entropy, mode="eval", **common).tensors
    )
    assert t.G != pytest.approx(e.G, rel=1e-3)


def test_scale_invariance_detection() -> None:
    torch.manual_seed(0)
    si_net = nn.Sequential(
        nn.Linear(5, 16, bias=False),
        nn.BatchNorm1d(16, affine=False),
        nn.ReLU(),
        nn.Linear(16, 3, bias=False),
        nn.BatchNorm1d(3, affine=True),
    )
    raw = measure_model(
        si_net, _bn_data(), nn.functional.cross_entropy, batch_size=8, num_batches=20, groups=4
    )
    flags = {t.name: t.is_scale_invariant() for t in raw.tensors}
    assert flags == {"0.weight": True, "3.weight": True, "4.weight": False, "4.bias": False}
    summary = summarize_checkpoint("x", raw.tensors, None, 0.0)
    assert summary.scale_invariant_names == ("0.weight", "3.weight")
    assert 0 < summary.scale_invariant_fraction < 1

    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 3))
    raw = measure_model(
        mlp, _bn_data(), nn.functional.cross_entropy, batch_size=8, num_batches=20, groups=4
    )
    assert not any(t.is_scale_invariant() for t in raw.tensors)
    assert summarize_checkpoint("x", raw.tensors, None, 0.0).stats.scale_invariant is None


class _SqrtNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1.0, 0.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.w.sqrt()).sum(-1)


def test_nan_gradient_names_batch_and_parameter() -> None:
    ds = TensorDataset(torch.ones(16, 2), torch.zeros(16))
    with pytest.raises(MeasurementError, match=r"non-finite gradient.*batch 0, parameter 'w'"):
        measure_model(_SqrtNet(), ds, _mse, batch_size=4, num_batches=8, groups=2)


def test_nan_loss_names_the_batch() -> None:
    x = torch.randn(16, 3)
    x[1:] = float("nan")  # every batch of 8 distinct examples holds NaN rows (B = n is refused)
    model = nn.Linear(3, 1)
    with pytest.raises(MeasurementError, match="non-finite loss"):
        measure_model(
            model, TensorDataset(x, torch.zeros(16)), _mse, batch_size=8, num_batches=4, groups=2
        )


def test_an_asynchronous_device_error_is_a_measurement_error(monkeypatch) -> None:
    """A CUDA kernel that fails (e.g. labels out of range: a device-side assert) surfaces at the
    block's synchronisation, outside the forward/backward call: still exit 3, with the batches."""
    model, ds = _tiny_problem()

    def device_assert(*args: object, **kwargs: object) -> None:
        raise RuntimeError("CUDA error: device-side assert triggered\nCompile with ...")

    monkeypatch.setattr(torch, "isfinite", device_assert)
    with pytest.raises(
        MeasurementError,
        match="failed in batches 0–9: CUDA error: device-side "
        r"assert triggered \(for the exact error and batch, rerun with device cpu",
    ):
        measure_model(model, ds, _mse, batch_size=6, num_batches=40, groups=4)


def test_bad_inputs() -> None:
    model, ds = _tiny_problem(n=10)
    with pytest.raises(DataError, match="fewer than the batch size"):
        measure_model(model, ds, _mse, batch_size=11, num_batches=4, groups=2)
    with pytest.raises(MeasurementError, match="expected a scalar"):
        measure_model(
            model, ds, lambda o, y: (o.squeeze(-1) - y) ** 2, batch_size=4, num_batches=4, groups=2
        )


def test_sum_loss_is_flagged() -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    ds = TensorDataset(torch.randn(64, 3), torch.randn(64))
    raw = measure_model(
        model,
        ds,
        lambda o, y: ((o.squeeze(-1) - y) ** 2).sum(),
        batch_size=32,
        num_batches=4,
        groups=2,
    )
    assert any("SUM" in w for w in raw.warnings)
    raw = measure_model(model, ds, _mse, batch_size=32, num_batches=4, groups=2)
    assert not raw.warnings


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    model, ds = _tiny_problem()
    rows = sample_batches(len(ds), 6, 40, seed=0)
    cpu = param_set_stats(
        measure_model(model, ds, _mse, batch_size=6, groups=4, batch_rows=rows).tensors
    )
    gpu = param_set_stats(
        measure_model(
            model, ds, _mse, batch_size=6, groups=4, batch_rows=rows, device="cuda"
        ).tensors
    )
    assert gpu.G == pytest.approx(cpu.G, rel=1e-6)
    assert gpu.N == pytest.approx(cpu.N, rel=1e-6)
