"""The pre-registered validation (benchmarks/prereg): its scoring rules, the rescoring of the
committed files (with the git order of registration and truth), and the runner end to end."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PREREG = ROOT / "benchmarks" / "prereg"
sys.path.insert(0, str(PREREG))

import score  # noqa: E402


def test_wilson_interval_matches_known_values():
    lo, hi = score.wilson(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    lo, hi = score.wilson(0, 6)
    assert lo == 0.0 and hi == pytest.approx(0.3903, abs=1e-4)
    assert score.wilson(0, 0) == (None, None)


def test_check_exit_codes_count_as_registered():
    assert [score.check_answer(c) for c in (0, 6, 1, 5)] == ["approve", "approve", "refuse",
                                                             "undecided"]  # fmt: skip
    assert score.check_answer(5, gate_point=True) == "approve"


def test_lm_truth_needs_both_the_tolerance_and_two_standard_errors():
    st = {"rules": ["lr-only"], "kappas": [2, 4], "B0": 16}
    base = [{"rule": "base", "kappa": 1, "heldout_loss": x} for x in (3.00, 3.01, 2.99)]
    k2 = [{"rule": "lr-only", "kappa": 2, "heldout_loss": x} for x in (3.02, 3.03, 3.01)]
    k4 = [{"rule": "lr-only", "kappa": 4, "heldout_loss": x} for x in (3.005, 3.015, 2.995)]
    t = score.lm_truth(st, base + k2 + k4)
    p2, p4 = t["points"]["lr-only"][32], t["points"]["lr-only"][64]
    assert p2["D"] == pytest.approx(0.02) and p2["se"] == pytest.approx(
        math.sqrt(2) * 0.01 / math.sqrt(3)
    )
    assert p2["fails_abs_0.01"] and not p2["fails_rel_0.10"]  # 0.02 > max(0.01, 0.0163)
    assert not p4["fails_abs_0.01"]  # D = 0.005 < 0.01
    assert score.boundary(t["points"]["lr-only"], 16) == 16


def test_sgd_truth_is_the_20_percent_criterion():
    rows = [
        {"B": b, "test_error": e} for b, e in ((16, 0.20), (32, 0.22), (64, 0.241), (128, 0.30))
    ]
    pts = score.sgd_truth({}, rows)["points"]["sgd"]
    assert [pts[b]["fails"] for b in (16, 32, 64, 128)] == [False, False, True, True]
    assert score.boundary(pts, 16) == 32


def test_committed_scores_rescore_and_registrations_precede_their_truth():
    p = subprocess.run([sys.executable, str(PREREG / "score.py"), "--verify"], capture_output=True,
                       text=True, cwd=ROOT)  # fmt: skip
    assert p.returncode == 0, p.stderr + p.stdout
    assert "rescored" in p.stdout


def test_runner_end_to_end_on_the_smoke_settings(tmp_path):
    out, work = tmp_path / "registered", tmp_path / "work"
    for script, extra in (("register.py", []), ("truth.py", ["--registered", str(out)])):
        dest = out if script == "register.py" else tmp_path / "truth"
        p = subprocess.run([sys.executable, str(PREREG / script), "--smoke", "--out", str(dest),
                            "--work", str(work), *extra], capture_output=True, text=True,
                           cwd=tmp_path, timeout=600)  # fmt: skip
        assert p.returncode == 0, p.stderr[-3000:]
    p = subprocess.run([sys.executable, str(PREREG / "score.py"), "--registered", str(out),
                        "--truth", str(tmp_path / "truth"), "--results", str(tmp_path / "res")],
                       capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    assert p.returncode == 0, p.stderr
    s = json.loads((tmp_path / "res" / "score.json").read_text())
    assert [x["setting"] for x in s["settings"]] == ["smoke-lm", "smoke-sgd"]
    c = s["check"]
    assert sum(c["counts"].values()) == c["points"] == 6  # 2 SGD B' + 2 κ × 2 rules
    reg = json.loads((out / "smoke-sgd.json").read_text())
    assert {r["B"] for r in reg["answers"]["check"]} == {64, 256}
    assert all(r["exit"] in (0, 1, 5, 6) for r in reg["answers"]["check"])
    truth = (tmp_path / "truth" / "smoke-lm.jsonl").read_text().splitlines()
    assert len(truth) == 5  # κ = 1 and κ = 2, 4 under both rules, one seed


def test_readme_and_check_help_state_the_committed_false_ok_rate():
    import re

    s = json.loads((PREREG / "results" / "score.json").read_text())
    f = s["check"]["false_ok"]
    lo, hi = (round(100 * x) for x in f["ci95"])
    readme = (ROOT / "README.md").read_text()
    got = re.search(r"(\d+) of the (\d+) batch sizes `check` approved", readme)
    assert got and (int(got[1]), int(got[2])) == (f["k"], f["n"])
    assert f"false-OK rate of {round(100 * f['rate'])}% (Wilson 95% CI\n{lo}–{hi}%)" in readme
    from bscrit.cli.analyze import check

    doc = " ".join(check.__doc__.split())
    assert (
        f"{f['k']} of {f['n']} approvals failed (false-OK rate {round(100 * f['rate'])}%, "
        f"95% CI {lo}–{hi}%" in doc
    )
