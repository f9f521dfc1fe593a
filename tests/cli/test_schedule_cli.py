"""``bscrit schedule`` on the command line, from real measurements of the tiny test checkpoint
(``measure --step``): points, stages, Megatron string, YAML and figure; bad inputs exit 2 naming
the file. Also ``measure --step`` / ``--examples-seen`` and what the artifact records."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from bscrit.artifacts.measurement import load_measurement
from bscrit.artifacts.schedule_io import stages_from_yaml_dict
from bscrit.cli import app
from bscrit.theory.prediction import predict_files

ASSETS = Path(__file__).resolve().parents[1] / "assets"
runner = CliRunner()


def _text(r) -> str:  # type: ignore[no-untyped-def]
    return " ".join(r.output.split())


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """Two measurements of the tiny checkpoint, given steps 100 and 3000 with ``--step``."""
    work = tmp_path_factory.mktemp("schedule")
    for name in ("tiny.py", "tiny.pt", "valid.yaml"):
        shutil.copy(ASSETS / name, work / name)
    outs = []
    for step in (100, 3000):
        out = work / f"m{step}.json"
        r = runner.invoke(app, ["measure", str(work / "valid.yaml"), "--step", str(step),
                                "--batches", "16", "--quiet", "--per-tensor", "none",
                                "--out", str(out)])  # fmt: skip
        assert r.exit_code == 0, r.output
        outs.append(out)
    return work, outs


def test_measure_records_the_step_and_examples_seen(measured):
    _, (m100, m3000) = measured
    c = load_measurement(m3000).checkpoints[0]
    assert (c.step, c.examples_seen, c.tokens_seen) == (3000, 3000 * 8, None)  # B = 8
    d = json.loads(m100.read_text())["checkpoints"][0]
    assert d["step"] == 100 and d["examples_seen"] == 800 and d["tokens_seen"] is None


def test_schedule_json_has_the_contract_and_predicts_numbers(measured):
    _, files = measured
    r = runner.invoke(app, ["schedule", *map(str, files), "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["kind"] == "bscrit.schedule" and d["schema"] == 1
    assert [p["step"] for p in d["points"]] == [100, 3000]
    for p, f in zip(d["points"], files, strict=True):
        base = predict_files([f]).base  # each point equals `bscrit predict` on its file
        assert p["b_star"] == pytest.approx(base.b_star, rel=1e-12)
        assert p["interval_scope"] == "checkpoint"
    # τ = 1/(2 · 0.1/(1 − 0.9) · 5e-4) = 1000 steps: step 100 is earlier, heuristic
    assert d["points"][0]["heuristic"]
    st = d["stages"]
    assert st[0]["start_step"] == 0 and st[0]["batch_size"] == 8
    assert all(a["batch_size"] <= b["batch_size"] for a, b in zip(st, st[1:]))
    for s in st:
        assert {"start_step", "start_examples", "batch_size", "hyperparameters"} <= set(s)
        assert s["hyperparameters"]["lr"] == pytest.approx(0.1 * s["batch_size"] / 8)


def test_schedule_table_megatron_yaml_and_plot(measured, tmp_path):
    _, files = measured
    y, png = tmp_path / "s.yaml", tmp_path / "s.png"
    r = runner.invoke(app, ["schedule", *map(str, files), "--out", str(y), "--plot", str(png)])
    assert r.exit_code == 0, r.output
    assert "Batch-size warm-up (powers of two, from B = 8)" in _text(r)
    assert "heuristic" in r.stdout and png.stat().st_size > 1000
    stages = stages_from_yaml_dict(yaml.safe_load(y.read_text()), str(y))
    assert stages[0].batch_size == 8 and stages[0].start_examples == 0
    m = runner.invoke(app, ["schedule", *map(str, files), "--format", "megatron"])
    assert m.exit_code == 0, m.output
    line = m.stdout.strip()
    assert line.startswith("0:8") and line == " ".join(
        f"{s.start_examples}:{s.batch_size}" if s.start_examples < 1000 or s.start_examples % 1000
        else f"{s.start_examples // 1000}K:{s.batch_size}" for s in stages
    )  # fmt: skip


def test_bad_inputs_exit_2_naming_the_file(measured, tmp_path):
    work, _ = measured
    missing = tmp_path / "nope.json"
    r = runner.invoke(app, ["schedule", str(missing)])
    assert r.exit_code == 2 and str(missing) in _text(r) and "Traceback" not in r.output
    ck = tmp_path / "ck.pt"
    ck.write_bytes((work / "tiny.pt").read_bytes())
    r = runner.invoke(app, ["schedule", str(ck)])
    assert r.exit_code == 2 and str(ck) in _text(r), r.output
    no_step = tmp_path / "nostep.json"
    d = json.loads(Path(measured[1][0]).read_text())
    d["checkpoints"][0]["step"] = d["checkpoints"][0]["examples_seen"] = None
    no_step.write_text(json.dumps(d))
    r = runner.invoke(app, ["schedule", str(no_step)])
    assert r.exit_code == 2 and str(no_step) in _text(r) and "--step" in _text(r), r.output
    bad = tmp_path / "series.jsonl"
    bad.write_text('{"step": 3}\n')
    r = runner.invoke(app, ["schedule", str(bad)])
    assert r.exit_code == 2 and f"{bad}:1" in _text(r), r.output


def test_step_names_one_checkpoint(measured, tmp_path):
    work, _ = measured
    shutil.copy(work / "tiny.pt", tmp_path / "other.pt")
    spec, a, b = work / "valid.yaml", work / "tiny.pt", tmp_path / "other.pt"
    r = runner.invoke(app, ["measure", str(spec), "-c", str(a), "-c", str(b), "--step", "5"])
    assert r.exit_code == 2 and "--step names the position of one checkpoint" in _text(r)


def test_a_saved_examples_seen_is_recorded(measured, tmp_path):
    work, _ = measured
    ck = torch.load(work / "tiny.pt", weights_only=True)
    torch.save({**ck, "step": 40, "examples_seen": 123}, tmp_path / "c.pt")
    out = tmp_path / "m.json"
    r = runner.invoke(app, ["measure", str(work / "valid.yaml"), "-c", str(tmp_path / "c.pt"),
                            "--batches", "16", "--quiet", "--per-tensor", "none",
                            "--out", str(out)])  # fmt: skip
    assert r.exit_code == 0, r.output
    c = load_measurement(out).checkpoints[0]
    assert (c.step, c.examples_seen) == (40, 123)


def test_step_with_sample_steps_is_refused(measured):
    work, _ = measured
    r = runner.invoke(app, ["measure", str(work / "valid.yaml"), "--step", "5",
                            "--sample-steps", "10", "--samples", "2", "--yes"])  # fmt: skip
    assert r.exit_code == 2 and "--step places a checkpoint on the run's timeline" in _text(r)
    assert "--sample-steps" in _text(r) and "Traceback" not in r.output
