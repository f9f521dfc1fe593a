"""A spec with a key given twice, and files that are not checkpoints, through the CLI: exit 2,
one message that says what is wrong (both lines; "not a PyTorch checkpoint"), no traceback, no
output file, and --unsafe-load offered only for a pickle of objects."""

from __future__ import annotations

import random
import shutil
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from bscrit.cli import app

ASSETS = Path(__file__).resolve().parents[1] / "assets"
sys.path.insert(0, str(ASSETS))
import tiny  # noqa: E402

runner = CliRunner()


@pytest.fixture()
def work(tmp_path: Path) -> Path:
    for name in ("tiny.py", "tiny.pt", "valid.yaml"):
        shutil.copy(ASSETS / name, tmp_path / name)
    return tmp_path


def flat(text: str) -> str:
    return " ".join(text.split())  # rich wraps long lines


def assert_exit_2(res, out: Path | None = None) -> str:
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    if out is not None:
        assert not out.exists() and not list(out.parent.glob(f".{out.name}.*"))
    return flat(res.stderr)


# ----------------------------------------------------------------------------------------------
# Duplicate keys in the spec
# ----------------------------------------------------------------------------------------------


def _duplicated(work: Path) -> tuple[Path, int, int]:
    """valid.yaml with batch_size given twice and an unknown key; the two lines."""
    text = (work / "valid.yaml").read_text()
    lines = text.splitlines()
    bs_line = next(i for i, line in enumerate(lines) if line.startswith("batch_size:")) + 1
    text = text.replace("batch_size: 8\n", "batch_size: 32\n") + "batch_size: 64\nbogus: 1\n"
    spec = work / "dup.yaml"
    spec.write_text(text)
    return spec, bs_line, len(lines) + 1


def test_measure_reports_a_duplicate_key_with_both_lines(work: Path) -> None:
    spec, first, second = _duplicated(work)
    out = work / "m.json"
    res = runner.invoke(app, ["measure", str(spec), "--out", str(out), "--quiet"])
    err = assert_exit_2(res, out)
    assert f"batch_size: duplicate key: given twice, on lines {first} and {second}" in err
    assert "2 problem(s)" in err and "bogus: unknown key" in err  # with the other problems


@pytest.mark.parametrize("command", ["scale", "svag"])
def test_every_spec_reader_reports_it(work: Path, command: str) -> None:
    spec, first, second = _duplicated(work)
    if command == "scale":
        args = ["scale", "--from-spec", str(spec), "-t", "64"]
    else:
        args = ["svag", str(spec), "-t", "64", "--yes", "--out", str(work / "svag_out")]
    err = assert_exit_2(runner.invoke(app, args))
    assert f"on lines {first} and {second}" in err
    assert not (work / "svag_out").exists()


# ----------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("unsafe", [False, True])
def test_random_bytes_as_checkpoint_is_not_a_pytorch_checkpoint(work: Path, unsafe: bool) -> None:
    bad = work / "random.pt"
    bad.write_bytes(random.Random(1).randbytes(2048))
    out = work / "m.json"
    args = ["measure", str(work / "valid.yaml"), "--checkpoint", str(bad), "--out", str(out)]
    res = runner.invoke(app, [*args, "--quiet"] + (["--unsafe-load"] if unsafe else []))
    err = assert_exit_2(res, out)
    assert f"cannot read checkpoint {bad}: not a PyTorch checkpoint" in err
    assert "weights_only" not in err and "--unsafe-load" not in err and "will likely" not in err


def test_whole_model_pickle_names_the_key_then_loads(work: Path) -> None:
    torch.manual_seed(0)
    model = tiny.make_model(width=8)  # what valid.yaml builds
    torch.save({"ema_model": model, "epoch": 3}, work / "full.pt")
    base = ["measure", str(work / "valid.yaml"), "--checkpoint", str(work / "full.pt")]
    base += ["--batches", "8", "--quiet"]
    out = work / "m.json"
    err = assert_exit_2(runner.invoke(app, [*base, "--out", str(out)]), out)
    assert "whole pickled model (Sequential at key 'ema_model')" in err
    assert "re-run with --unsafe-load and set `key: ema_model` under checkpoint in the spec" in err
    # as told: the key in the spec, and --unsafe-load
    spec = (
        (work / "valid.yaml")
        .read_text()
        .replace(
            "checkpoint:\n  path: tiny.pt\n", "checkpoint:\n  path: tiny.pt\n  key: ema_model\n"
        )
    )
    (work / "valid.yaml").write_text(spec)
    res = runner.invoke(app, [*base, "--unsafe-load", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert out.exists()
