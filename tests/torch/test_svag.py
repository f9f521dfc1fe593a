# ruff: noqa: E741  (l is the SVAG parameter of [LMA21])
"""SVAG [LMA21 §4; MLPA22 §6]: the algebra of ĝ, weak convergence on closed forms, schedules on
effective steps, BatchNorm running statistics, optimizer warm start.

The closed-form tests run through :func:`bscrit.runs.svag.run.run_svag` — the same step code path as
``bscrit svag`` (svag_hyperparameters → PyTorch optimizer → two gradients → ĝ → ``step()`` →
scheduler on effective steps) — with a synthetic :class:`GaussianNoiseOracle` instead of a model.
Monte-Carlo tolerances come from the estimators' standard errors; seeds are fixed.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bscrit.engine.data import BatchSource
from bscrit.errors import RunError, UsageError
from bscrit.optim.registry import OptimizerInfo
from bscrit.runs.common.evaluation import ModelEvaluator
from bscrit.runs.common.optimizer import lr_factor, make_optimizer, target_schedule
from bscrit.runs.common.warm import gradient_moments, warm_start
from bscrit.runs.svag import run as svag_run
from bscrit.runs.svag.oracles import GaussianNoiseOracle, ModelOracle
from bscrit.runs.svag.run import run_svag
from bscrit.runs.svag.step import combine, svag_coefficients, svag_step
from bscrit.specfile.training import ScheduleSpec

# ----------------------------------------------------------------------------------------------
# Algebra: ĝ = r1 g1 + r2 g2 has the mean of g and l times its covariance
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("l", [1, 2, 4, 16])
def test_coefficients_keep_mean_and_multiply_variance(l):
    r1, r2 = svag_coefficients(l)
    assert r1 + r2 == pytest.approx(1.0, abs=1e-12)
    assert r1**2 + r2**2 == pytest.approx(l, rel=1e-12)
    if l == 1:
        assert (r1, r2) == (1.0, 0.0)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_coefficients_reject_bad_l(bad):
    with pytest.raises(UsageError, match="integer >= 1"):
        svag_coefficients(bad)


@pytest.mark.parametrize("l", [1, 4, 16])
def test_one_svag_step_has_mean_of_g_and_l_times_its_covariance(l):
    """M independent copies of one SVAG step (SGD, LR 1, from x = 0): x₁ = −ĝ."""
    m, d = 100_000, 3
    mu = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    a = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [-0.3, 0.2, 0.5]], dtype=torch.float64)
    sigma = a @ a.T
    x = torch.zeros(m, d, dtype=torch.float64)
    oracle = GaussianNoiseOracle(
        [x],
        lambda ps: [mu.expand_as(ps[0])],
        scale_tril=a,
        generator=torch.Generator().manual_seed(100 + l),
    )
    opt = make_optimizer([x], OptimizerInfo("sgd", lr=1.0))
    svag_step(oracle, opt, *svag_coefficients(l))
    g = -x
    mean = g.mean(0)
    cov = torch.cov(g.T)
    want = l * sigma
    se_mean = (torch.diagonal(want) / m).sqrt()
    assert torch.all((mean - mu).abs() < 5 * se_mean), (mean, mu)
    # Var of a Gaussian sample covariance entry: (C_ii C_jj + C_ij²)/M.
    se_cov = ((torch.diagonal(want)[:, None] * torch.diagonal(want)[None, :] + want**2) / m).sqrt()
    assert torch.all((cov - want).abs() < 5 * se_cov), (cov, want)
    if l > 1:  # l times the covariance, not the covariance: the test can tell them apart
        assert not torch.all((cov - sigma).abs() < 5 * se_cov)


def test_combine_keeps_unused_parameters_unused():
    g = torch.ones(2)
    out = combine([None, g], [None, 3 * g], 2.0, -1.0)
    assert out[0] is None
    torch.testing.assert_close(out[1], -g)
    out = combine([g], [None], 2.0, -1.0)
    torch.testing.assert_close(out[0], 2 * g)


# ----------------------------------------------------------------------------------------------
# Weak convergence on a closed form: SGD on h x²/2 with additive Gaussian noise
# ----------------------------------------------------------------------------------------------


def stationary_variance(eta: float, h: float, sigma: float, l: int) -> float:
    """SVAG-l on L = h x²/2 with noise variance σ²: x' = (1 − ηh/l) x − (η/l) √l σ z, so
    V = (η²σ²/l) / (1 − (1 − ηh/l)²) = ησ² / (2h − ηh²/l) → ησ²/(2h) (the SDE) as l → ∞."""
    return eta * sigma**2 / (2 * h - eta * h**2 / l)


def test_quadratic_stationary_variance_matches_closed_form_and_tends_to_sde():
    """D independent chains (one coordinate each) of SVAG on h x²/2, η h = 1 so the l = 1 (SGD)
    variance is twice the SDE's. After 20 effective steps the chains are stationary (contraction
    (1 − ηh/l)^(2·20·l) ≤ e^(−40)); the empirical variance (1/D) Σ x² has standard error
    V·√(2/D)."""
    d, h, sigma, eta, steps = 20_000, 1.0, 1.0, 1.0, 20
    sde = eta * sigma**2 / (2 * h)
    got = {}
    for l in (1, 4, 16):
        x = torch.zeros(d, dtype=torch.float64)
        oracle = GaussianNoiseOracle(
            [x], lambda ps: [h * ps[0]], sigma, generator=torch.Generator().manual_seed(7 * l)
        )
        run = run_svag(
            oracle,
            OptimizerInfo("sgd", lr=eta),
            l,
            steps,
            evaluate=lambda x=x: {"var": float(x.pow(2).mean())},
            eval_every=steps,
        )
        assert run.steps == l * steps
        assert run.optimizer.lr == pytest.approx(eta / l)
        v = run.values["var"][-1]
        want = stationary_variance(eta, h, sigma, l)
        se = want * math.sqrt(2 / d)
        assert abs(v - want) < 4 * se, (l, v, want, se)
        got[l] = v
    # SVAG approaches the SDE's η σ²/(2h) as l grows, and l = 1 (SGD) is far from it.
    assert abs(got[1] - sde) > abs(got[4] - sde) > abs(got[16] - sde)
    assert abs(got[1] - sde) > 0.4
    assert abs(got[16] - sde) < 0.03


# ----------------------------------------------------------------------------------------------
# Adam under SVAG on a linear loss with isotropic noise [MLPA22 §4.1]
# ----------------------------------------------------------------------------------------------


def adam_linear_run(l: int, *, d=20_000, steps=30, c=0.1, sigma=1.0, warm=True, opt=None):
    """θ ∈ R^d, f(θ) = ⟨θ, c·1⟩, g ~ N(c·1, σ² I): every coordinate is an independent chain.
    Returns (mean, var) of θ across coordinates after ``steps`` effective steps."""
    theta = torch.zeros(d)
    oracle = GaussianNoiseOracle(
        [theta],
        lambda ps: [torch.full_like(ps[0], c)],
        sigma,
        generator=torch.Generator().manual_seed(1000 + l),
    )
    moments = gradient_moments(oracle.sample() for _ in range(64)) if warm else None
    opt = opt or OptimizerInfo("adam", lr=0.01, betas=(0.9, 0.999), eps=1e-8)
    run = run_svag(
        oracle,
        opt,
        l,
        steps,
        evaluate=lambda: {"mean": float(theta.double().mean()), "var": float(theta.double().var())},
        eval_every=steps,
        moments=moments,
    )
    return run.values["mean"][-1], run.values["var"][-1]


def _close(a: tuple[float, float], b: tuple[float, float], d: int, rel: float) -> bool:
    """Means within 4 combined MC standard errors (√(var/d) each) and variances within 4 combined
    MC standard errors (var·√(2/d) each) plus ``rel`` of their value (the O(1/l) SVAG error)."""
    (ma, va), (mb, vb) = a, b
    se_m = math.sqrt(va / d + vb / d)
    se_v = math.sqrt(2 / d) * math.hypot(va, vb)
    return abs(ma - mb) <= 4 * se_m + rel * abs(ma) and abs(va - vb) <= 4 * se_v + rel * va


def test_adam_svag_keeps_mean_and_variance_on_linear_loss():
    """[MLPA22] §4.1: with v ≈ c² + σ², θ_k has mean −kηc/√v and, with momentum β₁ (m₀ = ḡ),
    variance (η²σ²/v) Σ_{i=1..k} (1 − β₁^i)² ≈ k η² for k ≫ 1/(1 − β₁). SVAG (LR η/√l,
    β ← 1 − (1 − β)/l, ε ← ε√l, l steps per effective step) must keep both at equal effective
    steps. k = 30 effective steps: short enough that the momentum's time scale (10 steps) matters,
    so unscaled betas would show (the variance then grows by about 50%)."""
    d, steps, c, sigma, eta, b1 = 20_000, 30, 0.1, 1.0, 0.01, 0.9
    runs = {l: adam_linear_run(l, d=d, steps=steps) for l in (1, 4, 16)}
    v = c**2 + sigma**2
    mean_sde = -steps * eta * c / math.sqrt(v)
    var_sde = eta**2 * sigma**2 / v * sum((1 - b1**i) ** 2 for i in range(1, steps + 1))
    for l, (m, var) in runs.items():
        assert m == pytest.approx(mean_sde, rel=0.05), (l, m)
        # + ~10%: the warm start's m₀ and v₀ are estimated from 64 samples per coordinate
        assert 0.95 * var_sde < var < 1.25 * var_sde, (l, var, var_sde)
    assert _close(runs[1], runs[4], d, rel=0.03), runs
    assert _close(runs[1], runs[16], d, rel=0.03), runs
    assert _close(runs[4], runs[16], d, rel=0.01), runs


def test_adam_linear_check_fails_with_unscaled_betas(monkeypatch):
    """The check above can fail: SVAG's LR and ε but the original betas (momentum and second
    moment then average over l times fewer effective steps)."""
    import dataclasses

    orig = svag_run.svag_hyperparameters
    monkeypatch.setattr(
        svag_run,
        "svag_hyperparameters",
        lambda opt, l: dataclasses.replace(orig(opt, l), betas=opt.betas),
    )
    d = 20_000
    assert not _close(
        adam_linear_run(1, d=d, steps=30), adam_linear_run(16, d=d, steps=30), d, 0.03
    )


def test_adam_linear_check_fails_without_the_svag_hyperparameters(monkeypatch):
    """The check above can fail: with the noise amplified but Adam's hyperparameters left as
    they are, the l = 4 trajectory is a different process."""
    monkeypatch.setattr(svag_run, "svag_hyperparameters", lambda opt, l: opt)
    d = 20_000
    assert not _close(adam_linear_run(1, d=d, steps=30), adam_linear_run(4, d=d, steps=30), d, 0.03)


def test_rmsprop_warm_start_removes_the_l_dependent_start():
    """From v = 0 RMSprop's first steps divide by a tiny √v, and how many such steps fit in one
    effective step depends on l; the warm start (v₀ = E[ĝ²]) makes the runs agree."""
    d, steps = 10_000, 30
    opt = OptimizerInfo("rmsprop", lr=0.01, alpha=0.99, eps=1e-8)
    warm = {l: adam_linear_run(l, d=d, steps=steps, opt=opt) for l in (1, 16)}
    cold = {l: adam_linear_run(l, d=d, steps=steps, opt=opt, warm=False) for l in (1, 16)}
    assert _close(warm[1], warm[16], d, rel=0.03), warm
    assert cold[16][1] > 1.2 * cold[1][1], cold


# ----------------------------------------------------------------------------------------------
# Schedules on effective steps
# ----------------------------------------------------------------------------------------------


def test_target_schedule_divides_steps_by_kappa():
    s = ScheduleSpec(
        name="step", warmup_steps=64, milestones=(320, 640), gamma=0.5, total_steps=960
    )
    t = target_schedule(s, 32.0)
    assert t == {"name": "step", "warmup_steps": 2, "milestones": [10, 20], "gamma": 0.5,
                 "total_steps": 30}  # fmt: skip
    assert target_schedule(None, 4.0)["name"] == "constant"


def test_lr_factor_warmup_step_cosine():
    step = {"name": "step", "warmup_steps": 4, "milestones": [10, 20], "gamma": 0.1}
    assert lr_factor(step, 0, 1, 100) == pytest.approx(0.25)
    assert lr_factor(step, 3, 4, 100) == pytest.approx(1.0)
    assert lr_factor(step, 9.75, 10, 100) == pytest.approx(1.0)
    assert lr_factor(step, 10, 11, 100) == pytest.approx(0.1)
    assert lr_factor(step, 25, 26, 100) == pytest.approx(0.01)
    cos = {"name": "cosine", "warmup_steps": 0, "total_steps": None}
    assert lr_factor(cos, 0, 1, 100) == pytest.approx(1.0)
    assert lr_factor(cos, 50, 51, 100) == pytest.approx(0.5)
    assert lr_factor(cos, 100, 101, 100) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor({"name": "constant"}, 7, 8, 10) == 1.0


@pytest.mark.parametrize("l", [1, 4])
def test_step_schedule_runs_on_effective_steps(l):
    """Noise-free linear loss, SGD: x_E = −c Σ_k lr_k, so x_E shows every LR the run used. With
    the LR dropping ×0.1 at effective step 2 of 4, x_E = −c η (2 + 0.2) for every l."""
    c, eta = 1.0, 0.5
    x = torch.zeros(1, dtype=torch.float64)
    oracle = GaussianNoiseOracle([x], lambda ps: [torch.full_like(ps[0], c)], 0.0)
    sched = {"name": "step", "warmup_steps": 0, "milestones": [2], "gamma": 0.1}
    run = run_svag(
        oracle, OptimizerInfo("sgd", lr=eta), l, 4, evaluate=lambda: {"x": float(x[0])},
        eval_every=1, schedule=sched,
    )  # fmt: skip
    assert run.effective_steps == (0.0, 1.0, 2.0, 3.0, 4.0)
    assert run.values["x"][-1] == pytest.approx(-c * eta * 2.2, rel=1e-12)
    assert run.values["x"][2] == pytest.approx(-c * eta * 2.0, rel=1e-12)


def test_warmup_uses_the_end_of_each_step():
    """Warm-up over W = 2 effective steps: SVAG step k (of l per effective step) gets
    (k + 1)/(l W); l = 1 is PyTorch's usual (k + 1)/W ramp."""
    eta = 1.0
    for l, want in ((1, 0.5 + 1.0 + 1.0), (4, sum(j / 8 for j in range(1, 9)) / 4 + 1.0)):
        x = torch.zeros(1, dtype=torch.float64)
        oracle = GaussianNoiseOracle([x], lambda ps: [torch.ones_like(ps[0])], 0.0)
        run_svag(
            oracle, OptimizerInfo("sgd", lr=eta), l, 3, evaluate=lambda: {},
            schedule={"name": "constant", "warmup_steps": 2},
        )  # fmt: skip
        assert float(-x[0]) == pytest.approx(want, rel=1e-12), l


