"""`bscrit measure --host-memory`: group sums spilled to disk give the same artifact; the plan
line says where the sums live and the peak host memory; a spill that cannot fit exits 2."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bscrit.cli import app

ASSETS = Path(__file__).resolve().parents[1] / "assets"
runner = CliRunner()


@pytest.fixture()
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("tiny.py", "tiny.pt", "valid.yaml"):
        shutil.copy(ASSETS / name, tmp_path / name)
    (tmp_path / "spill").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "spill"))  # as TMPDIR would
    return tmp_path


def _stats(path: Path) -> dict:  # type: ignore[type-arg]
    d = json.loads(path.read_text())
    return {"stats": d["stats"], "per_parameter": d["per_parameter"]}


def test_spilled_sums_write_the_same_artifact_and_say_so_in_the_plan_line(
    work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec, a, b = str(work / "valid.yaml"), work / "a.json", work / "b.json"
    r = runner.invoke(app, ["measure", spec, "-k", "120", "--out", str(a)])
    assert r.exit_code == 0, r.output
    assert "plan:" not in r.stderr  # a short run in host memory: no plan line
    r = runner.invoke(app, ["measure", spec, "-k", "120", "--out", str(b), "--host-memory", "0"])
    assert r.exit_code == 0, r.output
    text = " ".join(r.stderr.split())  # a spilled run always says so, however short
    assert "plan: 120 batches of B = 8 in 4 groups" in text
    assert "at peak, the 4 group sums (" in text
    assert f"spilled to {work / 'spill'} (over the 0 B budget for them)" in text
    assert _stats(a) == _stats(b)  # every number of the artifact, bit for bit
    assert list((work / "spill").iterdir()) == []

    import bscrit.workflows.plan

    monkeypatch.setattr(bscrit.workflows.plan, "PLAN_LINE_MIN_S", 0.0)  # any run counts as long
    r = runner.invoke(app, ["measure", spec, "-k", "120"])
    assert r.exit_code == 0, r.output
    text = " ".join(r.stderr.split())
    assert " in all; host memory about " in text and "the 4 group sums (" in text
    assert text.split("the 4 group sums (")[1].split(")")[1].startswith(" in host memory")


def test_a_spill_without_the_disk_space_exits_2_before_any_batch(
    work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bscrit.engine.groups

    class Usage:
        free = 100

    real = shutil.disk_usage  # the spill folder is full; the --out folder is not
    monkeypatch.setattr(
        bscrit.engine.groups.shutil,
        "disk_usage",
        lambda folder: Usage if str(folder).endswith("spill") else real(folder),
    )
    out = work / "m.json"
    r = runner.invoke(
        app, ["measure", str(work / "valid.yaml"), "--host-memory", "0", "--out", str(out), "-q"]
    )
    assert r.exit_code == 2, r.output
    text = " ".join(r.output.split())
    assert "Traceback" not in text and "more than the 100 B free in" in text
    assert "raise --host-memory" in text
    assert not out.exists()
