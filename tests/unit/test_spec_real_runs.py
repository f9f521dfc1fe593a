"""The spec keys of real runs: ``loss: model``, ``micro_batch_size``, ``${spec_dir}`` (no torch)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bscrit.errors import SpecError
from bscrit.specfile.document import load_spec, parse_spec
from bscrit.specfile.sections import LossSpec

ASSETS = Path(__file__).resolve().parents[1] / "assets"


def minimal(**over):
    raw = {
        "model": {"factory": "tiny.py:make_model", "kwargs": {"width": 8}},
        "data": {"factory": "tiny.py:make_dataset", "kwargs": {"n": 64}},
        "loss": "cross_entropy",
        "batch_size": 32,
    }
    raw.update(over)
    return raw


def problems(raw, base_dir=ASSETS) -> dict[str, str]:
    with pytest.raises(SpecError) as info:
        parse_spec(raw, "test.yaml", base_dir)
    return {p.key: p.message for p in info.value.problems}


# ---------------------------------------------------------------------------------------------
# loss: model
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss", ["model", {"name": "model"}, " Model "])
def test_loss_model_is_the_models_own_loss(loss):
    spec = parse_spec(minimal(loss=loss), "test.yaml", ASSETS)
    assert spec.loss == LossSpec(name="model", factory=None, kwargs={})


def test_loss_model_takes_no_kwargs_and_a_typo_is_named():
    assert (
        "not used with loss: model"
        in problems(minimal(loss={"name": "model", "kwargs": {"key": "loss"}}))["loss.kwargs"]
    )
    assert "did you mean 'model'" in problems(minimal(loss="modle"))["loss"]


# ---------------------------------------------------------------------------------------------
# micro_batch_size
# ---------------------------------------------------------------------------------------------


def test_micro_batch_size_is_read_and_defaults_to_none():
    assert parse_spec(minimal(), "test.yaml", ASSETS).micro_batch_size is None
    spec = parse_spec(minimal(batch_size=256, micro_batch_size=32), "test.yaml", ASSETS)
    assert spec.micro_batch_size == 32 and spec.batch_size == 256


@pytest.mark.parametrize(
    ("micro", "expected"),
    [
        (48, "48 does not divide batch_size = 256 (the micro-batches of one batch must be equal; "
         "divisors near it: 32, 64)"),
        (512, "512 does not divide batch_size = 256"),
        (0, "expected a positive integer, got 0"),
        ("32", "expected a positive integer"),
        (True, "expected a positive integer"),
    ],
)  # fmt: skip
def test_a_micro_batch_size_that_does_not_divide_b_is_named(micro, expected):
    found = problems(minimal(batch_size=256, micro_batch_size=micro))
    assert list(found) == ["micro_batch_size"]
    assert expected in found["micro_batch_size"]


def test_micro_batch_size_is_reported_with_the_other_problems():
    found = problems(minimal(batch_size=10, micro_batch_size=4, loss="mes"))
    assert set(found) == {"micro_batch_size", "loss"}


# ---------------------------------------------------------------------------------------------
# ${spec_dir}
# ---------------------------------------------------------------------------------------------


def test_spec_dir_is_substituted_in_every_factory_kwargs(tmp_path):
    (tmp_path / "tiny.py").write_text((ASSETS / "tiny.py").read_text())
    text = """
model: {factory: tiny.py:make_model, kwargs: {path: "${spec_dir}/w.pt"}}
data:
  factory: tiny.py:make_dataset
  kwargs: {path: "${spec_dir}/tokens.pt", files: ["${spec_dir}/a", {b: "${spec_dir}"}], n: 3}