def test_start_step_offsets_the_schedule():
    x = torch.zeros(1, dtype=torch.float64)
    oracle = GaussianNoiseOracle([x], lambda ps: [torch.ones_like(ps[0])], 0.0)
    run_svag(
        oracle, OptimizerInfo("sgd", lr=1.0), 2, 2, evaluate=lambda: {},
        schedule={"name": "step", "milestones": [11], "gamma": 0.1}, start_step=10,
    )  # fmt: skip
    assert float(-x[0]) == pytest.approx(1.0 + 0.1, rel=1e-12)


# ----------------------------------------------------------------------------------------------
# Divergence, optimizers
# ----------------------------------------------------------------------------------------------


def test_divergence_stops_the_run_and_fills_nan():
    x = torch.ones(1, dtype=torch.float64)
    oracle = GaussianNoiseOracle([x], lambda ps: [1e200 * ps[0]], 0.0)
    ticks = []
    run = run_svag(
        oracle, OptimizerInfo("sgd", lr=10.0), 2, 10, evaluate=lambda: {"x2": float(x[0] ** 2)},
        on_step=ticks.append,
    )  # fmt: skip
    assert run.diverged_at is not None and run.diverged_at < 10
    assert math.isnan(run.values["x2"][-1])
    assert len(run.effective_steps) == 11
    assert sum(ticks) == 20  # the progress bar still reaches its total


