"""Exit codes 0, 1, 5 and 6 of `bscrit check`; theorem flags over the equilibrium (issue 23).

`check` gates on the lower 95% bound of B*: 0 in range over the equilibrium, 6 in range from one
checkpoint's interval (provisional), 5 between the lower bound and the point estimate
(undecided), 1 past the point estimate. The equilibrium-scope measurement is sgd_b128 as if
measured at ten checkpoints 2τ apart (``tests/unit/test_equilibrium.py``'s helper, written to a
file), with plain SGD (momentum 0) so that the theorems apply as proved.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import re
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bscrit.artifacts.measurement import Measurement, write_measurement
from bscrit.cli import app
from bscrit.cli.svag import SVAG_EXIT
from bscrit.errors import ExitCode
from bscrit.stats.equilibrium import relaxation_steps
from bscrit.theory.prediction import predict

ROOT = Path(__file__).parents[2]
runner = CliRunner()


def _equilibrium_helpers():
    spec = importlib.util.spec_from_file_location(
        "equilibrium_helpers", ROOT / "tests" / "unit" / "test_equilibrium.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _measurement(g: float, n: float) -> Measurement:
    """Ten exact draws 2τ apart around G = g, N = n: an interval over the equilibrium."""
    h = _equilibrium_helpers()
    m = h._fixture()
    m = dataclasses.replace(m, optimizer=dataclasses.replace(m.optimizer, momentum=0.0))
    tau, _ = relaxation_steps(m.optimizer)
    assert tau is not None
    gs = [g * (1 + 0.2 * math.sin(i)) for i in range(10)]
    ns = [n * (1 + 0.05 * math.cos(i)) for i in range(10)]
    me = h._with_equilibrium(m, [round(i * 2 * tau) for i in range(10)], gs, ns)
    assert me.equilibrium_interval.scope == "equilibrium"
    return me


@pytest.fixture(scope="module")
def eq_file(tmp_path_factory) -> tuple[str, float, float]:
    """An equilibrium-scope measurement file, with its B* lower bound and point estimate."""
    me = _measurement(0.1, 0.8)
    path = tmp_path_factory.mktemp("eq") / "m_eq.json"
    write_measurement(me, path)
    b = predict([("m", me)]).base
    assert b.interval_scope == "equilibrium" and b.heuristic == ""
    return str(path), b.b_star_ci95[0], b.b_star


def _check(path: str, *args: str):
    r = runner.invoke(app, ["check", path, *args])
    return r.exit_code, r.stdout.strip()


def test_check_over_the_equilibrium_exits_0_in_range_and_5_in_the_warn_zone(eq_file):
    path, lo, star = eq_file
    inside, between, above = math.floor(lo), math.floor((lo + star) / 2), math.floor(star) + 1
    assert lo < between <= star
    code, line = _check(path, "-b", str(inside))
    assert code == 0 and line.startswith("OK: ") and "provisional" not in line
    assert "no guarantee that it holds" in line
    code, line = _check(path, "-b", str(between))
    assert code == ExitCode.UNDECIDED == 5 and line.startswith("UNDECIDED: ")
    code, line = _check(path, "-b", str(between), "--gate", "point")
    assert code == 0 and line.startswith("WARN: ") and "provisional" not in line
    code, line = _check(path, "-b", str(between), "--strict")
    assert code == 1 and line.startswith("FAIL: ")
    code, line = _check(path, "-b", str(above))
    assert code == 1 and line.startswith("FAIL: ")
    code, _ = _check(path, "-b", str(inside), "--gate", "upper")
    assert code == 2


def test_check_from_one_checkpoint_is_provisional_exit_6(eq_file):
    path = str(ROOT / "tests" / "assets" / "measurements" / "sgd_b128.json")
    code, line = _check(path, "-b", "1024")
    assert code == ExitCode.PROVISIONAL == 6
    assert line.startswith("PROVISIONAL: ") and "provisional: the 95% interval covers" in line
    code, line = _check(path, "-b", "1024", "--allow-provisional")
    assert code == 0 and line.startswith("OK (provisional): ")


def test_theorem_flags_are_certified_only_over_the_equilibrium():
    me = _measurement(0.5, 0.2)  # NSR ≈ 0.4 < 1/(C² − 1) = 1 on every draw
    b = predict([("m", me)]).base
    assert b.nsr_ci95[1] < 1.0
    assert (b.sde_thm52, b.thm55) == ("certified", "certified") and b.sde_certified_invalid
    one = dataclasses.replace(me, equilibrium_interval=None)  # the same, as one checkpoint
    b1 = predict([("m", one)]).base
    assert (b1.sde_thm52, b1.thm55) == ("provisional", "provisional")
    assert not b1.sde_certified_invalid
    # an interval across the threshold is undecided, whatever the point says
    mid = _measurement(0.8, 0.8)  # NSR ≈ 1 = the threshold
    bm = predict([("m", mid)]).base
    assert bm.nsr_ci95[0] < 1.0 < bm.nsr_ci95[1] and bm.sde_thm52 == "undecided"
    assert not bm.sde_certified_invalid


def test_svag_exit_codes_follow_the_verdict():
    assert SVAG_EXIT == {"sde_holds": 0, "sde_fails": 1, "inconclusive": 5, "not_converged": 5}


def test_readme_exit_code_table_documents_5_and_6():
    text = (ROOT / "README.md").read_text()
    table = text.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| (\d+) \| (.*) \|$", table, re.M)}
    assert {"0", "1", "2", "3", "4", "5", "6"} <= set(rows)
    assert "`check`" in rows["5"] and "`confirm`" in rows["5"] and "`svag`" in rows["5"]
    assert "--gate point" in rows["5"] and "--allow-inconclusive" in rows["5"]
    assert "provisional" in rows["6"] and "--allow-provisional" in rows["6"]
    assert "inconclusive" not in rows["0"]  # confirm's inconclusive no longer exits 0


@pytest.mark.parametrize(
    ("command", "words"),
    [("check", ["--gate", "--allow-provisional", "5 undecided", "6 provisional"]),
     ("confirm", ["--allow-inconclusive", "5 inconclusive"]),
     ("svag", ["--allow-inconclusive", "exit 5"])],
)  # fmt: skip
def test_help_names_the_exit_codes_and_the_options_that_relax_them(command, words):
    r = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0
    flat = " ".join(r.output.split())
    for w in words:
        assert w in flat, (command, w)
