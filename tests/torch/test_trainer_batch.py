"""An HF Trainer folder's ``trainer_state.json`` against the batch size B of the spec (issue 27:
a spec B equal to the per-device batch of an accumulating run got no warning)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bscrit.load.hf import trainer_batch_warning
from bscrit.specfile.document import load_spec
from bscrit.workflows.plan import MeasureOptions, plan_measurement

ASSETS = Path(__file__).resolve().parents[1] / "assets"


def _folder(tmp_path: Path, **state: object) -> Path:
    folder = tmp_path / "checkpoint-300"
    folder.mkdir()
    (folder / "trainer_state.json").write_text(json.dumps(state))
    return folder


def test_a_batch_that_is_the_per_device_batch_of_an_accumulating_run_is_named(tmp_path):
    # 300 steps over 2.88 epochs of 1,668 examples: 16 examples a step, 8 per device
    folder = _folder(tmp_path, global_step=300, epoch=300 * 16 / 1668, train_batch_size=8)
    w = trainer_batch_warning(folder, 8, 1668, "the spec's batch_size")
    assert w is not None
    assert w.startswith(f"the spec's batch_size = 8, but {folder / 'trainer_state.json'} records ")
    assert "epoch 2.878 at step 300 and train_batch_size = 8 per device: about 16 examples" in w
    assert "per device × gradient accumulation × devices" in w
    assert trainer_batch_warning(folder, 16, 1668) is None  # B = 16 agrees
    assert trainer_batch_warning(folder, 17, 1668) is None  # within the tolerance


def test_without_epoch_or_data_size_only_a_batch_off_the_per_device_multiple_is_named(tmp_path):
    folder = _folder(tmp_path, global_step=300, train_batch_size=8)
    w = trainer_batch_warning(folder, 12, None)
    assert w is not None and "batch_size = 12 is not a multiple of" in w
    assert "'s train_batch_size = 8 per device;" in w
    assert trainer_batch_warning(folder, 8, None) is None  # cannot tell: no accumulation known
    assert trainer_batch_warning(folder, 24, None) is None


@pytest.mark.parametrize("text", ["{", "[]", '{"train_batch_size": true, "epoch": "x"}'])
def test_an_unreadable_or_odd_trainer_state_gives_no_warning(tmp_path, text):
    (tmp_path / "trainer_state.json").write_text(text)
    assert trainer_batch_warning(tmp_path, 7, 100) is None
    assert trainer_batch_warning(tmp_path / "missing", 7, 100) is None


def _trainer_folder(tmp_path: Path) -> Path:
    """A Trainer folder of the tiny model: 12 steps over 3 epochs of 64 examples, 8 per device
    (16 examples a step: accumulation 2)."""
    from safetensors.torch import save_file

    folder = _folder(tmp_path, global_step=12, epoch=12 * 16 / 64, train_batch_size=8)
    weights = torch.load(ASSETS / "tiny.pt", weights_only=True)["model"]
    save_file({k: v.contiguous() for k, v in weights.items()}, str(folder / "model.safetensors"))
    return folder


def test_measure_plan_names_the_disagreement(tmp_path):
    spec = load_spec(ASSETS / "valid.yaml")  # B = 8, 48 examples (a subset of 64)
    folder = _trainer_folder(tmp_path)
    plan = plan_measurement(spec, [folder], MeasureOptions(), None)
    # the spec measures a subset: its size says nothing about the run's epochs
    assert plan.notes == []
    plan = plan_measurement(spec, [folder], MeasureOptions(batch_size=12), None)
    assert len(plan.notes) == 1 and plan.notes[0].startswith("--batch-size = 12 is not a multiple")


def test_the_warning_reaches_the_measurement_and_its_output(tmp_path):
    from typer.testing import CliRunner

    from bscrit.artifacts.measurement import load_measurement
    from bscrit.cli import app

    folder = _trainer_folder(tmp_path)
    text = (ASSETS / "valid.yaml").read_text().replace("  subset: 48\n", "")
    spec = tmp_path / "spec.yaml"
    spec.write_text(text.replace("tiny.py", str(ASSETS / "tiny.py")))
    out = tmp_path / "m.json"
    r = CliRunner().invoke(
        app, ["measure", str(spec), "-c", str(folder), "-k", "16", "-o", str(out)]
    )
    assert r.exit_code == 0, r.output
    said = "the spec's batch_size = 8, but"
    assert said in " ".join(r.output.split())
    warnings = load_measurement(out).warnings
    assert any(w.startswith(said) and "about 16 examples per optimizer step" in w for w in warnings)


def test_a_real_trainer_run_with_accumulation_is_read_right(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from test_hf_callback import examples, gpt2  # noqa: PLC0415

    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=4, gradient_accumulation_steps=2,
        max_steps=6, save_steps=6, report_to=[], use_cpu=True, seed=0, disable_tqdm=True,
    )  # fmt: skip
    ds = examples()
    transformers.Trainer(model=gpt2(), args=args, train_dataset=ds).train()
    folder = tmp_path / "checkpoint-6"
    w = trainer_batch_warning(folder, 4, len(ds), "the spec's batch_size")  # the per-device batch
    assert w is not None and "train_batch_size = 4 per device: about 8 examples per optimizer" in w
    assert trainer_batch_warning(folder, 8, len(ds)) is None  # 4 × accumulation 2
