"""stats.preconditioned: G_P = ‖P∇L‖², N_P = Tr(PΣP) with P = diag(1/(√v̂ + ε)) from Adam's
saved state (docs/theory.md §5), against a brute-force computation on the same batches."""

from __future__ import annotations

import functools
import operator
import shutil
from pathlib import Path

import pytest
import torch
from reference import mse, tiny_problem

from bscrit.engine.data import sample_batches
from bscrit.engine.loop import measure_model, trainable_parameters
from bscrit.engine.precondition import build_preconditioner
from bscrit.optim.registry import OptimizerInfo
from bscrit.stats.estimators import noise_stats
from bscrit.stats.summary import set_sums

ASSETS = Path(__file__).resolve().parents[1] / "assets"


def _adam_state(model, ds, steps: int = 5, amsgrad: bool = False):
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.9, 0.99), amsgrad=amsgrad)
    x, y = ds.tensors
    for i in range(steps):
        opt.zero_grad()
        mse(model(x[i * 8 : i * 8 + 8]), y[i * 8 : i * 8 + 8]).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return opt.state_dict()


def _brute(model, ds, rows, factors):
    """Unbiased Ĝ, N̂ of the preconditioned batch gradients P g_b, computed directly."""
    x, y = ds.tensors
    ps = [p for _, p in trainable_parameters(model)]
    vs = []
    for r in rows:
        g = torch.autograd.grad(mse(model(x[r]), y[r]), ps)
        vs.append(torch.cat([(f * t).reshape(-1) for f, t in zip(factors, g)]))
    v = torch.stack(vs)
    k = len(rows)
    s, q = v.sum(0), float((v * v).sum())
    n_hat = (q - float(s @ s) / k) / (k - 1)
    return float(s @ s) / k**2 - n_hat / k, n_hat


@pytest.mark.parametrize("amsgrad", [False, True])
def test_preconditioned_sums_match_brute_force(amsgrad):
    model, ds = tiny_problem(48)
    state = _adam_state(model, ds, amsgrad=amsgrad)
    params = [p for _, p in trainable_parameters(model)]
    opt = OptimizerInfo("adam", lr=1e-2, betas=(0.9, 0.99))
    pre, why = build_preconditioner(params, state, opt)
    assert pre is not None, why
    # P = 1/(sqrt(v / (1 - beta2^t)) + eps), v = max_exp_avg_sq under amsgrad
    st = state["state"][0]
    v = st["max_exp_avg_sq" if amsgrad else "exp_avg_sq"] / (1 - 0.99 ** float(st["step"]))
    assert torch.allclose(pre.factors[0], 1 / (v.sqrt() + 1e-8))
    rows = sample_batches(48, 6, 40, seed=3)
    raw = measure_model(model, ds, mse, batch_size=6, batch_rows=rows, groups=4, mode="eval",
                        preconditioner=pre.factors)  # fmt: skip
    pre_sums = [t.preconditioned for t in raw.tensors]
    s = noise_stats(functools.reduce(operator.add, pre_sums))
    g, n = _brute(model, ds, rows, pre.factors)
    assert s.G.value == pytest.approx(g, rel=1e-9, abs=1e-12)
    assert s.N.value == pytest.approx(n, rel=1e-9)
    plain = noise_stats(set_sums(raw.tensors))  # the raw statistics are unchanged by P
    g0, n0 = _brute(model, ds, rows, [torch.ones_like(p) for p in params])
    assert plain.N.value == pytest.approx(n0, rel=1e-9)


def test_no_preconditioner_for_sgd_or_a_mismatched_state():
    model, ds = tiny_problem(48)
    state = _adam_state(model, ds)
    params = [p for _, p in trainable_parameters(model)]
    pre, why = build_preconditioner(params, state, OptimizerInfo("sgd", lr=0.1))
    assert pre is None and "no preconditioner" in why
    pre, why = build_preconditioner(params[:2], state, OptimizerInfo("adam", lr=0.1))
    assert pre is None and "cannot be matched" in why
    pre, why = build_preconditioner(params, None, OptimizerInfo("adam", lr=0.1))
    assert pre is None and "no optimizer state" in why


def test_measure_cli_writes_stats_preconditioned(tmp_path):
    """An Adam checkpoint with its optimizer state: the JSON has stats.preconditioned; an SGD
    checkpoint: null with preconditioned_reason."""
    import json

    from typer.testing import CliRunner

    from bscrit.cli import app

    for f in ("tiny.py", "valid.yaml"):
        shutil.copy(ASSETS / f, tmp_path / f)
    import importlib.util

    spec_mod = importlib.util.spec_from_file_location("tiny_asset", tmp_path / "tiny.py")
    tiny = importlib.util.module_from_spec(spec_mod)
    spec_mod.loader.exec_module(tiny)  # type: ignore[union-attr]
    model, ds = tiny.make_model(width=8), tiny.make_dataset(n=64)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = ds.tensors if hasattr(ds, "tensors") else (None, None)
    loss = torch.nn.functional.cross_entropy(model(x[:8]), y[:8])
    loss.backward()
    opt.step()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, tmp_path / "a.pt")
    spec = tmp_path / "valid.yaml"
    spec.write_text(spec.read_text().replace(
        "optimizer: {name: sgd, lr: 0.1, momentum: 0.9, weight_decay: 5.0e-4}",
        "optimizer: {name: adamw, lr: 0.001, weight_decay: 0.01}"))  # fmt: skip
    r = CliRunner().invoke(app, ["measure", str(spec), "-c", str(tmp_path / "a.pt"), "--json",
                                 "-q", "-k", "16", "--mode", "eval"])  # fmt: skip
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    pre = d["stats"]["preconditioned"]
    assert (
        pre is not None and pre["G"] > 0 and pre["N"] > 0 and "exp_avg_sq" in pre["preconditioner"]
    )
    assert pre["num_params"] == d["stats"]["all"]["num_params"]
    shutil.copy(ASSETS / "tiny.pt", tmp_path / "tiny.pt")
    sgd = spec.read_text().replace("{name: adamw, lr: 0.001, weight_decay: 0.01}",
                                   "{name: sgd, lr: 0.1}")  # fmt: skip
    spec.write_text(sgd)
    r = CliRunner().invoke(app, ["measure", str(spec), "-c", str(tmp_path / "tiny.pt"),
                                 "--json", "-q", "-k", "16"])  # fmt: skip
    d = json.loads(r.stdout)
    assert d["stats"]["preconditioned"] is None and d["stats"]["preconditioned_reason"]
