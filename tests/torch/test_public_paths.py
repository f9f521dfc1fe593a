"""The paths users import keep working across the package's restructure (0.1 → layers)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[2]


def test_console_script_entry_point_resolves_to_the_cli_main():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, attr = scripts["bscrit"].partition(":")
    main = getattr(importlib.import_module(module), attr)
    from bscrit.cli import app

    assert callable(main) and main.__module__ == "bscrit.cli"
    assert {c.name for c in app.registered_commands} == {
        "measure", "predict", "check", "scale", "confirm", "svag", "demo", "schedule"
    }  # fmt: skip


def test_api_names_are_the_library_functions():
    import bscrit
    from bscrit import api
    from bscrit.artifacts.measurement import Measurement
    from bscrit.theory.prediction import Prediction

    for name in ("measure", "predict", "scale", "load_measurement"):
        assert getattr(bscrit, name) is getattr(api, name)
    assert bscrit.Measurement is Measurement and bscrit.Prediction is Prediction


def test_free_capture_public_and_old_path():
    import bscrit
    from bscrit.engine.free_capture import FreeCapture

    assert bscrit.FreeCapture is FreeCapture
    sys.modules.pop("bscrit.free_capture", None)
    with pytest.warns(DeprecationWarning, match="from bscrit import FreeCapture"):
        old = importlib.import_module("bscrit.free_capture")
    assert old.FreeCapture is FreeCapture


def test_integrations_modules_import():
    pytest.importorskip("lightning")
    pytest.importorskip("transformers")
    from bscrit.integrations.lightning import BscritCallback as L
    from bscrit.integrations.transformers import BscritCallback as T

    assert L.__module__ == "bscrit.integrations.lightning"
    assert T.__module__ == "bscrit.integrations.transformers"