eval_data: {factory: tiny.py:make_dataset, kwargs: {root: "${ spec_dir }/eval"}}
loss: {factory: tiny.py:make_loss, kwargs: {cache: "${spec_dir}/c", note: "cost $$5"}}
batch_size: 8
"""
    (tmp_path / "sub").mkdir()
    spec_file = tmp_path / "sub" / "spec.yaml"
    spec_file.write_text(text.replace("tiny.py", "../tiny.py"))
    spec = load_spec(spec_file)
    folder = str(spec_file.parent.resolve())
    assert spec.model.kwargs == {"path": f"{folder}/w.pt"}
    assert spec.data.kwargs == {
        "path": f"{folder}/tokens.pt",
        "files": [f"{folder}/a", {"b": folder}],
        "n": 3,
    }
    assert spec.eval_data.kwargs == {"root": f"{folder}/eval"}
    assert spec.loss.kwargs == {"cache": f"{folder}/c", "note": "cost $5"}


def test_an_unknown_variable_is_a_problem_at_its_key():
    found = problems(
        minimal(
            data={"factory": "tiny.py:make_dataset", "kwargs": {"files": ["${data_dir}/x"]}},
            model={"factory": "tiny.py:make_model", "kwargs": {"p": "${SPEC_DIR}"}},
        )
    )
    assert "unknown variable ${data_dir}" in found["data.kwargs.files[0]"]
    assert "known: ${spec_dir}" in found["data.kwargs.files[0]"]
    assert "unknown variable ${SPEC_DIR}" in found["model.kwargs.p"]


def test_strings_without_variables_and_other_values_are_left_alone():
    kwargs = {"root": "data", "price": "$5", "n": 3, "flag": True, "none": None}
    spec = parse_spec(
        minimal(data={"factory": "tiny.py:make_dataset", "kwargs": kwargs}), "t.yaml", ASSETS
    )
    assert spec.data.kwargs == kwargs


# ---------------------------------------------------------------------------------------------
# every problem at once: a factory's missing name beside the others (issue 27)
# ---------------------------------------------------------------------------------------------


def test_a_factory_typo_is_reported_with_the_micro_batch_size_and_names_the_spec_file(tmp_path):
    (tmp_path / "net.py").write_text("import torch\n\ndef make_model():\n    return None\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "model: net.py:make_modle\ndata: net.py:make_data\nloss: cross_entropy\n"
        "batch_size: 8\nmicro_batch_size: 5\n"
    )
    with pytest.raises(SpecError) as info:
        load_spec(spec)
    found = {p.key: p.message for p in info.value.problems}
    assert set(found) == {"model.factory", "data.factory", "micro_batch_size"}
    hint = "has no attribute 'make_modle' (did you mean 'make_model'?)"
    assert found["model.factory"].endswith(hint)
    assert "has no attribute 'make_data'" in found["data.factory"]
    assert info.value.source == str(spec)  # the file, not its folder
    assert info.value.message.startswith(f"invalid spec {spec} (3 problem(s)):")


@pytest.mark.parametrize(
    "source",
    [
        "from os.path import *\n",  # names that cannot be read without the import
        "def __getattr__(name):\n    return print\n",
        "globals()['make_x'] = print\n",
        "import sys\nsys.modules[__name__] = print\n",
    ],
)
def test_a_factory_file_that_binds_names_at_run_time_is_left_to_the_import(tmp_path, source):
    (tmp_path / "dyn.py").write_text(source)
    parse_spec(minimal(model=f"{tmp_path}/dyn.py:make_x"), "test.yaml", ASSETS)


def test_names_bound_under_if_try_with_and_by_imports_are_found(tmp_path):
    (tmp_path / "f.py").write_text(
        "import os.path as osp\nfrom math import sqrt\ntry:\n    import numpy\n"
        "except ImportError:\n    pass\nelse:\n    a = 1\nif True:\n    class K: ...\n"
        "with open(__file__) as fh:\n    def g(): ...\n(b, c), d = (1, 2), 3\n"
    )
    for name in ("osp", "sqrt", "numpy", "a", "K", "g", "b", "c", "d", "fh"):
        parse_spec(minimal(loss=f"{tmp_path}/f.py:{name}"), "test.yaml", ASSETS)
    (tmp_path / "bad.py").write_text("def f(:\n")
    found = problems(minimal(loss=f"{tmp_path}/bad.py:f"))
    assert "cannot import" in found["loss.factory"] and "SyntaxError" in found["loss.factory"]


@pytest.mark.parametrize(
    ("batch_size", "micro", "near"),
    [(8, 5, "4, 8"), (8, 3, "2, 4"), (256, 48, "32, 64"), (12, 5, "4, 6"), (256, 512, "256"),
     (97, 5, "1, 97")],
)  # fmt: skip
def test_a_micro_batch_size_gets_the_nearest_divisors_below_and_above(batch_size, micro, near):
    found = problems(minimal(batch_size=batch_size, micro_batch_size=micro))
    assert found["micro_batch_size"].endswith(f"divisors near it: {near})")
