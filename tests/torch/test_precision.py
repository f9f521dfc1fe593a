"""bf16 on CPU: autocast and bf16 weights (bscrit.engine.precision), through the engine, the spec
and the command line."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from bscrit.artifacts.measurement import load_measurement
from bscrit.cli import app
from bscrit.engine.loop import measure_model
from bscrit.engine.precision import cast_floating, check_precision, resolve_precision
from bscrit.errors import SpecError, UsageError
from bscrit.specfile.document import parse_spec
from bscrit.stats.estimators import noise_stats
from bscrit.stats.summary import TAU_BF16, TAU_FP32, set_sums

ASSETS = Path(__file__).resolve().parents[1] / "assets"


def _task() -> tuple[nn.Module, torch.utils.data.TensorDataset]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 12, generator=g)
    y = (x[:, :3].argmax(1) + (torch.rand(256, generator=g) < 0.3).long()) % 3
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 32), nn.LayerNorm(32), nn.ReLU(), nn.Linear(32, 3))
    return model, torch.utils.data.TensorDataset(x, y)


def _gn(**kw: object) -> tuple[float, float, object]:
    model, data = _task()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    raw = measure_model(model, data, nn.functional.cross_entropy, batch_size=16,
                        num_batches=24, groups=4, **kw)  # fmt: skip
    after = model.state_dict()
    assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before.items())
    s = noise_stats(set_sums(raw.tensors))
    return s.G.value, s.N.value, raw


def test_bf16_weights_and_autocast_on_cpu_are_close_to_fp32_and_leave_the_model() -> None:
    g32, n32, raw32 = _gn()
    for kw in ({"weights": "bf16"}, {"amp": "bf16"}):
        g, n, raw = _gn(**kw)
        assert (g, n) != (g32, n32)  # bf16 ran: the rounding shows
        assert abs(g / g32 - 1) < 0.05 and abs(n / n32 - 1) < 0.05, (kw, g / g32, n / n32)
        assert raw.tau == TAU_BF16
    assert raw32.tau == TAU_FP32
    g, n, raw = _gn(weights="fp32")  # already float32: the same numbers, bit for bit
    assert (g, n) == (g32, n32)


def test_bf16_weights_sum_in_float32() -> None:
    """The gradients of a bf16 copy are summed in float32: the group sums (host buffers) are
    float32, not the weights' bf16 (which would round each added batch to 3 digits)."""
    model, data = _task()
    seen: list[torch.dtype] = []
    from bscrit.engine import hot_loop

    original = hot_loop.open_sums

    def spy(weights, device, plan):  # type: ignore[no-untyped-def]
        seen.extend(w.dtype for w in weights)
        return original(weights, device, plan)

    hot_loop.open_sums = spy
    try:
        measure_model(model, data, nn.functional.cross_entropy, batch_size=16, num_batches=8,
                      groups=2, weights="bf16")  # fmt: skip
    finally:
        hot_loop.open_sums = original
    assert seen and set(seen) == {torch.float32}


def test_precision_options_resolve_and_refuse_nonsense() -> None:
    assert resolve_precision(None, "bf16") == "bf16-autocast"
    assert resolve_precision("bf16-autocast", "bf16") == "bf16-autocast"
    assert resolve_precision("bf16-weights", None) == "bf16-weights"
    assert resolve_precision(None, None) is None
    with pytest.raises(UsageError, match="contradicts"):
        resolve_precision("bf16-weights", "bf16")
    with pytest.raises(UsageError, match="expected one of"):
        resolve_precision("fp16", None)
    with pytest.raises(UsageError, match="choose one of"):
        check_precision("bf16", "bf16", torch.device("cpu"))
    with pytest.raises(UsageError, match="not mps"):
        check_precision("bf16", None, torch.device("mps"))
    check_precision("bf16", None, torch.device("cpu"))  # CPU autocast is allowed now


def test_cast_floating_casts_only_floating_tensors() -> None:
    x = {"pixels": torch.ones(2, 3), "ids": torch.arange(3), "pair": (torch.zeros(1), 5)}
    out = cast_floating(x, torch.bfloat16)
    assert out["pixels"].dtype == torch.bfloat16 and out["ids"].dtype == torch.int64
    assert out["pair"][0].dtype == torch.bfloat16 and out["pair"][1] == 5


def _raw_spec(**measure: object) -> dict:
    return {
        "model": {"factory": "tiny.py:make_model"},
        "checkpoint": {"path": "tiny.pt"},
        "data": {"factory": "tiny.py:make_dataset"},
        "loss": "cross_entropy",
        "batch_size": 8,
        "measure": measure,
    }


def test_spec_precision_key_is_checked() -> None:
    spec = parse_spec(_raw_spec(precision="bf16-weights"), "s.yaml", ASSETS)
    assert spec.measure.precision == "bf16-weights"
    assert parse_spec(_raw_spec(), "s.yaml", ASSETS).measure.precision is None
    with pytest.raises(SpecError, match="measure.precision"):
        parse_spec(_raw_spec(precision="fp16"), "s.yaml", ASSETS)


def test_cli_precision_bf16_weights_on_cpu_is_recorded(tmp_path: Path) -> None:
    for name in ("tiny.py", "tiny.pt", "valid.yaml"):
        shutil.copy(ASSETS / name, tmp_path / name)
    out = tmp_path / "m.json"
    base = ["measure", str(tmp_path / "valid.yaml"), "--batches", "16", "--out", str(out), "-q"]
    r = CliRunner().invoke(app, [*base, "--precision", "bf16-weights"])
    assert r.exit_code == 0, r.output
    assert load_measurement(out).amp == "bf16-weights"
    r = CliRunner().invoke(app, [*base, "--amp", "bf16"])
    assert r.exit_code == 0, r.output
    assert load_measurement(out).amp == "bf16"


def test_bf16_micro_batches_accumulate_in_float32() -> None:
    from bscrit.engine.objective import batch_gradient

    model, data = _task()
    model = model.to(torch.bfloat16)
    x, y = data.tensors[0][:16].to(torch.bfloat16), data.tensors[1][:16]
    params = list(model.parameters())
    ce = nn.functional.cross_entropy
    _, whole = batch_gradient(model, ce, params, x, y)
    _, chunked = batch_gradient(model, ce, params, x, y, micro=4, float32_sums=True)
    _, training = batch_gradient(model, ce, params, x, y, micro=4)  # .grad needs bf16
    assert {g.dtype for g in whole} == {torch.bfloat16}  # one chunk: as the backward gave it
    assert {g.dtype for g in chunked} == {torch.float32}  # four chunks: summed in float32
    assert {g.dtype for g in training} == {torch.bfloat16}
    for a, b in zip(whole, chunked):
        assert torch.allclose(a.float(), b, rtol=0.05, atol=1e-3)
    g, n, _ = _gn(weights="bf16", micro_batch_size=4)
    g1, n1, _ = _gn(weights="bf16")
    assert abs(g / g1 - 1) < 0.05 and abs(n / n1 - 1) < 0.05
