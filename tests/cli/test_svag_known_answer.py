"""`bscrit svag` end to end on a case whose answer is known: least squares on pure label noise.

Model w ∈ R^32 (``nn.Linear(32, 1, bias=False)``, from w = 0), x ~ N(0, I), y = ε ~ N(0, 1)
(n = 4096), mean squared error: the Hessian is 2·XᵀX/n ≈ 2I and the minimum is w* ≈ 0, so
every coordinate is the OU process of tests/unit/test_svag_results.py with a = 2: SGD/SDE of
R = ‖w‖² (and of G ≈ 4‖w‖²) is 2/(2 − 2η). With C² = 2 that is inside [1/C, C] for
η = 0.025 (ratio 1.03) and outside for η = 0.4 (ratio 1.67): ``sde_holds`` and ``sde_fails``.
No weight decay: no relaxation time, so the run length is given and the tail window is the
last half. A run that diverges (η = 1.5, past the stability edge ηa = 2) is an error, exit 3.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from bscrit.cli import app

runner = CliRunner()

FACTORY = """
import torch
from torch import nn


def make_model():
    m = nn.Linear(32, 1, bias=False)
    nn.init.zeros_(m.weight)
    return m


def make_data(n=4096, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 32, generator=g)
    y = torch.randn(n, 1, generator=g)
    return torch.utils.data.TensorDataset(x, y)
"""


def _spec(tmp: Path, lr: float) -> Path:
    (tmp / "lsq.py").write_text(FACTORY)
    torch.save({"model": {"weight": torch.zeros(1, 32)}}, tmp / "ckpt.pt")
    spec = tmp / f"lsq-{lr}.yaml"
    spec.write_text(
        "model: {factory: lsq.py:make_model}\n"
        "checkpoint: {path: ckpt.pt, key: model}\n"
        "data: {factory: lsq.py:make_data}\n"
        "loss: mse\nbatch_size: 32\n"
        f"optimizer: {{name: sgd, lr: {lr}, weight_decay: 0.0}}\n"
        "measure: {device: cpu, seed: 0}\n"
    )
    return spec


def _svag(spec: Path, *extra: str):
    return runner.invoke(app, ["svag", str(spec), "-t", "32", "--l", "1,2,4", "-e", "200",
                               "--eval-every", "2", "--eval-batches", "8", "-q", "--yes",
                               "--json", *extra])  # fmt: skip


@pytest.mark.parametrize(("lr", "code"), [(0.025, "sde_holds"), (0.4, "sde_fails")])
def test_least_squares_on_noise_holds_for_small_lr_and_fails_near_the_edge(tmp_path, lr, code):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # the holding case needs a longer tail: with 200 steps R's interval reaches across 1/C
        # (0.83 [0.70, 0.99]), which is inconclusive, not a hold (issue 23)
        steps = ["-e", "800"] if code == "sde_holds" else []
        r = _svag(_spec(tmp_path, lr), "--decide-on", "def5.1", *steps)
    finally:
        torch.set_num_threads(threads)
    d = json.loads(r.stdout[r.stdout.index("{") :])
    v = d["verdict"]
    assert v["code"] == code, v["text"]
    assert r.exit_code == {"sde_holds": 0, "sde_fails": 1}[code], r.output
    assert d["relaxation_steps"] is None and "last half" in v["tail_window"]["note"]
    ratios = {x["metric"]: x for x in v["ratios"]}
    lo, hi = ratios["norm_sq"]["ci95"]
    if code == "sde_holds":  # the closed form 2/(2 − 2η) = 1.03, up to the O(1/l) SDE error
        assert lo <= 2 / (2 - 2 * lr) * 1.1 and hi >= 1 / 1.1
    else:  # 2/(2 − 0.8) = 1.67 > C = √2, more along the Hessian's larger directions
        assert lo > math.sqrt(2) and "norm_sq" in v["failing"]


def test_a_diverging_run_is_an_error_exit_3(tmp_path):
    r = _svag(_spec(tmp_path, 1.5))
    assert r.exit_code == 3, r.output
    assert "diverged" in r.output and "l = 1" in r.output and "Traceback" not in r.output


def test_rtol_and_z_are_deprecated_and_ignored(tmp_path):
    r = _svag(_spec(tmp_path, 0.025), "--rtol", "0.5")
    assert r.exit_code == 0, r.output  # sde_holds
    assert "--rtol and --z are deprecated and ignored" in " ".join(r.output.split())


@pytest.mark.parametrize(
    ("args", "message"), [(["--c2", "1"], "must be > 1"), (["--decide-on", "R"], "losses, def5.1")]
)
def test_bad_c2_or_decide_on_exit_2_before_running(tmp_path, args, message):
    r = _svag(_spec(tmp_path, 0.025), *args)
    assert r.exit_code == 2 and message in r.output