def test_non_finite_start_is_a_run_error_naming_l_step_and_quantity():
    x = torch.ones(1, dtype=torch.float64)
    oracle = GaussianNoiseOracle([x], lambda ps: [ps[0]], 0.0)
    with pytest.raises(RunError, match=r"l = 2: loss = nan at effective step 0"):
        run_svag(oracle, OptimizerInfo("sgd", lr=0.1), 2, 4,
                 evaluate=lambda: {"loss": math.nan, "x2": 1.0})  # fmt: skip
    assert float(x[0]) == 1.0  # no step taken


@pytest.mark.parametrize(
    "opt,cls",
    [
        (OptimizerInfo("sgd", lr=0.1, momentum=0.9, nesterov=True), torch.optim.SGD),
        (OptimizerInfo("adam", lr=0.1, betas=(0.8, 0.9), eps=1e-6), torch.optim.Adam),
        (OptimizerInfo("adamw", lr=0.1, weight_decay=0.01), torch.optim.AdamW),
        (OptimizerInfo("rmsprop", lr=0.1, alpha=0.9, momentum=0.5), torch.optim.RMSprop),
    ],
)
def test_make_optimizer_uses_pytorch_optimizers(opt, cls):
    o = make_optimizer([torch.zeros(2, requires_grad=True)], opt)
    assert type(o) is cls
    g = o.param_groups[0]
    assert g["lr"] == opt.lr
    if opt.betas:
        assert tuple(g["betas"]) == opt.betas
    if opt.alpha:
        assert g["alpha"] == opt.alpha


