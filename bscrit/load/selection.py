"""Which checkpoints ``-c`` names: files, folders and globs, ordered by the step saved in each.

Users keep a checkpoint every epoch or every N steps; ``-c runs/`` or ``-c 'runs/epoch*.pt'``
with ``--last K`` measures the last K of them by training step. The step is read without torch
and without running the file's pickle (:mod:`bscrit.load.checkpoint_file`): a top-level ``step`` or
``global_step`` (Lightning saves ``global_step``), or for a Hugging Face Trainer folder
(``checkpoint-N/``) the ``global_step`` of its ``trainer_state.json``; for a
``torch.distributed.checkpoint`` folder (``step-N/`` with a ``.metadata``) its saved
``train_state.step`` / ``step``, else the N of its name. When a step is missing the
checkpoints are ordered by a natural sort of their names (``epoch9`` before ``epoch10``), and the
note says so. A saved ``epoch`` (without a step) orders them too, and times the steps per epoch it
estimates how far apart they are, which the equilibrium interval needs (docs/theory.md §8).
"""

from __future__ import annotations

import glob
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bscrit.errors import CheckpointError, UsageError
from bscrit.load import checkpoint_file
from bscrit.specfile.references import user_path

#: Files inside a folder that are taken as checkpoints.
SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors", ".tar")
#: A folder holding one of these is one (Hugging Face) checkpoint, not a folder of checkpoints.
FOLDER_MARKERS = (
    "trainer_state.json",
    "config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
)
#: Top-level keys of a checkpoint dict that hold its training step, in order.
STEP_KEYS = ("global_step", "step")
#: Without a step, the epoch tells the order, and (× steps per epoch) roughly the spacing.
EPOCH_KEY = "epoch"
#: Top-level keys of a checkpoint dict that count the training examples / tokens consumed.
SEEN_KEYS = ("examples_seen", "tokens_seen")
#: The tokens an HF Trainer consumed, in its ``trainer_state.json`` (0 unless the run set
#: ``include_num_input_tokens_seen``).
HF_TOKENS_KEY = "num_input_tokens_seen"
_GLOB = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class Selection:
    """The checkpoints to measure, in order, with the step saved in each (None: not saved).

    ``note`` says how a folder or glob was expanded and ordered (None for files named one by one).
    """

    paths: tuple[Path, ...]
    steps: tuple[int | None, ...]
    note: str | None = None
    epochs: tuple[int | None, ...] = ()  # the saved epoch where no step was saved

    def steps_or_epochs(self, steps_per_epoch: int) -> tuple[list[int | None], str | None]:
        """Each checkpoint's step, from its saved epoch × ``steps_per_epoch`` where no step was
        saved (and a note saying so), None where neither was."""
        epochs = self.epochs or (None,) * len(self.steps)
        out: list[int | None] = []
        for s, e in zip(self.steps, epochs, strict=True):
            out.append(s if s is not None else (None if e is None else e * steps_per_epoch))
        used = any(s is None and e is not None for s, e in zip(self.steps, epochs, strict=True))
        note = f"steps = saved epoch × {steps_per_epoch} steps per epoch" if used else None
        return out, note


def natural_key(path: Path) -> list[object]:
    """Sort key that orders digit runs as numbers: ``epoch9.pt`` < ``epoch10.pt``."""
    return [int(p) if p.isdigit() else p.lower() for p in re.split(r"(\d+)", str(path))]


def is_checkpoint_folder(path: Path) -> bool:
    """A folder that is one checkpoint (``save_pretrained`` output or a Trainer folder)."""
    return path.is_dir() and (
        checkpoint_file.is_dcp_folder(path) or any((path / f).exists() for f in FOLDER_MARKERS)
    )


def _step_of_mapping(obj: object) -> int | None:
    if not isinstance(obj, Mapping):
        return None
    for key in STEP_KEYS:
        v = obj.get(key)
        if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
            return v
    return None


def saved_step(path: Path) -> int | None:
    """The training step saved with a checkpoint, or None when it has none (or is unreadable)."""
    return saved_position(path)[0]


