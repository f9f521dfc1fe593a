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
        "import bscrit.theory.bounds, bscrit.theory.scaling, bscrit.stats.estimators\n"
        "import bscrit.artifacts.measurement\n"
        "import bscrit.theory.prediction, bscrit.optim.registry, bscrit.specfile.document\n"
        "import bscrit.checker, bscrit.stats.summary\n"
        "import bscrit.runs.svag.results, bscrit.workflows.measure, bscrit.errors\n"
        "import bscrit.load.checkpoint_file\n"
        "import bscrit.specfile.model, bscrit.runs.confirm.results, bscrit.stats.free\n"
        "import bscrit.theory.schedule, bscrit.artifacts.schedule_io, bscrit.workflows.conclusion\n"
        "import bscrit.theory.formulas, bscrit.theory.recommendation, bscrit.optim.saved\n"
        "import bscrit.artifacts.records, bscrit.artifacts.files, bscrit.artifacts.jsonvalues\n"
        "import bscrit.specfile.sections, bscrit.specfile.references, bscrit.specfile.device\n"
        "import bscrit.stats.sample_plan, bscrit.boundary, bscrit.artifacts.checks\n"
        "import bscrit.artifacts.series\n"
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
        "    assert res.exit_code in (0, 1, 5, 6), (args, res.output)\n"  # an answer, no error
        "bad = sorted(m for m in ('torch', 'numpy', 'pandas') if m in sys.modules)\n"
        "assert not bad, bad\n"
    )
    assert r.returncode == 0, r.stderr + r.stdout


def test_import_bscrit_and_the_api_without_torch():
    """``import bscrit`` and the API's names load no torch; predict, scale and load_measurement
    run without it (only ``bscrit.measure`` imports torch, when called)."""
    m = str(ASSETS / "sgd_b128.json")
    r = run(
        "import sys\n"
        "import bscrit\n"
        "assert 'torch' not in sys.modules\n"
        "assert set(bscrit.__all__) >= {'measure', 'predict', 'scale', 'load_measurement',\n"
        "                               'Measurement', 'Prediction'}\n"
        "torchless = [n for n in bscrit.__all__ if n not in ('__version__', 'FreeCapture')]\n"
        "assert all(callable(getattr(bscrit, n)) for n in torchless)\n"
        f"p = bscrit.predict({m!r})\n"
        "assert isinstance(p, bscrit.Prediction) and p.base.b_star > 0\n"
        f"ms = bscrit.load_measurement({m!r})\n"
        "assert isinstance(ms, bscrit.Measurement)\n"
        "assert bscrit.predict([ms]).base.b_star == p.base.b_star\n"
        f"s = bscrit.scale(1024, {m!r})\n"
        "assert s.target_batch_size == 1024\n"
        "bad = sorted(m for m in ('torch', 'numpy', 'pandas') if m in sys.modules)\n"
        "assert not bad, bad\n"
        "try:\n"
        "    bscrit.nope\n"
        "except AttributeError as e:\n"
        "    assert 'nope' in str(e)\n"
        "else:\n"
        "    raise AssertionError('bscrit.nope')\n"
    )
    assert r.returncode == 0, r.stderr


def test_callbacks_without_their_framework_say_which_extra_to_install():
    for module, blocked, extra in (
        ("lightning", ("lightning", "lightning.pytorch", "pytorch_lightning"), "bscrit[lightning]"),
        ("transformers", ("transformers",), "bscrit[hf]"),
    ):
        r = run(
            "import sys\n"
            f"for name in {blocked!r}:\n"
            "    sys.modules[name] = None  # import fails as if not installed\n"
            "try:\n"
            f"    import bscrit.integrations.{module}\n"
            "except ImportError as e:\n"
            f"    assert {extra!r} in str(e), e\n"
            "else:\n"
            "    raise AssertionError('imported')\n"
        )
        assert r.returncode == 0, r.stderr
