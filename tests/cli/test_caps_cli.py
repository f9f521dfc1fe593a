"""Unbounded work (issue 26): a plan over :data:`bscrit.cli.limits.MAX_PASSES` forward-backward
passes is refused after its cost is shown unless ``--yes``; the counts built before the cost is
known have hard caps on their options. Exit 2, the option and the cap named, nothing run."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bscrit.cli import app
from bscrit.cli.limits import MAX_EVAL_BATCHES, MAX_PASSES, MAX_POINTS, MAX_SAMPLES, MAX_SEEDS

ASSETS = Path(__file__).resolve().parents[1] / "assets"
runner = CliRunner()
CAP = f"more than the {MAX_PASSES:,} a command starts without --yes"


@pytest.fixture()
def work(tmp_path: Path) -> Path:
    for name in ("tiny.py", "tiny.pt", "valid.yaml"):
        shutil.copy(ASSETS / name, tmp_path / name)
    return tmp_path


class Started(KeyboardInterrupt):
    """Raised where the work would start: the command got past its caps (exit 130)."""


def _never(*args: object, **kwargs: object) -> None:
    raise AssertionError("the work started")


def _start(*args: object, **kwargs: object) -> None:
    raise Started


def _text(r: object) -> str:
    return " ".join(r.output.split())  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("extra", "options"),
    [
        (["--l", "1,2,10000000"], "--l"),
        (["--effective-steps", "100000000"], "--effective-steps"),
        (["--relaxation-times", "1000000"], "--relaxation-times"),
    ],
)
def test_svag_over_the_cap_is_refused_after_its_cost(
    work: Path, monkeypatch: pytest.MonkeyPatch, extra: list[str], options: str
) -> None:
    import bscrit.runs.svag.run

    monkeypatch.setattr(bscrit.runs.svag.run, "run_plan", _never)
    out = work / "out"
    r = runner.invoke(
        app, ["svag", str(work / "valid.yaml"), "-t", "16", *extra, "--out", str(out)]
    )
    text = _text(r)
    assert r.exit_code == 2, r.output
    assert "Cost:" in text and CAP in text and options in text and "Traceback" not in text
    assert text.index("Cost:") < text.index(CAP)  # the plan first, then the refusal
    assert not out.exists()


def test_svag_over_the_cap_runs_with_yes(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import bscrit.runs.svag.run

    monkeypatch.setattr(bscrit.runs.svag.run, "run_plan", _start)
    r = runner.invoke(app, ["svag", str(work / "valid.yaml"), "-t", "16", "--l", "1,2,10000000",
                            "--yes", "-q"])  # fmt: skip
    assert r.exit_code == 130, r.output


@pytest.mark.parametrize(
    "extra", [["--examples", "100000000000"], ["--examples", "10000000", "--seeds", "1000"]]
)
def test_confirm_over_the_cap_is_refused(
    work: Path, monkeypatch: pytest.MonkeyPatch, extra: list[str]
) -> None:
    import bscrit.runs.confirm.run

    monkeypatch.setattr(bscrit.runs.confirm.run, "run_confirm", _never)
    r = runner.invoke(app, ["confirm", str(work / "valid.yaml"), "-t", "16", *extra])
    text = _text(r)
    assert r.exit_code == 2, r.output
    assert "Cost:" in text and CAP in text and "--examples, --seeds, --points" in text


def test_confirm_over_the_cap_runs_with_yes(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import bscrit.runs.confirm.run

    monkeypatch.setattr(bscrit.runs.confirm.run, "run_confirm", _start)
    r = runner.invoke(app, ["confirm", str(work / "valid.yaml"), "-t", "16", "--examples",
                            "100000000000", "--yes", "-q"])  # fmt: skip
    assert r.exit_code == 130, r.output


@pytest.mark.parametrize(
    ("command", "option", "cap"),
    [
        ("confirm", "--seeds", MAX_SEEDS),
        ("confirm", "--points", MAX_POINTS),
        ("confirm", "--eval-batches", MAX_EVAL_BATCHES),
        ("svag", "--eval-batches", MAX_EVAL_BATCHES),
        ("measure", "--samples", MAX_SAMPLES),
    ],
)
def test_counts_built_before_the_cost_have_hard_caps(
    work: Path, command: str, option: str, cap: int
) -> None:
    """Beyond these the plan itself would take the time or the memory: refused even with --yes."""
    extra = ["-t", "16"] if command != "measure" else []
    r = runner.invoke(
        app, [command, str(work / "valid.yaml"), *extra, option, str(cap + 1), "--yes"]
    )
    text = _text(r)
    assert r.exit_code == 2, r.output
    assert option in text and f"{cap}" in text and "Traceback" not in text


@pytest.mark.parametrize("option", ["--batches", "--max-batches"])
def test_measure_batches_over_the_cap_are_refused_unless_yes(
    work: Path, monkeypatch: pytest.MonkeyPatch, option: str
) -> None:
    import bscrit.workflows.measure

    monkeypatch.setattr(bscrit.workflows.measure, "measure_session", _never)
    extra = ["--target-rel-error", "0.1"] if option == "--max-batches" else []
    args = ["measure", str(work / "valid.yaml"), option, str(2 * MAX_PASSES), *extra, "-q"]
    r = runner.invoke(app, args)
    text = _text(r)
    assert r.exit_code == 2 and CAP in text and f"{option} 20,000,000" in text, r.output
    monkeypatch.setattr(bscrit.workflows.measure, "measure_session", _start)
    assert runner.invoke(app, [*args, "--yes"]).exit_code == 130


def test_measure_batches_of_the_spec_over_the_cap_are_refused(
    work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bscrit.workflows.measure

    monkeypatch.setattr(bscrit.workflows.measure, "measure_session", _never)
    spec = work / "big.yaml"
    spec.write_text((work / "valid.yaml").read_text().replace("batches: auto", "batches: 20000000"))
    r = runner.invoke(app, ["measure", str(spec), "-q"])
    assert r.exit_code == 2 and "the spec's measure.batches 20,000,000" in _text(r), r.output


def test_measure_sample_steps_over_the_cap_are_refused_after_the_cost(work: Path) -> None:
    r = runner.invoke(
        app, ["measure", str(work / "valid.yaml"), "--sample-steps", "100000000", "-q"]
    )
    text = _text(r)
    assert r.exit_code == 2, r.output
    assert "Cost: 100,000,000 training steps" in text and CAP in text and "--sample-steps" in text
    assert text.index("Cost:") < text.index(CAP)


def test_measure_nproc_beyond_the_cores_is_refused_unless_yes(
    work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bscrit.engine.launch

    monkeypatch.setattr(bscrit.engine.launch, "launch", _never)
    many = str((os.cpu_count() or 1) + 1)
    r = runner.invoke(app, ["measure", str(work / "valid.yaml"), "--nproc", many, "-q"])
    assert r.exit_code == 2 and f"--nproc {many} starts more processes" in _text(r), r.output
    monkeypatch.setattr(bscrit.engine.launch, "launch", lambda n, a: 0)
    monkeypatch.setattr(bscrit.engine.launch, "measure_args_from_argv", lambda argv: [])
    r = runner.invoke(app, ["measure", str(work / "valid.yaml"), "--nproc", many, "-q", "--yes"])
    assert r.exit_code == 0, r.output


def test_demo_prints_its_plan_first(tmp_path: Path) -> None:
    from bscrit.cli.demo import plan_line
    from bscrit.workflows.demo import DemoConfig

    line = plan_line(DemoConfig.quick(), True, svag=True, confirm=True)
    assert line.startswith("plan: train 60 epochs") and "about 1 min" in line
    assert "svag l = 1,2,4" in line and "confirm" in line
