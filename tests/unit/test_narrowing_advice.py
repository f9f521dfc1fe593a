"""What would narrow a wide interval (issue 23, "Advice that fits the scope"), and the demo's
checkpoints giving enough draws for an interval over the equilibrium."""

from __future__ import annotations

import importlib.util
import io
import math
import random
from pathlib import Path

import pytest

from bscrit.optim.registry import OptimizerInfo
from bscrit.stats.equilibrium import (
    draw_blocks,
    narrowing_advice,
    relaxation_steps,
    wide_interval,
)


def _equilibrium_helpers():  # type: ignore[no-untyped-def]
    """``_fixture`` and ``_with_equilibrium`` of test_equilibrium.py (no test package here)."""
    path = Path(__file__).with_name("test_equilibrium.py")
    spec = importlib.util.spec_from_file_location("_test_equilibrium_helpers", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module._fixture, module._with_equilibrium


def test_the_full_demo_saves_six_checkpoints_that_are_six_independent_draws() -> None:
    from bscrit.workflows.demo import BASE, STEPS_PER_EPOCH, DemoConfig

    cfg = DemoConfig.full()
    opt = OptimizerInfo("sgd", lr=BASE["lr"], weight_decay=BASE["weight_decay"])
    tau, _ = relaxation_steps(opt)
    assert tau == pytest.approx(10_000)
    steps = [e * STEPS_PER_EPOCH for e in range(cfg.save_from, cfg.epochs + 1, cfg.save_every)]
    blocks, note = draw_blocks(steps, tau)
    assert len(steps) == 6 and len(blocks) == 6 and "6 independent draws" in note
    assert cfg.save_from >= 500  # at equilibrium (R flat by about epoch 500)


def test_the_advice_names_batches_for_one_checkpoint_and_draws_for_the_equilibrium() -> None:
    one = narrowing_advice("checkpoint", 10_000.0)
    assert "more batches (--batches)" in one and "this checkpoint" in one
    assert "≥ 10000 steps = 1/(2ηλ) apart" in one and "--sample-steps" in one
    assert "these checkpoints" in narrowing_advice("checkpoints", None)
    eq = narrowing_advice("equilibrium", 10_000.0, draws=3)
    assert "rests on 3 draws" in eq and "more draws narrow it" in eq
    assert "--sample-steps" in eq and "narrow only the batch noise within each draw" in eq
    assert wide_interval((5.36, math.inf)) and wide_interval((10.0, 21.0))
    assert wide_interval((0.0, 1.0)) and not wide_interval((17.1, 34.0))


def test_a_wide_equilibrium_interval_asks_for_more_draws_not_more_batches() -> None:
    from rich.console import Console

    from bscrit import report
    from bscrit.theory.prediction import predict

    fixture, with_equilibrium = _equilibrium_helpers()
    m = fixture()
    tau, _ = relaxation_steps(m.optimizer)
    rng = random.Random(0)
    gs = [0.002, 0.1, 0.004]  # three draws scattered far more than their (zero) batch noise
    ns = [0.8 * (1 + 0.05 * rng.gauss(0, 1)) for _ in gs]
    me = with_equilibrium(m, [round(i * 2 * tau) for i in range(3)], gs, ns)
    e = me.equilibrium_interval
    assert e.scope == "equilibrium" and e.draws == 3
    assert not math.isfinite(e.sets["scale_invariant"].nsr_ci95[1])  # G's interval reaches 0
    p = predict([("m.json", me)])
    said = " ".join(p.base.warnings)
    assert "rests on 3 draws from the equilibrium: more draws narrow it" in said
    assert "more batches (--batches)" not in said and "Measure more batches" not in said
    assert "more draws from the equilibrium" in p.recommended.note
    console = Console(file=io.StringIO(), width=200, highlight=False)
    report.show(report.format_measurement(me), console=console)
    assert "to narrow it: this interval rests on 3 draws" in console.file.getvalue()  # type: ignore[attr-defined]


def test_one_checkpoint_without_signal_asks_for_more_batches() -> None:
    import dataclasses

    from bscrit.theory.prediction import predict

    fixture, _ = _equilibrium_helpers()
    m = fixture()
    si = m.scale_invariant
    # the same noise, with the signal shrunk until Ĝ's batch-noise interval reaches 0
    lo, hi = si.noise_stats().G.ci95
    shift = lo + 0.1 * (hi - lo)
    weak = dataclasses.replace(si, G=si.G - shift,
                               jackknife_G=tuple(g - shift for g in si.jackknife_G))  # fmt: skip
    m1 = dataclasses.replace(m, scale_invariant=weak, all=weak)
    assert m1.scale_invariant.noise_stats().G.ci95[0] <= 0
    said = " ".join(predict([("m.json", m1)]).base.warnings)
    assert "more batches (--batches) narrow the batch noise at this checkpoint" in said
    assert "for the equilibrium: several checkpoints" in said
