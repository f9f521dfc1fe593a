"""`bscrit measure` through typer's CliRunner: outputs, artifacts and exit codes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from bscrit.artifacts.measurement import csv_path_for, load_measurement
from bscrit.cli import app

ASSETS = Path(__file__).resolve().parents[1] / "assets"
runner = CliRunner()


@pytest.fixture()
def work(tmp_path: Path) -> Path:
    for name in ("tiny.py", "tiny.pt", "valid.yaml"):
        shutil.copy(ASSETS / name, tmp_path / name)
    return tmp_path


def _measure(*args: str) -> object:
    return runner.invoke(app, ["measure", *args, "--quiet"])


def test_measure_writes_json_and_csv_and_leaves_checkpoint_alone(work: Path) -> None:
    ckpt_bytes = (work / "tiny.pt").read_bytes()
    out = work / "out" / "m.json"
    r = _measure(str(work / "valid.yaml"), "--batches", "40", "--out", str(out))
    assert r.exit_code == 0, r.output
    assert "scale-invariant" in r.output and "NSR" in r.output
    m = load_measurement(out)
    assert m.batch_size == 8 and m.num_batches == 40 and m.groups == 4
    assert m.dataset_size == 48  # subset: 48 of 64
    assert len(m.all.jackknife_G) == 4 and len(m.all.jackknife_N) == 4
    assert m.scale_invariant is not None and m.scale_invariant_fraction > 0
    assert m.optimizer is not None and m.optimizer.name == "sgd" and m.optimizer.momentum == 0.9
    assert m.equilibrium is not None
    d = json.loads(out.read_text())
    assert d["schema"] == 1 and d["kind"] == "bscrit.measurement"
    assert set(d["stats"]["all"]) >= {
        "G",
        "G_se",
        "N",
        "N_se",
        "nsr",
        "nsr_ci95",
        "R",
        "num_params",
        "jackknife",
    }
    csv = csv_path_for(out).read_text().splitlines()
    assert csv[0].startswith("name,shape,numel,G,N")
    assert len(csv) == 1 + len(m.per_parameter)
    assert (work / "tiny.pt").read_bytes() == ckpt_bytes
    assert not list((work / "out").glob(".*.tmp"))


def test_json_flag_prints_only_json(work: Path) -> None:
    r = runner.invoke(
        app,
        [
            "measure",
            str(work / "valid.yaml"),
            "--batches",
            "40",
            "--json",
            "--quiet",
            "--per-tensor",
            "none",
        ],
    )
    assert r.exit_code == 0
    start = r.stdout.index("{")
    d = json.loads(r.stdout[start:])
    assert d["num_batches"] == 40
    assert r.stdout[:start].strip() == ""


def test_several_checkpoints_are_pooled(work: Path) -> None:
    shutil.copy(work / "tiny.pt", work / "tiny2.pt")
    out = work / "m.json"
    r = _measure(
        str(work / "valid.yaml"),
        "-c",
        str(work / "tiny.pt"),
        "-c",
        str(work / "tiny2.pt"),
        "--batches",
        "40",
        "--out",
        str(out),
    )
    assert r.exit_code == 0, r.output
    m = load_measurement(out)
    assert len(m.checkpoints) == 2
    a, b = m.checkpoints
    assert m.all.G == pytest.approx((a.all.G + b.all.G) / 2)
    assert m.all.N == pytest.approx((a.all.N + b.all.N) / 2)
    assert "Per checkpoint" in r.output


def test_spec_errors_exit_2_with_every_problem(work: Path) -> None:
    bad = work / "bad.yaml"
    bad.write_text("model: {factory: tiny.py:make_model, colour: red}\nbatch_size: -3\nloss: l1\n")
    out = work / "m.json"
    r = _measure(str(bad), "--out", str(out))
    assert r.exit_code == 2
    text = r.output
    assert "model.colour" in text and "batch_size" in text and "data" in text and "loss" in text
    assert "Traceback" not in text
    assert not out.exists()


def test_missing_spec_and_checkpoint_exit_2(work: Path) -> None:
    r = _measure(str(work / "nope.yaml"))
    assert r.exit_code == 2 and "nope.yaml" in r.output
    r = _measure(str(work / "valid.yaml"), "-c", str(work / "missing.pt"))
    assert r.exit_code == 2 and "missing.pt" in r.output


def test_checkpoint_mismatch_lists_keys(work: Path) -> None:
    sd = torch.load(work / "tiny.pt", weights_only=True)
    sd["model"]["extra.weight"] = torch.zeros(2)
    torch.save(sd, work / "bad.pt")
    r = _measure(
        str(work / "valid.yaml"), "-c", str(work / "bad.pt"), "--out", str(work / "m.json")
    )
    assert r.exit_code == 2
    assert "extra.weight" in r.output
    assert not (work / "m.json").exists()


def test_batch_size_larger_than_data_exit_2(work: Path) -> None:
    r = _measure(str(work / "valid.yaml"), "--batch-size", "100", "--out", str(work / "m.json"))
    assert r.exit_code == 2
    assert "fewer than the batch size" in r.output
    assert not (work / "m.json").exists()


def test_runtime_failure_exit_3_and_no_file(work: Path) -> None:
    # a NaN weight makes every gradient NaN: a runtime failure, not a usage error
    sd = torch.load(work / "tiny.pt", weights_only=True)
    name = next(k for k in sd["model"] if k.endswith("weight"))
    sd["model"][name] = torch.full_like(sd["model"][name], float("nan"))
    torch.save(sd, work / "nan.pt")
    out = work / "m.json"
    r = _measure(str(work / "valid.yaml"), "-c", str(work / "nan.pt"), "--out", str(out))
    assert r.exit_code == 3, r.output
    assert "non-finite" in r.output and "batch 0" in r.output
    assert not out.exists()


def test_labels_out_of_range_exit_3_and_no_file(work: Path) -> None:
    # tiny.py's teacher with 5 classes for a model with 3 outputs: cross_entropy's IndexError
    spec = work / "labels.yaml"
    spec.write_text((work / "valid.yaml").read_text().replace("{n: 64}", "{n: 64, classes: 5}"))
    out = work / "m.json"
    r = _measure(str(spec), "--out", str(out))
    assert r.exit_code == 3, r.output
    assert "Traceback" not in r.output
    text = " ".join(r.output.split())  # rich wraps long lines
    assert "the forward/backward pass failed at batch 0" in text
    assert "out of bounds" in text and "class indices" in text
    assert not out.exists()


def test_absurd_batches_refused_before_the_data_loads(
    work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bscrit.load.factories

    def no_data(*args: object, **kwargs: object) -> None:
        raise AssertionError("the dataset was built before --batches was checked")

    monkeypatch.setattr(bscrit.load.factories, "build_dataset", no_data)
    out = work / "m.json"
    for option, value in (("--batches", "1000000000000"), ("--max-batches", "10000000000")):
        extra = ["--target-rel-error", "0.1"] if option == "--max-batches" else []
        r = _measure(str(work / "valid.yaml"), option, value, *extra, "--out", str(out))
        assert r.exit_code == 2, r.output
        assert "Traceback" not in r.output
        text = " ".join(r.output.split())
        assert f"{option} {int(value):,} is more than the 1,000,000,000 batches" in text
        assert not out.exists()
    spec = work / "huge.yaml"  # the same from the spec, named by its key
    spec.write_text(
        (work / "valid.yaml").read_text().replace("batches: auto", "batches: 10000000000")
    )
    r = _measure(str(spec), "--out", str(out))
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert "huge.yaml: measure.batches 10,000,000,000 is more than" in " ".join(r.output.split())
    assert not out.exists()


def test_long_measurement_prints_its_plan_first(
    work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bscrit.workflows.plan

    monkeypatch.setattr(bscrit.workflows.plan, "PLAN_LINE_MIN_S", 0.0)  # any run counts as long
    r = runner.invoke(app, ["measure", str(work / "valid.yaml"), "--batches", "120"])
    assert r.exit_code == 0, r.output
    text = " ".join(r.stderr.split())
    assert "plan: 120 batches of B = 8 in 4 groups, about " in text and " a batch: about " in text
    r = _measure(str(work / "valid.yaml"), "--batches", "120")  # --quiet: no plan line
    assert r.exit_code == 0 and "plan:" not in r.output


def test_interrupt_exits_130_without_output(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import bscrit.engine.loop

    def boom(*a: object, **k: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(bscrit.engine.loop, "measure_model", boom)
    out = work / "m.json"
    r = _measure(str(work / "valid.yaml"), "--out", str(out))
    assert r.exit_code == 130
    assert "interrupted" in r.output
    assert not out.exists()


def test_bad_option_values_exit_2(work: Path) -> None:
    r = _measure(str(work / "valid.yaml"), "--batches", "lots")
    assert r.exit_code == 2
    r = _measure(str(work / "valid.yaml"), "--batches", "7", "--groups", "4")
    assert r.exit_code == 2 and "at least 2 batches per group" in r.output
    r = _measure(str(work / "valid.yaml"), "--amp", "bf16", "--precision", "bf16-weights")
    assert r.exit_code == 2 and "contradicts" in r.output


# ----------------------------------------------------------------------------------------------
# --out: checked before any work; a failed write at the end loses nothing; overwrite said
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "out,message",
    [
        ("existing", "is an existing folder, expected a file name"),
        ("existing/", "ends in '/', expected a file name"),
        ("new/", "ends in '/', expected a file name"),
        ("a_file/m.json", "cannot create a folder under the file"),
        ("csv_is_a_folder.json", "is an existing folder"),  # the CSV beside it
    ],
)
def test_unwritable_out_exits_2_before_any_work(work: Path, out: str, message: str) -> None:
    (work / "existing").mkdir()
    (work / "a_file").write_text("x")
    (work / "csv_is_a_folder.params.csv").mkdir()
    before = sorted(p.name for p in work.iterdir())
    raw = str(work / out) + ("/" if out.endswith("/") else "")
    # checked before the spec is even read: a missing spec is not what is reported
    r = _measure(str(work / "no-such-spec.yaml"), "--out", raw)
    assert r.exit_code == 2, r.output
    flat = " ".join(r.output.split())  # rich wraps long lines
    assert message in flat and f"--out {raw.replace('folder.json', 'folder.params.csv')}" in flat
    assert "Traceback" not in flat
    assert "no-such-spec" not in flat
    assert sorted(p.name for p in work.iterdir()) == before


def test_out_on_a_full_disk_or_read_only_folder_exits_2_before_any_work(
    work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import os
    import tempfile

    import bscrit.cli.outputs

    def read_only(*a: object, **k: object) -> tuple[int, str]:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    with monkeypatch.context() as mp:
        mp.setattr(bscrit.cli.outputs.tempfile, "mkstemp", read_only)
        r = _measure(str(work / "valid.yaml"), "--out", str(work / "m.json"))
    assert r.exit_code == 2 and "Read-only file system" in r.output, r.output
    usage = shutil.disk_usage(work)
    monkeypatch.setattr(bscrit.cli.outputs.shutil, "disk_usage", lambda p: usage._replace(free=0))
    r = _measure(str(work / "valid.yaml"), "--out", str(work / "m.json"))
    assert r.exit_code == 2 and "is full (0 bytes free)" in r.output, r.output
    assert "bscrit measure  B=" not in r.output  # no measurement was made
    assert not (work / "m.json").exists() and tempfile.mkstemp is not read_only


def test_write_failing_after_the_work_prints_the_results_and_exits_3(
    work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import os

    import bscrit.artifacts.files

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(bscrit.artifacts.files.os, "fsync", full)  # the disk fills during the run
    monkeypatch.chdir(work)
    out = Path("out") / "m.json"
    r = _measure("valid.yaml", "--batches", "40", "--out", str(out))
    assert r.exit_code == 3, r.output
    assert "Traceback" not in r.output
    err = " ".join(r.stderr.split())
    assert f"cannot write {out} (No space left on device)" in err
    assert "the results are printed on stdout as JSON" in err
    d = json.loads(r.stdout[r.stdout.index("{") :])  # nothing lost
    assert d["kind"] == "bscrit.measurement" and d["num_batches"] == 40
    assert not out.exists() and not list((work / "out").glob(".*"))


def test_overwriting_an_existing_out_is_said(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(work)
    args = ("valid.yaml", "--batches", "40", "--per-tensor", "none", "--out", "m.json")
    r = _measure(*args)
    assert r.exit_code == 0 and "wrote m.json and m.params.csv\n" in r.output
    assert "overwrote" not in r.output
    r = _measure(*args)
    assert r.exit_code == 0
    assert (
        "wrote m.json and m.params.csv (overwrote the existing m.json, m.params.csv)"
        in " ".join(r.output.split())
    )


def test_sigterm_is_handled_like_ctrl_c_exit_143_and_nothing_written(work: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    shutil.copy(ASSETS / "marked_loss.py", work / "marked.py")
    marker = work / "measuring"
    spec = (
        (work / "valid.yaml")
        .read_text()
        .replace(
            "loss: cross_entropy",
            f"loss: {{factory: marked.py:make_loss, kwargs: {{marker: '{marker}'}}}}",
        )
    )
    (work / "slow.yaml").write_text(spec)
    out = work / "m.json"
    cmd = [sys.executable, "-m", "bscrit", "measure", str(work / "slow.yaml"), "--batches",
           "2000000", "--quiet", "--out", str(out)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), proc.communicate(timeout=10)
        os.kill(proc.pid, signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, stderr
    assert "interrupted (SIGTERM); no output file was written" in stderr
    assert "Traceback" not in stderr
    assert not out.exists() and not list(work.glob(".m.json*"))


def test_batch_size_equal_to_the_dataset_size_is_refused(work: Path) -> None:
    """B = n: every batch is the whole dataset, N = 0; refused before the work, no traceback."""
    out = work / "m.json"
    r = _measure(str(work / "valid.yaml"), "-b", "48", "--out", str(out))
    assert r.exit_code == 2, r.output
    assert "whole dataset" in r.output and "Traceback" not in r.output
    assert not out.exists()
