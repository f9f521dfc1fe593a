"""mode="free" of the Lightning callback: a run with gradient accumulation ends bitwise as one
without the callback; one series line per window of steps, with the drift; refused without
accumulation."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("lightning")

from test_lightning_callback import fit  # noqa: E402  (the same run, module and logger)

from bscrit.errors import UsageError
from bscrit.integrations.lightning import BscritCallback
from bscrit.integrations.recorder import SERIES_KEYS, read_series

pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec:FutureWarning", "ignore:.*num_workers")


def test_free_mode_leaves_the_run_bitwise_unchanged_and_writes_windows(tmp_path):
    torch.set_num_threads(1)
    plain, _ = fit(tmp_path / "plain", steps=20, accumulate=2)
    out = tmp_path / "free"
    cb = BscritCallback(out, every_n_steps=5, mode="free")
    measured, log = fit(tmp_path / "measured", [cb], steps=20, accumulate=2)
    a, b = plain.state_dict(), measured.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    rows = read_series(out / "series.jsonl")
    logged = [(s, m) for s, m in log.metrics if "bscrit/nsr_raw" in m]
    assert rows and len(logged) == len(rows)
    for r, (s, _) in zip(rows, logged):
        # trainer.global_step's numbers once the step is taken (1 = the first): the window's
        # last pooled step, logged at the step that closes the window (every 5th)
        assert 1 <= r["free"]["first_step"] < r["step"] <= s <= 20 and s % 5 == 0
    for r in rows:
        assert tuple(r)[: len(SERIES_KEYS)] == SERIES_KEYS and r["mode"] == "free"
        assert r["regime"] == "epoch_start" and r["free"]["regime"]["covered"]  # epochs marked
        assert r["batch_size"] == 16 and r["examples_seen"] == 16 * r["step"]
        free = r["free"]
        assert (free["slices"], free["micro_batch_size"], free["dataset_size"]) == (2, 8, 96)
        assert free["steps_pooled"] >= 2 and free["steps_skipped"] == 0
        assert r["optimizer"]["name"] == "adamw"  # the live optimizer, for `bscrit schedule`
        assert r["drift"]["relative"] > 0 and r["file"] is None
        # τ = 1/(2ηλ) of the run's AdamW (η = 0.01, λ = 0.05): the window is far shorter
        assert free["interval"]["relaxation_steps"] == pytest.approx(1000.0)
        assert free["interval"]["scope"] == "window"
        lo, hi = r["G_ci95"]
        assert lo <= r["G"] <= hi
    assert all("bscrit/drift" in m and "bscrit/b_star_raw" in m for _, m in logged)


def test_free_mode_needs_several_micro_batches(tmp_path):
    cb = BscritCallback(tmp_path / "x", every_n_steps=5, mode="free")
    with pytest.raises(UsageError, match="accumulation"):
        fit(tmp_path, [cb], steps=2, accumulate=1)
    with pytest.raises(UsageError, match="every_n_steps"):
        BscritCallback(tmp_path, every_n_steps=1, mode="free")
