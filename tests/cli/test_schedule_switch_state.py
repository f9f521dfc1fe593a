"""``bscrit schedule`` says what to do with Adam's state at a stage switch (v/κ, m kept,
[MLPA22]) in its printed output, ``--json``, the YAML and beside the Megatron string; the GPT-2
schedule benchmark does it (issue 23, "Schedules")."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from bscrit.artifacts.schedule_io import stages_from_yaml_dict, switch_state
from bscrit.cli import app
from bscrit.optim.registry import OptimizerInfo

ROOT = Path(__file__).resolve().parents[2]
GPT2 = ROOT / "benchmarks" / "schedule_results" / "gpt2"  # AdamW measurements of a real run
runner = CliRunner()


def _text(r) -> str:  # type: ignore[no-untyped-def]
    return " ".join(r.output.split())


def test_adam_schedules_say_divide_v_by_kappa_everywhere(tmp_path: Path) -> None:
    files = [str(GPT2 / f"step-{s:07d}.json") for s in (100, 400, 800)]
    out = tmp_path / "s.yaml"
    r = runner.invoke(app, ["schedule", *files, "--out", str(out), "--seq-length", "64"])
    assert r.exit_code == 0, r.output
    text = _text(r)
    assert "second moment v: divide by kappa = new/old batch size (exp_avg_sq)" in text
    assert "first moment m: keep" in text and "[MLPA22]" in text
    assert "rescale Adam's second moment v by 1/κ at each switch yourself" in text  # Megatron
    raw = out.read_text()
    assert "# at each switch B -> kappa*B: second moment v: divide by kappa" in raw
    d = yaml.safe_load(raw)
    assert d["at_switch"]["second_moment"].startswith("divide by kappa")
    assert d["at_switch"]["first_moment"] == "keep"
    assert stages_from_yaml_dict(d)  # the additive key is read back as before
    r = runner.invoke(app, ["schedule", *files, "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["at_switch"] == d["at_switch"]
    r = runner.invoke(app, ["schedule", *files, "--format", "megatron"])
    assert r.exit_code == 0 and r.stdout.strip().startswith("0:")
    assert "divide by kappa" in " ".join(r.stderr.split())


def test_sgd_keeps_its_state_and_an_unknown_optimizer_gets_the_condition() -> None:
    sgd = switch_state(OptimizerInfo("sgd", lr=0.1, momentum=0.9))
    assert sgd["second_moment"].startswith("none") and sgd["first_moment"].startswith("keep")
    assert "if the optimizer keeps one" in switch_state(None)["second_moment"]
    assert "(square_avg)" in switch_state(OptimizerInfo("rmsprop", lr=0.01))["second_moment"]


def test_the_gpt2_schedule_benchmark_divides_v_by_kappa_and_keeps_m() -> None:
    pytest.importorskip("transformers")
    import torch

    spec = importlib.util.spec_from_file_location(
        "schedule_gpt2_runs", ROOT / "benchmarks" / "schedule_gpt2_runs.py"
    )
    bench = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(bench)  # type: ignore[union-attr]
    w = torch.nn.Parameter(torch.randn(5))
    old = torch.optim.AdamW([w], lr=1e-3, betas=(0.9, 0.999))
    for _ in range(3):
        old.zero_grad()
        (w**2).sum().backward()
        old.step()
    before = {k: v.clone() for k, v in old.state[w].items()}
    new = torch.optim.AdamW([w], lr=2e-3, betas=(0.8, 0.998))
    bench._switch_state(new, old.state_dict(), 4.0)
    after = new.state[w]
    assert torch.allclose(after["exp_avg_sq"], before["exp_avg_sq"] / 4.0)
    assert torch.equal(after["exp_avg"], before["exp_avg"])
    assert new.param_groups[0]["lr"] == 2e-3 and new.param_groups[0]["betas"] == (0.8, 0.998)
