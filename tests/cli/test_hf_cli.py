"""Without the ``hf`` extra: a spec naming a Hugging Face folder stops with exit 2 and
``pip install 'bscrit[hf]'``, before the data loads, without a traceback (the missing import is
simulated: ``sys.modules["transformers"] = None`` makes ``import transformers`` fail)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bscrit.cli import app
from bscrit.errors import SpecError

ASSETS = Path(__file__).resolve().parents[1] / "assets"
runner = CliRunner()


@pytest.fixture
def no_transformers(monkeypatch):
    for name in [m for m in sys.modules if m == "transformers" or m.startswith("transformers.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "transformers", None)


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    folder = tmp_path / "gpt2"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    (folder / "model.safetensors").write_bytes(b"never read")
    (tmp_path / "data.py").write_text(
        "def make_dataset():\n    raise AssertionError('the data must not load')\n"
    )
    path = tmp_path / "spec.yaml"
    path.write_text(
        "model: {hf: gpt2}\ndata: data.py:make_dataset\nloss: cross_entropy\nbatch_size: 8\n"
    )
    return path


def test_measure_without_transformers_exits_2_naming_the_extra(spec, no_transformers):
    res = runner.invoke(app, ["measure", str(spec), "--device", "cpu"])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    msg = " ".join(res.stderr.split())
    assert "model.hf: a Hugging Face model needs the transformers package" in msg
    assert "pip install 'bscrit[hf]'" in msg
    assert "the data must not load" not in msg


def test_build_model_without_transformers_names_the_extra(spec, no_transformers):
    from bscrit.load.factories import build_model
    from bscrit.specfile.document import load_spec

    with pytest.raises(SpecError, match=r"pip install 'bscrit\[hf\]'") as info:
        build_model(load_spec(spec))
    assert info.value.exit_code == 2