def saved_position(path: Path) -> tuple[int | None, int | None]:
    """``(step, epoch)`` saved with a checkpoint (None where not saved, or unreadable)."""
    if path.is_dir() and checkpoint_file.is_dcp_folder(path):
        from bscrit.load import dcp  # torch

        return dcp.saved_step(path), None
    if path.is_dir():
        state = path / "trainer_state.json"
        try:
            return _step_of_mapping(json.loads(state.read_text(encoding="utf-8"))), None
        except (OSError, ValueError):
            return None, None
    if checkpoint_file.file_problem(path) is not None:
        return None, None
    found = checkpoint_file.saved_ints(path, (*STEP_KEYS, EPOCH_KEY))
    epoch = found.get(EPOCH_KEY)
    return _step_of_mapping(found), epoch if epoch is not None and epoch >= 0 else None


def _count(v: object) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None


def saved_seen(path: Path) -> tuple[int | None, int | None]:
    """``(examples_seen, tokens_seen)`` saved with a checkpoint (None where not saved).

    A ``torch.save`` dict's top-level ``examples_seen`` / ``tokens_seen``; an HF Trainer folder's
    ``num_input_tokens_seen`` (tokens only, and only when positive: the Trainer writes 0 when it
    does not count them).
    """
    if path.is_dir():
        try:
            raw = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None, None
        tokens = _count(raw.get(HF_TOKENS_KEY)) if isinstance(raw, Mapping) else None
        return None, tokens or None
    if checkpoint_file.file_problem(path) is not None:
        return None, None
    found = checkpoint_file.saved_ints(path, SEEN_KEYS)
    return _count(found.get(SEEN_KEYS[0])), _count(found.get(SEEN_KEYS[1]))


@dataclass(frozen=True)
class Progress:
    """How far into training each checkpoint is: step, examples and tokens seen (None: unknown)."""

    steps: list[int | None]
    examples_seen: list[int | None]
    tokens_seen: list[int | None]
    note: str | None = None


def progress(
    paths: Sequence[Path],
    steps: Sequence[int | None],
    batch_size: int,
    *,
    step: int | None = None,
    examples_seen: int | None = None,
) -> Progress:
    """Each checkpoint's step, examples seen and tokens seen, for ``bscrit schedule``.

    ``step`` / ``examples_seen`` (``measure --step``, ``--examples-seen``) name them for one
    checkpoint and override what it saved. Otherwise examples seen are the checkpoint's own
    ``examples_seen`` when it saved one, else step × ``batch_size``: the run's batch per optimizer
    step (the spec's ``batch_size``, gradient accumulation and data-parallel ranks included),
    assuming the run kept that batch size from step 0. Tokens seen are only read, never guessed.

    Raises:
        UsageError: ``step`` or ``examples_seen`` with more than one checkpoint, or negative.
    """
    for key, v in (("step", step), ("examples_seen", examples_seen)):
        if v is None:
            continue
        if v < 0:
            raise UsageError(f"{{{key}}} must be ≥ 0, got {v}", **{key: key})
        if len(paths) != 1:
            raise UsageError(
                f"{{{key}}} names the position of one checkpoint; {len(paths)} were given (save "
                "the step in each checkpoint, or measure them one at a time)",
                **{key: key},
            )
    out_steps = [step] if step is not None else list(steps)
    seen = [saved_seen(Path(p)) for p in paths]
    examples: list[int | None] = []
    derived = False
    for st, (ex, _) in zip(out_steps, seen, strict=True):
        if ex is None and st is not None:
            ex, derived = st * batch_size, True
        examples.append(ex)
    if examples_seen is not None:
        examples, derived = [examples_seen], False
    note = f"examples seen = step × B = step × {batch_size}" if derived else None
    tokens = [t for _, t in seen]
    _check_progress(paths, out_steps, examples, tokens, note)
    return Progress(out_steps, examples, tokens, note)


