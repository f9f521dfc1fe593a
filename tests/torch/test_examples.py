"""The shipped examples' specs are valid and their networks are what they claim to be."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from bscrit.engine.loop import measure_model
from bscrit.errors import DataError
from bscrit.load.factories import build_dataset, build_loss, build_model
from bscrit.specfile.document import load_spec

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_cifar10_spec_is_valid_and_network_is_scale_invariant() -> None:
    spec = load_spec(EXAMPLES / "cifar10" / "spec.yaml")
    assert spec.batch_size == 128 and spec.optimizer is not None and spec.optimizer.lr == 0.8
    assert spec.data.dataset == "CIFAR10" and len(spec.data.transforms) == 4
    assert spec.data.kwargs["download"] is False
    model = build_model(spec)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) > 400_000
    tiny_model = dataclasses.replace(spec.model, kwargs={"width": 4, "blocks": 1})
    small = build_model(dataclasses.replace(spec, model=tiny_model))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 3, 32, 32, generator=g)
    ds = TensorDataset(x, torch.randint(0, 10, (32,), generator=g))
    raw = measure_model(small, ds, build_loss(spec), batch_size=8, num_batches=4, groups=2)
    assert raw.tensors and all(t.is_scale_invariant() for t in raw.tensors)


def test_cifar10_without_data_is_a_clear_error(tmp_path: Path) -> None:
    spec = load_spec(EXAMPLES / "cifar10" / "spec.yaml")
    with pytest.raises(DataError, match="data"):
        build_dataset(spec.data, tmp_path)


def test_digits_spec_is_valid() -> None:
    spec = load_spec(EXAMPLES / "digits" / "spec.yaml")
    model = build_model(spec)
    ds = build_dataset(spec.data, spec.base_dir)
    assert len(ds) == 1500
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 64 * 64 * 2