def test_warm_start_sets_adam_state_without_moving_parameters():
    p = torch.full((3,), 2.0, requires_grad=True)
    o = make_optimizer([p], OptimizerInfo("adamw", lr=0.1, weight_decay=0.5))
    samples = [[torch.tensor([1.0, 2.0, 3.0])], [torch.tensor([3.0, 2.0, 1.0])]]
    mom = gradient_moments(samples)
    warm_start(o, [p], mom, 4)
    torch.testing.assert_close(p.detach(), torch.full((3,), 2.0))
    st = o.state[p]
    torch.testing.assert_close(st["exp_avg"], torch.tensor([2.0, 2.0, 2.0]))
    # mean_sq + (l − 1)·var = [5, 4, 5] + 3·[2, 0, 2]
    torch.testing.assert_close(st["exp_avg_sq"], torch.tensor([11.0, 4.0, 11.0]))
    assert 1 - 0.999 ** float(st["step"]) == pytest.approx(1.0, abs=1e-9)
    assert o.param_groups[0]["lr"] == 0.1


# ----------------------------------------------------------------------------------------------
# The model oracle: BatchNorm running statistics once per step, evaluation leaves them alone
# ----------------------------------------------------------------------------------------------


def _bn_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3, bias=False), nn.BatchNorm1d(3), nn.Linear(3, 2))


