"""Messages about the spec and the base run (issue 27's smaller points): a factory error names
the spec file, not its folder; ``scale --from-spec`` with a spec that names the optimizer only
points to ``--measurement``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from typer.testing import CliRunner

from bscrit.cli import app

ASSETS = Path(__file__).resolve().parents[1] / "assets"
ADAM = ASSETS / "measurements" / "adam_noisy.json"
runner = CliRunner()


def _spec(tmp_path: Path, tail: str = "", **replace: str) -> Path:
    text = (ASSETS / "valid.yaml").read_text().split("optimizer:")[0]
    for old, new in replace.items():
        text = text.replace(old, new)
    spec = tmp_path / "run" / "spec.yaml"
    spec.parent.mkdir(exist_ok=True)
    spec.write_text(text + tail)
    return spec


def test_a_data_factory_missing_at_import_names_the_spec_file(tmp_path: Path) -> None:
    shutil.copy(ASSETS / "tiny.py", tmp_path / "tiny.py")
    shutil.copy(ASSETS / "tiny.pt", tmp_path / "tiny.pt")
    # names bound at run time: only the import can tell that make_data is missing
    (tmp_path / "lazy.py").write_text("def __getattr__(name):\n    raise AttributeError(name)\n")
    spec = _spec(
        tmp_path,
        "measure: {batches: 8, groups: 2, device: cpu}\n",
        **{"tiny.py:make_dataset": "../lazy.py:make_data", "tiny.py": "../tiny.py",
           "tiny.pt": "../tiny.pt"},
    )  # fmt: skip
    r = runner.invoke(app, ["measure", str(spec), "--quiet"])
    assert r.exit_code == 2, r.output
    text = " ".join(r.output.split())
    assert f"invalid spec {spec} (1 problem(s)):" in text
    assert "data.factory:" in text and "has no attribute 'make_data'" in text
    assert f"invalid spec {spec.parent} " not in text


def test_scale_from_a_spec_naming_the_optimizer_only_points_to_the_measurement(
    tmp_path: Path,
) -> None:
    spec = _spec(tmp_path, "optimizer: adamw\n", **{"tiny.py": str(ASSETS / "tiny.py")})
    r = runner.invoke(app, ["scale", "--from-spec", str(spec), "-t", "64"])
    assert r.exit_code == 2
    text = " ".join(r.output.split())
    assert "the spec names the optimizer (adamw) but not its values, which the checkpoint " in text
    assert "give --measurement with a measurement of that checkpoint" in text
    assert "or the base run's learning rate with --lr" in text
    # the way it points to works
    d = json.loads(ADAM.read_text())
    d["optimizer"] |= {"name": "adamw", "weight_decay": 0.05, "source": "checkpoint"}
    (tmp_path / "m.json").write_text(json.dumps(d))
    m = str(tmp_path / "m.json")
    r = runner.invoke(app, ["scale", "--from-spec", str(spec), "-m", m, "-t", "64", "--json"])
    assert r.exit_code == 0, r.output
    # a measurement of another optimizer cannot give the values: --lr only
    d["optimizer"] |= {"name": "sgd"}
    (tmp_path / "m.json").write_text(json.dumps(d))
    r = runner.invoke(app, ["scale", "--from-spec", str(spec), "-m", m, "-t", "64"])
    text = " ".join(r.output.split())
    assert r.exit_code == 2 and f"and {m} holds the values of sgd: give the base" in text


def test_scale_from_a_spec_without_an_optimizer_points_to_the_measurement(
    tmp_path: Path,
) -> None:
    spec = _spec(tmp_path, **{"tiny.py": str(ASSETS / "tiny.py")})
    r = runner.invoke(app, ["scale", "--from-spec", str(spec), "-t", "64"])
    assert r.exit_code == 2
    text = " ".join(r.output.split())
    assert f"{spec} has no optimizer section: give --optimizer and --lr, or --measurement" in text
