"""The per-example estimator against brute-force per-example autograd
(bscrit.engine.per_example)."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
from reference import mse as _mse
from reference import tiny_problem as _tiny_problem
from reference import truth as exact_truth
from torch import nn
from torch.utils.data import TensorDataset

from bscrit.engine.loop import measure_model
from bscrit.engine.per_example import layer_sq_norms, measure_per_example
from bscrit.errors import BscritError, MeasurementError, UsageError
from bscrit.stats.estimators import per_example_stats
from bscrit.stats.summary import set_sums

# ----------------------------------------------------------------------------------------------
# Exact per-example norms, layer by layer
# ----------------------------------------------------------------------------------------------


class _Seq(nn.Module):
    """(B, C, T) → Conv1d → LayerNorm over channels on (B, T, C) → Linear on sequences → mean."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(3, 4, 3, padding=2, dilation=2, padding_mode="reflect")
        self.norm = nn.LayerNorm(4)
        self.lin = nn.Linear(4, 16)  # 3-D input, in·out < T·(in+out): direct product
        self.wide = nn.Linear(16, 16)  # in·out > T·(in+out): the Gram trick

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x).transpose(1, 2)  # (B, T, 4)
        h = torch.tanh(self.lin(self.norm(h)))
        return self.wide(h).mean(1)[:, :3]


def test_outer_norms_gram_and_direct_agree() -> None:
    from bscrit.engine.per_example import _outer_sq_norms

    for o, i, ll in ((3, 4, 50), (40, 30, 2)):  # direct, then Gram
        d = torch.randn(6, o, ll, dtype=torch.float64)
        u = torch.randn(6, i, ll, dtype=torch.float64)
        truth = torch.einsum("nol,nil->noi", d, u).pow(2).sum((1, 2))
        torch.testing.assert_close(_outer_sq_norms(d, u), truth)


def _conv_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, stride=2, padding=1),
        nn.GroupNorm(2, 4),
        nn.ReLU(inplace=True),
        nn.Conv2d(4, 6, 3, padding="same", groups=2, bias=False),
        nn.BatchNorm2d(6),
        nn.ReLU(inplace=True),
        nn.Conv2d(6, 6, 2, dilation=2, padding_mode="circular", padding=1),
        nn.Flatten(),
        nn.Linear(6 * 4 * 4, 3),
    )


CASES = {
    "conv2d+groupnorm+bn-eval": (_conv_net, (2, 8, 8)),
    "conv1d+layernorm+linear-seq": (_Seq, (3, 7)),
    "conv2d-gram+unfold": (  # 2×2 maps, 8 channels: the Gram trick beats the direct product
        lambda: nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.Flatten(), nn.Linear(32, 3)),
        (8, 2, 2),
    ),
    "mlp": (lambda: nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)), (5,)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_layer_norms_match_brute_force_per_example_autograd(case: str) -> None:
    make, shape = CASES[case]
    torch.manual_seed(0)
    model = make().double().eval()
    for mod in model.modules():  # non-trivial running statistics and affine parameters
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
        if isinstance(mod, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)):
            nn.init.normal_(mod.weight, 1.0, 0.3)
            nn.init.normal_(mod.bias, 0.0, 0.3)
    b = 5
    x = torch.randn(b, *shape, dtype=torch.float64)
    y = torch.randint(0, 3, (b,))
    seen: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(mod: nn.Module, inp: tuple, out: torch.Tensor) -> None:
        a = inp[0].detach()
        out.register_hook(lambda g: seen.__setitem__(mod, (a, g)))

    layers = [m for m in model.modules() if any(True for _ in m.parameters(recurse=False))]
    handles = [m.register_forward_hook(hook) for m in layers]
    loss = nn.functional.cross_entropy(model(x), y)  # the batch MEAN
    torch.autograd.grad(loss, list(model.parameters()))
    for h in handles:
        h.remove()
    for mod in layers:
        w_sq, b_sq = layer_sq_norms(mod, *seen[mod])
        for p, got in ((mod.weight, w_sq), (getattr(mod, "bias", None), b_sq)):
            if p is None:
                assert got is None
                continue
            truth = []
            for i in range(b):  # brute force: gradient of example i's share ℓᵢ/B of the mean
                li = nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]) / b
                truth.append(float(torch.autograd.grad(li, p)[0].pow(2).sum()))
            torch.testing.assert_close(got.double(), torch.tensor(truth, dtype=torch.float64))


# ----------------------------------------------------------------------------------------------
# T1 and N^B against the truth
# ----------------------------------------------------------------------------------------------


