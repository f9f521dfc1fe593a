"""`bscrit demo --quick`: the whole pipeline on the digits example, as a new user runs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bscrit.artifacts.files import read_json
from bscrit.artifacts.measurement import load_measurement
from bscrit.cli import app


@pytest.mark.slow
def test_quick_demo_runs_the_pipeline_and_writes_every_artifact(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    r = CliRunner().invoke(app, ["demo", "--quick", "--workdir", str(work), "--json"])
    assert r.exit_code == 0, r.output
    for step in ("[1/6]", "[2/6]", "[3/6]", "[4/6]", "[5/6]", "[6/6]"):
        assert step in r.output
    summary = json.loads(r.stdout[r.stdout.rindex("\n{") :])
    m = load_measurement(summary["measurement"])
    assert m.batch_size == 32 and len(m.checkpoints) == 2
    assert m.scale_invariant is not None and m.scale_invariant_fraction == 1.0
    assert m.all.G > 0 and m.all.N > 0
    p = read_json(summary["prediction"])
    assert p["measurements"][0]["b_star"] == pytest.approx(summary["b_star"])
    assert p["recommended"]["min"] == 32
    assert summary["svag_verdict"] in {"sde_holds", "sde_fails", "inconclusive", "not_converged"}
    assert Path(summary["svag_plot"]).stat().st_size > 10_000  # a real PNG
    assert (work / "svag" / "trajectories.csv").exists()
    # step 6 confirms where svag looked (and at twice that when it fits n = 1500)
    targets = [c["target_batch_size"] for c in summary["confirm"]]
    assert targets[0] == summary["svag_target_batch_size"] and targets[1:] in ([], [2 * targets[0]])
    assert all(c["code"] in {"holds", "fails", "inconclusive"} for c in summary["confirm"])
    for t in targets:
        assert (work / f"confirm-{t}" / "confirm.json").exists()
        assert (work / f"confirm-{t}.png").stat().st_size > 10_000
    # the last lines before the JSON: one recommendation, and what decided it (rich may wrap)
    concl = summary["conclusion"]
    text = r.stdout[: r.stdout.rindex("\n{")]
    assert concl["lines"] and "what you can do" in text
    assert "".join(text.split()).endswith("".join(concl["lines"][-1].split()))
    # two checkpoints 20 epochs apart are one draw: the advice names what would give more
    assert "for the equilibrium: several checkpoints ≥ 10000 steps = 1/(2ηλ) apart" in " ".join(
        r.output.split()
    )
    assert (work / "spec.yaml").exists() and (work / "measurement.params.csv").exists()


@pytest.mark.slow
def test_interrupt_during_the_svag_step_says_what_was_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bscrit.runs.svag.results

    def interrupted(*a: object, **k: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(bscrit.runs.svag.results, "write_svag", interrupted)  # after the figure
    work = tmp_path / "demo"
    r = CliRunner().invoke(app, ["demo", "--quick", "--workdir", str(work)])
    assert r.exit_code == 130, r.output
    assert "Traceback" not in r.output and "no output file was written" not in r.output
    err = "".join(r.stderr.split())  # rich wraps the long list (at spaces or inside a path)
    assert "interrupted;writtenbeforeit:" in err
    for f in ("spec.yaml", "measurement.json", "measurement.params.csv", "prediction.json",
              "svag.png", "checkpoints/final_epoch0040.pt"):  # fmt: skip
        assert str(work / f).replace(" ", "") in err and (work / f).exists(), f
    assert not (work / "svag").exists()
