"""The equilibrium on the command line: ``-c`` folders and globs with ``--last``, ``--sample-steps``
with its cost first, and what the intervals cover in ``measure`` and ``predict`` output."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from bscrit.artifacts.measurement import load_measurement
from bscrit.cli import app

ASSETS = Path(__file__).resolve().parents[1] / "assets"
runner = CliRunner()


@pytest.fixture()
def work(tmp_path: Path) -> Path:
    for name in ("tiny.py", "tiny.pt", "valid.yaml"):
        shutil.copy(ASSETS / name, tmp_path / name)
    return tmp_path


def _measure(*args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(app, ["measure", *args, "--quiet", "--per-tensor", "none"])


def _text(r) -> str:  # type: ignore[no-untyped-def]
    """The output with the console's line wrapping undone."""
    return " ".join(r.output.split())


def test_a_folder_with_last_k_measures_the_last_by_saved_step(work: Path) -> None:
    runs = work / "runs"
    runs.mkdir()
    ckpt = torch.load(work / "tiny.pt", weights_only=True)
    for name, step in (("late.pt", 3000), ("early.pt", 1000), ("mid.pt", 2000)):
        torch.save({**ckpt, "step": step}, runs / name)
    out = work / "m.json"
    r = _measure(str(work / "valid.yaml"), "-c", str(runs), "--last", "2", "--batches", "16",
                 "--out", str(out))  # fmt: skip
    assert r.exit_code == 0, r.output
    m = load_measurement(out)
    assert [Path(c.path).name for c in m.checkpoints] == ["mid.pt", "late.pt"]
    assert [c.step for c in m.checkpoints] == [2000, 3000]
    assert "the last 2 of 3 checkpoints, ordered by the step saved in each" in _text(r)
    # τ = 1/(2·(0.1/(1 − 0.9))·5e-4) = 1000 steps: 1000 apart is one τ, independent draws
    assert m.equilibrium_interval is not None and m.equilibrium_interval.draws == 2


def test_a_glob_that_matches_nothing_is_a_clear_error(work: Path) -> None:
    r = _measure(str(work / "valid.yaml"), "-c", str(work / "runs" / "epoch*.pt"))
    assert r.exit_code == 2 and "no checkpoint matches this pattern" in _text(r), r.output
    assert "Traceback" not in r.output


def test_one_checkpoint_says_its_intervals_cover_that_point_only(work: Path) -> None:
    out = work / "m.json"
    r = _measure(str(work / "valid.yaml"), "--batches", "16", "--out", str(out))
    assert r.exit_code == 0, r.output
    assert "intervals: the batch noise at this checkpoint only" in _text(r)
    assert "--sample-steps" in r.output
    p = runner.invoke(app, ["predict", str(out)])
    assert "Intervals: the batch noise at this checkpoint only" in _text(p)
    d = json.loads(runner.invoke(app, ["predict", str(out), "--json"]).stdout)
    assert d["measurements"][0]["interval"]["scope"] == "checkpoint"


def test_sample_steps_states_the_cost_first_and_writes_the_points(work: Path) -> None:
    out = work / "m.json"
    before = (work / "tiny.pt").read_bytes()
    r = _measure(str(work / "valid.yaml"), "--sample-steps", "20", "--samples", "3",
                 "--batches", "8", "--yes", "--out", str(out))  # fmt: skip
    assert r.exit_code == 0, r.output
    text = _text(r)
    assert text.index("Cost: 20 training steps + 3 × 8 measured batches") < text.index(
        "bscrit measure B="
    )
    assert "non-interactive" not in r.output  # --yes: no question, no note about it
    m = load_measurement(out)
    assert [c.step for c in m.checkpoints] == [0, 10, 20]
    assert m.extra["sampling"]["forward_backward"] == 20 + 3 * 8
    assert (work / "tiny.pt").read_bytes() == before
    r = _measure(str(work / "valid.yaml"), "--sample-steps", "lots")
    assert r.exit_code == 2 and "expected 'auto' or a number of steps" in _text(r)


def test_sample_steps_is_refused_under_nproc_before_anything_starts(work: Path) -> None:
    r = _measure(str(work / "valid.yaml"), "--samples", "3", "--nproc", "2")
    assert r.exit_code == 2 and "runs in one process, not under torchrun" in _text(r), r.output
