"""`bscrit measure` on dict examples with the model's own loss, in micro-batches, with a data file
found through ``${spec_dir}``; the errors of those keys (exit 2, before any work)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from bscrit.cli import app

ASSETS = Path(__file__).resolve().parents[1] / "assets"
runner = CliRunner()

SPEC = """
model: {factory: lm.py:make_tagger, kwargs: {dim: 8}}
checkpoint: tagger.pt
data:
  factory: lm.py:make_tokens
  kwargs: {n: 48, path: "${spec_dir}/tokens.pt"}
loss: model
batch_size: 8
micro_batch_size: 4
measure: {batches: 12, groups: 3, seed: 0, device: cpu}
"""


@pytest.fixture()
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "run"
    folder.mkdir()
    shutil.copy(ASSETS / "lm.py", folder / "lm.py")
    sys.path.insert(0, str(ASSETS))
    try:
        import lm
    finally:
        sys.path.remove(str(ASSETS))
    torch.manual_seed(0)
    torch.save(lm.make_tagger().state_dict(), folder / "tagger.pt")
    torch.save(torch.randint(0, lm.VOCAB, (48, 12)), folder / "tokens.pt")
    (folder / "spec.yaml").write_text(SPEC)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the data file is found through ${spec_dir}, not the cwd
    return folder


def _measure(*args: str):
    return runner.invoke(app, ["measure", *args, "--quiet", "--json"])


def test_dict_examples_model_loss_micro_batches_and_spec_dir(work: Path) -> None:
    r = _measure(str(work / "spec.yaml"))
    assert r.exit_code == 0, r.output
    chunked = json.loads(r.stdout)
    assert chunked["micro_batch_size"] == 4 and chunked["batch_size"] == 8
    r = _measure(str(work / "spec.yaml"), "--micro-batch-size", "8")
    assert r.exit_code == 0, r.output
    whole = json.loads(r.stdout)
    assert whole["micro_batch_size"] == 8
    for key in ("G", "N"):  # float rounding only (tests/torch/test_real_batches.py)
        a, b = whole["stats"]["all"][key], chunked["stats"]["all"][key]
        tol = 8e-6 * (abs(whole["stats"]["all"]["G"]) + whole["stats"]["all"]["N"])
        assert abs(a - b) <= tol, (key, a, b)
    r = runner.invoke(app, ["measure", str(work / "spec.yaml"), "-q"])
    assert r.exit_code == 0 and "B=8 (micro-batches of 4)" in r.stdout, r.output
    (work / "tokens.pt").unlink()  # the data file is really read
    r = _measure(str(work / "spec.yaml"))
    assert r.exit_code == 2 and "tokens.pt" in r.output


def test_a_micro_batch_size_that_does_not_divide_b_exits_2(work: Path) -> None:
    r = _measure(str(work / "spec.yaml"), "--micro-batch-size", "3")
    assert r.exit_code == 2
    assert "--micro-batch-size 3 does not divide the batch size B = 8" in r.output
    r = _measure(str(work / "spec.yaml"), "--batch-size", "6")
    assert r.exit_code == 2
    assert "micro_batch_size: 4 does not divide --batch-size = 6" in " ".join(r.output.split())


def test_dict_examples_with_cross_entropy_exit_2_naming_loss(work: Path) -> None:
    text = SPEC.replace("loss: model", "loss: cross_entropy")
    (work / "spec.yaml").write_text(text)
    r = _measure(str(work / "spec.yaml"))
    assert r.exit_code == 2
    out = " ".join(r.output.split())
    assert "loss: the examples of data are dicts (keys: attention_mask, input_ids, labels)" in out
    assert "'loss: model'" in out
