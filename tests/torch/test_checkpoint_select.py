"""``-c`` folders and globs, ``--last K`` by the saved step, natural sort, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bscrit.errors import CheckpointError, UsageError
from bscrit.load.selection import natural_key, saved_step, select


def _save(path: Path, **extra: object) -> Path:
    torch.save({"model": {"w": torch.zeros(2)}, **extra}, path)
    return path


def test_saved_step_reads_dicts_lightning_and_trainer_folders(tmp_path: Path) -> None:
    assert saved_step(_save(tmp_path / "a.pt", step=120)) == 120
    assert saved_step(_save(tmp_path / "b.ckpt", global_step=7, epoch=1)) == 7
    assert saved_step(_save(tmp_path / "c.pt")) is None
    assert saved_step(_save(tmp_path / "d.pt", step=torch.tensor(5))) is None  # not an int
    hf = tmp_path / "checkpoint-500"
    hf.mkdir()
    (hf / "trainer_state.json").write_text(json.dumps({"global_step": 500}))
    assert saved_step(hf) == 500
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    assert saved_step(tmp_path / "junk.pt") is None


def test_folder_and_last_k_by_saved_step(tmp_path: Path) -> None:
    # names sort differently from steps: the step decides
    for name, step in (("z.pt", 100), ("a.pt", 300), ("m.pt", 200), ("b.pt", 400)):
        _save(tmp_path / name, step=step)
    (tmp_path / "notes.txt").write_text("ignored")
    sel = select([tmp_path], last=2)
    assert [p.name for p in sel.paths] == ["a.pt", "b.pt"]
    assert sel.steps == (300, 400)
    assert sel.note is not None and "last 2 of 4" in sel.note and "step saved" in sel.note


def test_glob_without_steps_uses_a_natural_sort_and_says_so(tmp_path: Path) -> None:
    for e in (1, 2, 9, 10, 11):
        _save(tmp_path / f"epoch{e}.pt")
    sel = select([str(tmp_path / "epoch*.pt")], last=3)
    assert [p.name for p in sel.paths] == ["epoch9.pt", "epoch10.pt", "epoch11.pt"]
    assert sel.steps == (None, None, None)
    assert sel.note is not None and "natural sort" in sel.note
    assert natural_key(Path("epoch9.pt")) < natural_key(Path("epoch10.pt"))


def test_files_named_one_by_one_keep_their_order(tmp_path: Path) -> None:
    a, b = _save(tmp_path / "a.pt", step=2), _save(tmp_path / "b.pt", step=1)
    sel = select([a, b])
    assert sel.paths == (a, b) and sel.steps == (2, 1) and sel.note is None


def test_trainer_folders_inside_a_run_folder(tmp_path: Path) -> None:
    for step in (10, 20, 30):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        (d / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    sel = select([tmp_path], last=2)
    assert [p.name for p in sel.paths] == ["checkpoint-20", "checkpoint-30"]
    one = select([tmp_path / "checkpoint-10"])  # a Trainer folder is one checkpoint
    assert one.paths == (tmp_path / "checkpoint-10",) and one.steps == (10,)


def test_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no checkpoint matches"):
        select([str(tmp_path / "epoch*.pt")])
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        select([tmp_path])
    with pytest.raises(CheckpointError, match="not found"):
        select([tmp_path / "missing.pt"])
    with pytest.raises(UsageError, match="at least 1"):
        select([tmp_path], last=0)


def test_a_saved_epoch_orders_the_checkpoints_and_estimates_their_steps(tmp_path: Path) -> None:
    for name, epoch in (("b.pt", 30), ("a.pt", 40), ("c.pt", 20)):
        _save(tmp_path / name, epoch=epoch)
    sel = select([tmp_path], last=2)
    assert [p.name for p in sel.paths] == ["b.pt", "a.pt"]
    assert sel.note is not None and "epoch saved in each" in sel.note
    steps, note = sel.steps_or_epochs(62)
    assert steps == [30 * 62, 40 * 62] and note is not None and "× 62 steps per epoch" in note
    both = select([_save(tmp_path / "d.pt", step=5, epoch=1)])
    assert both.steps_or_epochs(62) == ([5], None)  # a saved step wins


def test_progress_reads_examples_and_tokens_seen_else_step_times_b(tmp_path: Path) -> None:
    from bscrit.load.selection import progress, saved_seen

    a = _save(tmp_path / "a.pt", step=10, examples_seen=333, tokens_seen=9000)
    b = _save(tmp_path / "b.pt", step=20)
    hf, hf0 = tmp_path / "checkpoint-30", tmp_path / "checkpoint-40"
    for folder, step, tokens in ((hf, 30, 61440), (hf0, 40, 0)):
        folder.mkdir()
        state = {"global_step": step, "num_input_tokens_seen": tokens}
        (folder / "trainer_state.json").write_text(json.dumps(state))
    assert saved_seen(a) == (333, 9000) and saved_seen(b) == (None, None)
    assert saved_seen(hf) == (None, 61440) and saved_seen(hf0) == (None, None)  # 0: not counted
    sel = select([a, b, hf, hf0])
    p = progress(sel.paths, sel.steps, 8)
    assert p.steps == [10, 20, 30, 40]
    assert p.examples_seen == [333, 20 * 8, 30 * 8, 40 * 8]  # saved, else step × B
    assert p.tokens_seen == [9000, None, 61440, None]
    assert p.note == "examples seen = step × B = step × 8"
    one = progress([b], [20], 8, step=5, examples_seen=77)
    assert (one.steps, one.examples_seen) == ([5], [77])
    assert progress([b], [None], 8).examples_seen == [None]  # no step, nothing saved: unknown
    with pytest.raises(UsageError, match="step must be ≥ 0"):
        progress([b], [20], 8, step=-1)
    with pytest.raises(UsageError, match="examples_seen names the position of one checkpoint"):
        progress([a, b], [10, 20], 8, examples_seen=5)
