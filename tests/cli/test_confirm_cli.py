"""`bscrit confirm` end to end on a tiny linear regression (a few seconds on one CPU thread).

y = x·w* + noise with x ~ N(0, I₄) and the mean squared error: the Hessian is 2I, so SGD is stable
for η < 1. From a checkpoint near w*, B = 8 with η = 0.05: at B' = 16 (η' = 0.1, linear rule) the
scaled run reaches the same held-out loss (holds); at B' = 512 (η' = 3.2) it diverges (fails,
exit 1).
"""

from __future__ import annotations

import hashlib
import json
import textwrap
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from bscrit.cli import app
from bscrit.runs.confirm.verdict import DEFAULT_TOLERANCE

runner = CliRunner()

FACTORIES = """
import torch
from torch import nn


def make_model():
    torch.manual_seed(0)
    return nn.Linear(4, 1)


def make_dataset(n=1024, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    w = torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    y = x @ w + 0.5 * torch.randn(n, 1, generator=g)
    return torch.utils.data.TensorDataset(x, y)
"""


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("confirm")
    (d / "linreg.py").write_text(FACTORIES)
    model = torch.nn.Linear(4, 1)
    with torch.no_grad():  # near the optimum w*, bias 0
        model.weight.copy_(torch.tensor([[1.05, -1.95, 0.45, 3.02]]))
        model.bias.zero_()
    torch.save({"model": model.state_dict()}, d / "ckpt.pt")
    (d / "spec.yaml").write_text(
        textwrap.dedent("""
        model: {factory: linreg.py:make_model}
        checkpoint: {path: ckpt.pt, key: model}
        data: {factory: linreg.py:make_dataset}
        eval_data: {factory: linreg.py:make_dataset, kwargs: {n: 512, seed: 1}}
        loss: mse
        batch_size: 8
        optimizer: {name: sgd, lr: 0.05}
        measure: {seed: 0, device: cpu}
        """)
    )
    return d / "spec.yaml"


FAST = ["--examples", "4096", "--seeds", "3", "--points", "8", "--eval-batches", "2", "--quiet"]


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_small_kappa_holds_with_json_csv_png_and_the_checkpoint_untouched(spec, tmp_path):
    torch.set_num_threads(1)
    ckpt = spec.parent / "ckpt.pt"
    sha = _sha(ckpt)
    out, png = tmp_path / "c16", tmp_path / "c16.png"
    r = runner.invoke(app, ["confirm", str(spec), "-t", "16", *FAST, "--out", str(out),
                            "--plot", str(png)])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "forward-backward passes" in r.output and "non-interactive" in r.output
    assert "verdict (holds)" in r.output
    d = json.loads((out / "confirm.json").read_text())
    assert d["kind"] == "bscrit.confirm" and d["verdict"] == "holds"
    assert (d["base_batch_size"], d["target_batch_size"]) == (8, 16)
    assert d["hyperparameters"]["target"]["lr"] == pytest.approx(0.1)
    assert d["relative_difference"]["ci95"][1] < d["tolerance"] == DEFAULT_TOLERANCE == 0.10
    assert len(d["losses"]["base"]) == len(d["losses"]["target"]) == 3
    assert d["metric"] == "eval_loss" and "held-out loss" in d["criterion"]
    assert (out / "curves.csv").read_text().startswith("seed,branch,batch_size,step,examples")
    assert png.stat().st_size > 0
    assert _sha(ckpt) == sha


def test_huge_kappa_diverges_and_fails_with_exit_1(spec):
    torch.set_num_threads(1)
    r = runner.invoke(app, ["confirm", str(spec), "-t", "512", *FAST, "--json"])
    assert r.exit_code == 1, r.output
    d = json.loads(r.stdout)
    assert d["verdict"] == "fails"
    assert d["relative_difference"]["diverged"]
    assert d["hyperparameters"]["target"]["lr"] == pytest.approx(3.2)


def test_inconclusive_exits_5_unless_allowed(spec):
    """One seed gives no interval: inconclusive, which a CI gate must not read as holds."""
    torch.set_num_threads(1)
    one = ["--examples", "2048", "--seeds", "1", "--points", "4", "--eval-batches", "2", "-q"]
    r = runner.invoke(app, ["confirm", str(spec), "-t", "16", *one, "--json"])
    assert r.exit_code == 5, r.output
    assert json.loads(r.stdout)["verdict"] == "inconclusive"
    r = runner.invoke(app, ["confirm", str(spec), "-t", "16", *one, "--allow-inconclusive"])
    assert r.exit_code == 0, r.output
    assert "verdict (inconclusive)" in r.output


def test_a_tiny_tolerance_is_inconclusive_or_worse_and_bad_input_exits_2(spec, tmp_path):
    r = runner.invoke(app, ["confirm", str(spec), "-t", "2048", *FAST])
    assert r.exit_code == 2 and "exceeds the 1024 training examples" in r.output
    r = runner.invoke(app, ["confirm", str(spec), *FAST])
    assert r.exit_code == 2 and "--target-batch-size" in r.output
    r = runner.invoke(app, ["confirm", str(spec), "-t", "16", "--tolerance", "0", *FAST])
    assert r.exit_code == 2 and "--tolerance" in r.output


def test_from_measurement_confirms_at_the_top_of_predicts_range(spec, tmp_path):
    from bscrit.theory.prediction import predict_files
    from bscrit.theory.targets import confirmation_target

    torch.set_num_threads(1)
    m = tmp_path / "m.json"
    r = runner.invoke(app, ["measure", str(spec), "--out", str(m), "--quiet"])
    assert r.exit_code == 0, r.output
    expected, _ = confirmation_target(predict_files([m]))
    r = runner.invoke(app, ["confirm", str(spec), "--from-measurement", str(m), *FAST, "--json"])
    assert r.exit_code in (0, 1, 5), r.output  # a verdict, never an error
    code = json.loads(r.stdout)["verdict"]
    assert r.exit_code == {"holds": 0, "fails": 1, "inconclusive": 5}[code]
    assert json.loads(r.stdout)["target_batch_size"] == expected
    assert f"B' = {expected}: " in r.stderr


def test_an_absolute_tolerance_compares_l_b_prime_minus_l_b_in_the_losss_units(spec, tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "abs"
    r = runner.invoke(app, ["confirm", str(spec), "-t", "16", *FAST, "--tolerance-abs", "0.05",
                            "--out", str(out), "--allow-inconclusive"])  # fmt: skip
    assert r.exit_code in (0, 1), r.output
    d = json.loads((out / "confirm.json").read_text())
    assert d["tolerance"] == 0.05 and d["tolerance_unit"] == "absolute"
    per_seed = d["relative_difference"]["per_seed"]
    base, target = d["losses"]["base"], d["losses"]["target"]
    assert per_seed == pytest.approx([t - b for b, t in zip(base, target, strict=True)])
    lo, hi = d["relative_difference"]["ci95"]
    assert d["verdict"] == ("holds" if hi < 0.05 else "fails" if lo > 0.05 else "inconclusive")
    assert "δ = 0.05 (absolute, in the loss's units, e.g. nats)" in r.output