def _check_progress(
    paths: Sequence[Path],
    steps: Sequence[int | None],
    examples: Sequence[int | None],
    tokens: Sequence[int | None],
    derived: str | None,
) -> None:
    """Each checkpoint's step, examples and tokens seen within int64 (a measurement records
    them; :mod:`bscrit.boundary`), checked before any work, naming the checkpoint.

    Raises:
        UsageError: a value out of range (a saved one, or step × B beyond int64).
    """
    from bscrit import boundary

    for path, *values in zip(paths, steps, examples, tokens, strict=True):
        for what, v in zip(("step", "examples seen", "tokens seen"), values, strict=True):
            why = None if v is None else boundary.integer_problem(v, minimum=0)
            if why:
                how = f" ({derived})" if derived and what == "examples seen" else ""
                raise UsageError(
                    f"{path}: its {what}{how}: {why}; give {{step}} / {{examples_seen}}",
                    step="step",
                    examples_seen="examples_seen",
                )


def _in_folder(folder: Path) -> list[Path]:
    if is_checkpoint_folder(folder):
        return [folder]
    found = [
        p
        for p in folder.iterdir()
        if (p.is_file() and p.suffix in SUFFIXES) or is_checkpoint_folder(p)
    ]
    if not found:
        raise CheckpointError(
            f"folder {folder} holds no checkpoint: expected files ending in "
            f"{', '.join(SUFFIXES)}, Hugging Face checkpoint folders (checkpoint-N/) or "
            "torch.distributed.checkpoint folders (step-N/ with a .metadata file)"
        )
    return found


def _expand_one(arg: str | os.PathLike[str]) -> tuple[list[Path], bool]:
    """The paths one ``-c`` value names, and whether it named several (a folder or a glob)."""
    raw = os.fspath(arg)
    p = user_path(raw)
    if not p.exists() and _GLOB.search(raw):
        found = [Path(x) for x in glob.glob(str(p))]
        found = [x for x in found if x.is_file() or is_checkpoint_folder(x)]
        if not found:
            raise UsageError(
                f"{{checkpoint}} {raw}: no checkpoint matches this pattern", checkpoint="checkpoint"
            )
        return found, True
    if not p.exists():
        raise CheckpointError(f"checkpoint not found: {p}")
    if p.is_dir():
        found = _in_folder(p)
        return found, len(found) > 1 or found[0] != p
    return [p], False


def select(args: Sequence[str | os.PathLike[str]], last: int | None = None) -> Selection:
    """Expand files, folders and globs into checkpoints; with ``last``, keep the last K by step.

    Checkpoints found in a folder or by a glob (or all of them, with ``last``) are sorted by their
    saved step when every one has it, else by a natural sort of their paths. Files named one by
    one keep their order otherwise.

    Raises:
        UsageError: a pattern matches nothing, or ``last`` < 1.
        CheckpointError: a path does not exist, or a folder holds no checkpoint.
    """
    if last is not None and last < 1:
        raise UsageError(f"{{last}} must be at least 1, got {last}", last="last")
    paths: list[Path] = []
    expanded = False
    for a in args:
        found, many = _expand_one(a)
        expanded |= many
        paths += [p for p in found if p not in paths]
    found = {p: saved_position(p) for p in paths}
    steps = {p: found[p][0] for p in paths}
    epochs = {p: found[p][1] for p in paths}

    def selection(chosen: list[Path], note: str | None) -> Selection:
        return Selection(
            tuple(chosen), tuple(steps[p] for p in chosen), note, tuple(epochs[p] for p in chosen)
        )

    if not (expanded or last is not None):
        return selection(paths, None)
    by_step = all(s is not None for s in steps.values())
    by_epoch = not by_step and all(e is not None for e in epochs.values())
    if by_step:
        paths.sort(key=lambda p: (steps[p], natural_key(p)))
        how = "by the step saved in each"
    elif by_epoch:
        paths.sort(key=lambda p: (epochs[p], natural_key(p)))
        how = "by the epoch saved in each (no step saved)"
    else:
        paths.sort(key=natural_key)
        how = "by name (natural sort; no step saved in " + (
            "some of them)" if any(s is not None for s in steps.values()) else "the files)"
        )
    total = len(paths)
    if last is not None:
        paths = paths[-last:]
    kept = f"the last {len(paths)} of {total}" if len(paths) < total else f"all {total}"
    span = ""
    if by_step and len(paths) > 1:
        span = f", steps {steps[paths[0]]} to {steps[paths[-1]]}"
    note = f"{kept} checkpoints, ordered {how}{span}"
    return selection(paths, note)