def _data(n=64):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 4, generator=g) * 3 + 1
    y = torch.randint(0, 2, (n,), generator=g)
    return torch.utils.data.TensorDataset(x, y)


def test_model_oracle_updates_running_stats_once_per_step_with_the_first_batch():
    ds = _data()
    model = _bn_model()
    src = BatchSource(ds, torch.device("cpu"))
    oracle = ModelOracle(
        model, nn.functional.cross_entropy, src, 16, torch.Generator().manual_seed(5)
    )
    g1, g2 = oracle.pair()
    # the first batch is what the same generator draws first
    idx1 = torch.randperm(len(ds), generator=torch.Generator().manual_seed(5))[:16]
    with torch.no_grad():
        h = model[0](ds.tensors[0][idx1])
    bn = model[1]
    assert int(bn.num_batches_tracked) == 1
    torch.testing.assert_close(bn.running_mean, 0.1 * h.mean(0))
    torch.testing.assert_close(bn.running_var, 0.9 + 0.1 * h.var(0, unbiased=True))
    assert len(g1) == len(g2) == len(oracle.params)
    assert not torch.equal(g1[0], g2[0])  # two different batches


def test_model_evaluator_leaves_buffers_and_weights_untouched():
    ds = _data()
    model = _bn_model()
    model[1].running_mean.fill_(0.3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    src = BatchSource(ds, torch.device("cpu"))
    ev = ModelEvaluator(
        model, nn.functional.cross_entropy, src, [list(range(16)), list(range(16, 32)),
                                                 list(range(32, 48))],
        held_out=src, held_out_indices=list(range(48, 64)), eval_batch_size=5,
    )  # fmt: skip
    vals = ev()
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], msg=k)
    assert set(vals) == {"train_loss", "train_acc", "G", "N", "norm_sq", "eval_loss", "eval_acc"}
    want = sum(float(p.detach().pow(2).sum()) for p in model.parameters())
    assert vals["norm_sq"] == pytest.approx(want)
    assert 0.0 <= vals["eval_acc"] <= 1.0 and vals["N"] > 0


class _ItemDataset(torch.utils.data.Dataset):
    """The same examples as a TensorDataset, served one item at a time (the DataLoader path)."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        return self.ds[i]


def test_stream_and_evaluation_are_the_same_with_or_without_a_dataloader():
    ds = _data()
    cpu = torch.device("cpu")
    mem, loader = BatchSource(ds, cpu), BatchSource(_ItemDataset(ds), cpu)
    assert mem.in_memory and not loader.in_memory
    a = mem.stream(16, torch.Generator().manual_seed(3))
    b = loader.stream(16, torch.Generator().manual_seed(3))
    for _ in range(3):
        (xa, ya), (xb, yb) = next(a), next(b)
        torch.testing.assert_close(xa, xb)
        torch.testing.assert_close(ya, yb)
    batches = [list(range(16)), list(range(16, 32))]
    vals = [
        ModelEvaluator(_bn_model(), nn.functional.cross_entropy, src, batches, held_out=src,
                       held_out_indices=list(range(32, 64)), eval_batch_size=10)()
        for src in (mem, loader)
    ]  # fmt: skip
    assert vals[0] == vals[1]
