"""predict / check / scale need no torch: importing the pure modules and running the three
commands must leave torch out of sys.modules (checked in a fresh interpreter)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ASSETS = Path(__file__).parents[1] / "assets" / "measurements"


def run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_pure_modules_do_not_import_torch():
    r = run(
        "import sys\n"
        "import bscrit.theory, bscrit.scaling, bscrit.estimators, bscrit.results\n"
        "import bscrit.prediction, bscrit.optim, bscrit.spec, bscrit.checker, bscrit.summary\n"
        "import bscrit.svag.results, bscrit.pipeline, bscrit.errors, bscrit.checkpoint_file\n"
        "import bscrit.spec_model, bscrit.schedule, bscrit.schedule_io\n"
        "bad = sorted(m for m in ('torch', 'numpy', 'pandas') if m in sys.modules)\n"
        "assert not bad, bad\n"
    )
    assert r.returncode == 0, r.stderr


def test_predict_check_scale_cli_do_not_import_torch():
    m = str(ASSETS / "sgd_b128.json")
    r = run(
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from bscrit.cli import app\n"
        "runner = CliRunner()\n"
        f"for args in (['predict', {m!r}], ['predict', {m!r}, '--json'],\n"
        f"             ['check', {m!r}, '-b', '512'], ['check', {m!r}, '-b', '99999'],\n"
        f"             ['scale', '--optimizer', 'adam', '-b', '32', '-t', '64', '--lr', '1e-3'],\n"
        f"             ['scale', '-m', {m!r}, '-t', '1024']):\n"
        "    res = runner.invoke(app, args)\n"
        "    assert res.exit_code in (0, 1), (args, res.output)\n"
        "bad = sorted(m for m in ('torch', 'numpy', 'pandas') if m in sys.modules)\n"
        "assert not bad, bad\n"
    )
    assert r.returncode == 0, r.stderr + r.stdout