def test_t1_and_n_unbiased_and_more_precise_than_batch_estimator() -> None:
    model, ds = _tiny_problem()
    b, k, reps = 6, 20, 40
    g_true, t1_true, n_true = exact_truth(model, ds, b)
    t1s, ns, gs, se_pe, se_batch, cover = [], [], [], [], [], 0
    for seed in range(reps):
        raw, pe = measure_per_example(
            model, ds, _mse, batch_size=b, num_batches=k, groups=5, seed=seed
        )
        s = per_example_stats(set_sums(raw.tensors), pe.set_c(range(len(raw.tensors))), 48, b)
        t1s.append(s.T1.value)
        ns.append(s.noise.N.value)
        gs.append(s.noise.G.value)
        se_pe.append(s.noise.N.se)
        cover += s.T1.ci95[0] <= t1_true <= s.T1.ci95[1]
        from bscrit.stats.summary import param_set_stats

        se_batch.append(param_set_stats(raw.tensors).N_se)
    for vals, exact in ((t1s, t1_true), (ns, n_true), (gs, g_true)):
        se = statistics.stdev(vals) / math.sqrt(reps)
        assert abs(statistics.fmean(vals) - exact) < 3.5 * se, (statistics.fmean(vals), exact, se)
    assert abs(statistics.fmean(ns) / n_true - 1) < 0.05  # N^B = T1 (n-B)/(B(n-1)), same batches
    assert statistics.fmean(se_pe) < 0.5 * statistics.fmean(se_batch)  # far fewer batches needed
    assert cover >= 0.75 * reps


def test_per_example_sums_do_not_depend_on_the_batch_estimator_state() -> None:
    """Same rows → the batch statistics of a per-example run equal those of a batch run."""
    model, ds = _tiny_problem()
    raw_b = measure_model(model, ds, _mse, batch_size=6, num_batches=12, groups=3, seed=1)
    raw_p, pe = measure_per_example(model, ds, _mse, batch_size=6, num_batches=12, groups=3, seed=1)
    assert [t.sums for t in raw_b.tensors] == [t.sums for t in raw_p.tensors]
    assert len(pe.c) == 3 and all(len(row) == len(raw_p.tensors) for row in pe.c)
    # hooks are gone and the model is untouched
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert all(p.grad is None for p in model.parameters())


# ----------------------------------------------------------------------------------------------
# Refusals
# ----------------------------------------------------------------------------------------------


def _bn_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def _cls_data(n: int = 32) -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    return TensorDataset(torch.randn(n, 5, generator=g), torch.randint(0, 3, (n,), generator=g))


def _run(model: nn.Module, **kw) -> None:  # type: ignore[no-untyped-def]
    kw = {"batch_size": 4, "num_batches": 8, "groups": 2} | kw
    measure_per_example(model, _cls_data(), nn.functional.cross_entropy, **kw)


def test_refuses_train_mode_batchnorm_with_a_clear_message() -> None:
    with pytest.raises(
        MeasurementError, match=r"'1' is a BatchNorm1d in train mode.*mode eval"
    ) as e:
        _run(_bn_net())
    assert e.value.for_cli().endswith("--mode eval")  # the CLI names the flag
    _run(_bn_net(), mode="eval")  # running statistics: examples are independent


def test_refuses_unsupported_and_shared_layers_and_bad_options() -> None:
    class Bare(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(5, 3)
            self.scale = nn.Parameter(torch.ones(3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(x) * self.scale

    with pytest.raises(MeasurementError, match=r"'<root>' \(Bare\).*Supported: Linear"):
        _run(Bare())
    frozen = Bare()
    frozen.scale.requires_grad_(False)
    _run(frozen)  # frozen parameters are not measured, so they are no obstacle

    lin = nn.Linear(5, 5)
    with pytest.raises(MeasurementError, match="more than once"):
        _run(nn.Sequential(lin, nn.Tanh(), lin, nn.Linear(5, 3)))
    a, b = nn.Linear(3, 3), nn.Linear(3, 3)
    b.weight = a.weight  # weight tying across modules
    with pytest.raises(MeasurementError, match="shared"):
        _run(nn.Sequential(nn.Linear(5, 3), a, b))
    with pytest.raises(BscritError, match="B >= 2"):
        _run(nn.Linear(5, 3), batch_size=1)
    with pytest.raises(UsageError, match="compile cannot be combined") as e:
        _run(nn.Linear(5, 3), compile=True)
    assert e.value.for_cli().startswith("--compile")
