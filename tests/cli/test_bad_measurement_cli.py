"""A file that is not a measurement, or one with impossible values, where a measurement JSON is
expected (``predict``, ``check``, ``scale --measurement``, ``svag --from-measurement``): exit 2
with one message naming the file (and the key), never a traceback, never ``check``'s exit 1."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bscrit.cli import app

ASSETS = Path(__file__).parents[1] / "assets"
B128 = ASSETS / "measurements" / "sgd_b128.json"
CHECKPOINT = ASSETS / "tiny.pt"  # a real torch.save checkpoint (a zip archive)

runner = CliRunner()


def run_with_measurement(command: str, path: Path | str, out: Path):
    """``command`` reading ``path`` as its measurement; ``out``: where svag would write."""
    p = str(path)
    args = {
        "predict": ["predict", p],
        "check": ["check", p, "--batch-size", "256"],
        "scale": ["scale", "--measurement", p, "--optimizer", "sgd", "--lr", "0.1",
                  "-b", "128", "-t", "256"],
        "svag": ["svag", str(ASSETS / "valid.yaml"), "--from-measurement", p, "--yes",
                 "--out", str(out), "--quiet"],
    }[command]  # fmt: skip
    return runner.invoke(app, args)


def assert_usage_error(res, *needles: str) -> None:
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    assert res.stdout == ""
    err = " ".join(res.stderr.split())  # rich wraps long lines
    for n in needles:
        assert n in err, (n, res.stderr)


COMMANDS = ["predict", "check", "scale", "svag"]


@pytest.mark.parametrize("command", COMMANDS)
def test_checkpoint_given_as_measurement_is_not_a_bscrit_measurement(command, tmp_path):
    res = run_with_measurement(command, CHECKPOINT, tmp_path / "svag_out")
    assert_usage_error(res, str(CHECKPOINT), "not a bscrit measurement")
    assert not (tmp_path / "svag_out").exists()


def _impossible(tmp_path: Path) -> list[tuple[str, Path, str]]:
    """(id, file, the key path the message must name) for values no measurement can hold."""
    good = json.loads(B128.read_text())

    def variant(name: str, edit) -> Path:
        d = copy.deepcopy(good)
        edit(d)
        p = tmp_path / f"{name}.json"
        p.write_text(json.dumps(d))  # NaN / Infinity written as the JSON extensions Python reads
        return p

    si = lambda d: d["stats"]["scale_invariant"]  # noqa: E731
    return [
        ("batch_size_0", variant("b0", lambda d: d.update(batch_size=0)), "batch_size"),
        ("batch_size_neg", variant("bneg", lambda d: d.update(batch_size=-128)), "batch_size"),
        ("batch_size_float", variant("bf", lambda d: d.update(batch_size=12.5)), "batch_size"),
        ("dataset_size_0", variant("n0", lambda d: d.update(dataset_size=0)), "dataset_size"),
        ("dataset_lt_batch", variant("nb", lambda d: d.update(dataset_size=64)), "dataset_size"),
        ("groups_1", variant("m1", lambda d: d.update(groups=1)), "groups"),
        ("num_batches_lt_2m", variant("k", lambda d: d.update(num_batches=5)), "num_batches"),
        ("G_nan", variant("gnan", lambda d: si(d).update(G=float("nan"))),
         "stats.scale_invariant.G"),
        ("N_inf", variant("ninf", lambda d: si(d).update(N=float("inf"))),
         "stats.scale_invariant.N"),
        ("G_null", variant("gnull", lambda d: d["stats"]["all"].update(G=None)), "stats.all.G"),
        ("jackknife_short", variant("jk", lambda d: d["stats"]["all"]["jackknife"].update(
            G=[0.1, 0.2])), "stats.all.jackknife.G"),
        ("checkpoint_jackknife", variant("cjk", lambda d: d["checkpoints"][0]["stats"]["all"][
            "jackknife"].update(N=[0.9] * 3)), "checkpoints[0].stats.all.jackknife.N"),
        ("fraction_gt_1", variant("f", lambda d: d.update(scale_invariant_fraction=1.5)),
         "scale_invariant_fraction"),
        ("lr_negative", variant("lr", lambda d: d["optimizer"].update(lr=-0.1)), "optimizer.lr"),
    ]  # fmt: skip


@pytest.mark.parametrize("command", ["predict", "check"])
def test_impossible_values_name_the_key(command, tmp_path):
    for name, path, key in _impossible(tmp_path):
        res = run_with_measurement(command, path, tmp_path / "out")
        assert_usage_error(res, str(path), "malformed measurement artifact", f"{key}:")
        assert "ZeroDivisionError" not in res.stderr, name


@pytest.mark.parametrize("command", ["scale", "svag"])
def test_batch_size_zero_in_scale_and_svag(command, tmp_path):
    path = tmp_path / "b0.json"
    path.write_text(json.dumps(dict(json.loads(B128.read_text()), batch_size=0)))
    res = run_with_measurement(command, path, tmp_path / "svag_out")
    assert_usage_error(res, "batch_size: expected a positive integer, got 0")
    assert not (tmp_path / "svag_out").exists()


def test_every_problem_is_listed_at_once(tmp_path):
    d = json.loads(B128.read_text())
    d.update(batch_size=0, groups=1)
    d["stats"]["all"]["N_se"] = -1.0
    path = tmp_path / "many.json"
    path.write_text(json.dumps(d))
    res = run_with_measurement("check", path, tmp_path)
    assert_usage_error(res, "3 problems", "batch_size:", "groups:", "stats.all.N_se:")
