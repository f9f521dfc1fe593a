"""What a checkpoint file is and what it holds, read without torch and without running its pickle.

:func:`file_problem` tells a file that ``torch.load`` cannot read at all (empty, text, random
bytes, a damaged zip) before torch answers with advice that does not apply.
:func:`pickled_models` reads the pickle inside a ``torch.save`` file with a stub unpickler: every
class and function it names becomes an inert placeholder, so nothing from the file is imported or
run, and the placeholders show where a whole pickled ``nn.Module`` sits (``torch.save(model)``,
or ``{"ema": model}``). :mod:`bscrit.load.checkpoints` turns both into messages.

For Hugging Face folders it names the weight files (:func:`folder_weights`, in the order
``from_pretrained`` prefers them), reads a sharded checkpoint's ``*.index.json``
(:func:`read_index`) and the step an HF Trainer or a training script recorded (:func:`trainer_step`,
:func:`step_of`).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bscrit.errors import CheckpointError

#: A legacy (non-zip) ``torch.save`` file starts with its pickled magic number.
_LEGACY_MAGIC = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
_ZIP_MAGIC = b"PK\x03\x04"
#: How deep :func:`pickled_models` and :func:`key_paths` look for a model (``a.b.c``).
MAX_DEPTH = 3


def file_problem(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` cannot be a ``torch.save`` file (``"not a PyTorch checkpoint (...)"``), or
    None when it looks like one: a zip archive with a ``data.pkl`` or a legacy torch pickle."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as e:
        return f"cannot open it ({e.strerror})"
    if not head:
        return "not a PyTorch checkpoint (the file is empty)"
    if head.startswith(_ZIP_MAGIC):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError):
            return "a damaged zip archive (truncated or corrupted while copying?)"
        if not any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
            return "not a PyTorch checkpoint (a zip archive without the data.pkl of torch.save)"
        return None
    if head.startswith(_LEGACY_MAGIC):
        return None
    if head[:1] == b"\x80" and 2 <= head[1] <= 5:
        return "not a PyTorch checkpoint (a Python pickle, but not one written by torch.save)"
    try:
        head.decode("utf-8")
        kind = "a text file"
    except UnicodeDecodeError:
        kind = f"neither a zip archive nor a torch pickle; it starts with {head[:8]!r}"
    return f"not a PyTorch checkpoint ({kind})"


def _safetensors_head(head: bytes) -> bool:
    """A safetensors file: an 8-byte little-endian header length, then a JSON header."""
    return len(head) > 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") > 1


def is_safetensors(path: str | os.PathLike[str]) -> bool:
    """``path`` starts like a safetensors file (whatever its name)."""
    try:
        with open(path, "rb") as f:
            return _safetensors_head(f.read(16))
    except OSError:
        return False


def is_torchscript(path: str | os.PathLike[str]) -> bool:
    """A ``torch.jit.save`` archive (code and constants beside the pickle)."""
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("/constants.pkl") for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


# ----------------------------------------------------------------------------------------------
# The stub unpickler
# ----------------------------------------------------------------------------------------------


class _Stub:
    """An inert stand-in for any object the pickle builds: it records its class and state."""

    qualname = "?"
    args: tuple[Any, ...] = ()  # NEWOBJ builds a stub without calling __init__
    state: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __call__(self, *args: Any, **kwargs: Any) -> _Stub:
        return _Stub(*args)

    # lists and dicts rebuilt through a stub (APPENDS, SETITEMS) are dropped
    def append(self, item: Any) -> None:
        pass

    def extend(self, items: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass


class _StubUnpickler(pickle.Unpickler):
    """Resolves every global to a :class:`_Stub` subclass (only OrderedDict is real)."""

    def __init__(self, f: Any) -> None:
        super().__init__(f)
        self._classes: dict[tuple[str, str], type] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        key = (module, name)
        if key not in self._classes:
            self._classes[key] = type(name, (_Stub,), {"qualname": f"{module}.{name}"})
        return self._classes[key]

    def persistent_load(self, pid: Any) -> Any:
        if isinstance(pid, tuple) and pid[:1] == ("module",) and len(pid) > 1:
            return pid[1]  # legacy files name a module's class this way (a stub already)
        return _Stub()  # a tensor's storage


def _skeleton(path: str | os.PathLike[str]) -> Any:
    """The checkpoint's pickled object with every class replaced by a stub."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            name = next(n for n in z.namelist() if n == "data.pkl" or n.endswith("/data.pkl"))
            return _StubUnpickler(io.BytesIO(z.read(name))).load()
    with open(path, "rb") as f:  # legacy: magic number, protocol, sys info, then the object
        for _ in range(3):
            _StubUnpickler(f).load()
        return _StubUnpickler(f).load()


def _is_model_stub(obj: Any) -> bool:
    """An ``nn.Module`` with parameters or submodules (a pickled loss module is not a model)."""
    state = obj.state if isinstance(obj, _Stub) else None
    return (
        isinstance(state, dict)
        and isinstance(state.get("_parameters"), Mapping)
        and isinstance(state.get("_modules"), Mapping)
        and bool(state["_parameters"] or state["_modules"])
    )


def key_paths(obj: Any, found: Callable[[Any], bool]) -> list[tuple[str, Any]]:
    """``(dotted key path, value)`` of the values ``found`` accepts (``""``: ``obj`` itself),
    through string-keyed mappings up to :data:`MAX_DEPTH` deep, not inside one already found."""
    out: list[tuple[str, Any]] = []

    def walk(x: Any, path: str, depth: int) -> None:
        if found(x):
            out.append((path, x))
        elif isinstance(x, Mapping) and depth < MAX_DEPTH:
            for k, v in x.items():
                if isinstance(k, str):
                    walk(v, f"{path}.{k}" if path else k, depth + 1)

    walk(obj, "", 0)
    return out


def pickled_models(path: str | os.PathLike[str]) -> list[tuple[str, str]] | None:
    """``(key path, class)`` of each whole ``nn.Module`` pickled in the checkpoint, without
    running the pickle; None when the file cannot be read this way."""
    try:
        root = _skeleton(path)
    except Exception:  # any damage: the caller falls back to torch's own message
        return None
    return [(p, model.qualname) for p, model in key_paths(root, _is_model_stub)]


def refusal(path: str | os.PathLike[str], torch_message: str, key: str | None,
            default_keys: tuple[str, ...]) -> str:  # fmt: skip
    """Why weights-only loading refused ``path``, naming the ``{unsafe_load}`` option (a
    placeholder for :class:`~bscrit.errors.CheckpointError`), and for a whole pickled model the
    ``checkpoint.key`` to set when the usual places (``default_keys``) do not hold it."""
    trust = "executes code from the file: if you trust it, re-run with {unsafe_load}"
    if is_torchscript(path):
        return f"checkpoint {path} is a TorchScript archive (torch.jit.save); loading it {trust}"
    models = pickled_models(path) or []
    if not models:
        m = re.search(
            r"unsupported (?:global|class):?\s*(?:GLOBAL\s+)?([\w.]+)", torch_message, re.I
        )
        what = f" (e.g. {m.group(1)})" if m else ""
        return (
            f"checkpoint {path} holds pickled Python objects{what}, which weights-only loading "
            f"refuses. Loading them {trust}."
        )
    where = "; ".join(
        f"{cls.rpartition('.')[2]}" + (f" at key {p!r}" if p else ", the whole file")
        for p, cls in models
    )
    if any(cls.startswith("__main__.") for _, cls in models):
        return (
            f"checkpoint {path} holds a whole pickled model ({where}) whose class was defined in "
            "the training script itself (__main__), so no other program can load it: save "
            "model.state_dict() instead"
        )
    text = (
        f"checkpoint {path} holds a whole pickled model ({where}), saved with torch.save(model) "
        f"rather than its state_dict; weights-only loading refuses it. Loading it {trust}"
    )
    usual = [p for p, _ in models if all(part in default_keys for part in p.split(".") if p)]
    if key is None and not usual:
        if len(models) == 1:
            text += f" and set `key: {models[0][0]}` under checkpoint in the spec"
        else:
            names = " or ".join(repr(p) for p, _ in models)
            text += f" and set checkpoint.key in the spec to the model to measure: {names}"
    return text + " (or save model.state_dict() instead)."


# ----------------------------------------------------------------------------------------------
# Hugging Face folders: which weight files, the shard index, the Trainer's step
# ----------------------------------------------------------------------------------------------

#: The weight files of a Hugging Face model folder, in the order ``from_pretrained`` prefers.
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
#: Files an HF Trainer writes into ``checkpoint-N/`` beside the weights.
TRAINER_STATE = "trainer_state.json"
TRAINER_OPTIMIZER = "optimizer.pt"
TRAINER_ARGS = "training_args.bin"


def folder_weights(folder: str | os.PathLike[str]) -> str | None:
    """The first of :data:`WEIGHT_FILES` present in ``folder`` (its path), or None."""
    for name in WEIGHT_FILES:
        p = os.path.join(folder, name)
        if os.path.isfile(p):
            return p
    return None


def describe_keys(obj: Any) -> str:
    """``top-level keys: a, b, ...`` of a loaded checkpoint, or what it holds instead."""
    if isinstance(obj, Mapping):
        keys = [str(k) for k in list(obj)[:10]]
        more = f", ... ({len(obj)} keys)" if len(obj) > 10 else ""
        return f"top-level keys: {', '.join(keys)}{more}"
    return f"it holds a {type(obj).__name__}"


def listing(folder: str | os.PathLike[str], limit: int = 8) -> str:
    """``a.txt, b.pt, ... (12 entries)``: what a folder holds, for messages."""
    try:
        names = sorted(os.listdir(folder))
    except OSError as e:
        return f"cannot list it: {e.strerror}"
    if not names:
        return "it is empty"
    more = f", ... ({len(names)} entries)" if len(names) > limit else ""
    return "it holds " + ", ".join(names[:limit]) + more


def _read_json(path: str | os.PathLike[str]) -> tuple[Any, str | None]:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f), None
    except OSError as e:
        return None, f"cannot open it ({e.strerror})"
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        return None, f"not valid JSON ({e})"


def read_index(path: str | os.PathLike[str]) -> dict[str, str]:
    """A sharded checkpoint's ``*.index.json``: each tensor name → its shard file's path.

    Raises:
        CheckpointError: unreadable, no ``weight_map`` of names to file names, or a shard named
            in it is missing (each one named).
    """
    raw, problem = _read_json(path)
    if problem is None:
        wm = raw.get("weight_map") if isinstance(raw, Mapping) else None
        if not isinstance(wm, Mapping) or not wm:
            problem = 'expected a JSON object with a "weight_map" of tensor names to shard files'
        elif not all(isinstance(k, str) and isinstance(v, str) for k, v in wm.items()):
            problem = '"weight_map" must map tensor names to shard file names (strings)'
    if problem is not None:
        raise CheckpointError(f"cannot read the shard index {path}: {problem}")
    folder = os.path.dirname(os.fspath(path))
    out = {k: os.path.join(folder, v) for k, v in wm.items()}
    missing = sorted({v for v in wm.values() if not os.path.isfile(os.path.join(folder, v))})
    if missing:
        more = ", ..." if len(missing) > 3 else ""
        raise CheckpointError(
            f"the shard index {path} names {len(missing)} shard file(s) that are not in "
            f"{folder}: {', '.join(missing[:3])}{more} (an incomplete copy or download?)"
        )
    return out


def _step(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def trainer_step(folder: str | os.PathLike[str]) -> int | None:
    """``global_step`` of an HF Trainer's ``trainer_state.json`` in ``folder`` (None: no file).

    Raises:
        CheckpointError: the file is there but unreadable or has no integer ``global_step``.
    """
    path = os.path.join(folder, TRAINER_STATE)
    if not os.path.isfile(path):
        return None
    raw, problem = _read_json(path)
    step = _step(raw.get("global_step")) if isinstance(raw, Mapping) else None
    if problem is None and step is None:
        problem = 'expected a JSON object with an integer "global_step"'
    if problem is not None:
        raise CheckpointError(f"cannot read {path}: {problem}")
    return step


def step_of(obj: Any) -> int | None:
    """The training step a loaded checkpoint records: ``global_step`` (Lightning, many scripts)
    or ``step``, at its top level; None when neither is a non-negative integer."""
    if not isinstance(obj, Mapping):
        return None
    for key in ("global_step", "step"):
        step = _step(obj.get(key))
        if step is not None:
            return step
    return None


def saved_ints(path: str | os.PathLike[str], keys: tuple[str, ...]) -> dict[str, int]:
    """The top-level integers under ``keys`` of a ``torch.save`` dict (``step``, ``global_step``),
    read without torch and without running the pickle; {} when there are none or the file cannot
    be read this way."""
    try:
        root = _skeleton(path)
    except Exception:  # any damage: the loader reports it when the file is measured
        return {}
    if not isinstance(root, Mapping):
        return {}
    return {k: v for k in keys if isinstance(v := root.get(k), int) and not isinstance(v, bool)}


#: A ``torch.distributed.checkpoint`` folder holds this file (OLMo-core: in ``model_and_optim/``).
DCP_METADATA = ".metadata"


def is_dcp_folder(path: str | os.PathLike[str]) -> bool:
    """A ``torch.distributed.checkpoint`` folder: a ``.metadata`` file in it, or in OLMo-core's
    ``model_and_optim/`` subfolder (read by :mod:`bscrit.load.dcp`)."""
    p = os.fspath(path)
    return os.path.isfile(os.path.join(p, DCP_METADATA)) or os.path.isfile(
        os.path.join(p, "model_and_optim", DCP_METADATA)
    )


@dataclass(frozen=True)
class Layout:
    """What a checkpoint path is, answered once (no torch, no pickle run): the one description
    :func:`bscrit.load.checkpoints.load_checkpoint` dispatches on.

    Attributes:
        path: the path itself.
        kind: ``"dcp"`` (a ``torch.distributed.checkpoint`` folder, :func:`is_dcp_folder`),
            ``"folder"`` (Hugging Face or HF Trainer), ``"index"`` (a sharded ``*.index.json``),
            ``"safetensors"`` or ``"torch"`` (a ``torch.save`` file).
        weights: a folder's weight file (the first of :data:`WEIGHT_FILES`) described in turn,
            None if it has none.
        shards: an index's tensor names → shard paths (every shard checked to exist).
        parts: an index's shard files, each described, in the order they are first named.
        optimizer_file: a Trainer folder's ``optimizer.pt``, when there is one.
        args_file: a Trainer folder's ``training_args.bin`` (a pickle), when there is one.
        step: a Trainer folder's ``global_step`` (``trainer_state.json``), else None.
    """

    path: str
    kind: str
    weights: Layout | None = None
    shards: Mapping[str, str] | None = None
    parts: tuple[Layout, ...] = ()
    optimizer_file: str | None = None
    args_file: str | None = None
    step: int | None = None


def layout(path: str | os.PathLike[str]) -> Layout:
    """Describe the checkpoint at an existing ``path`` (:class:`Layout`).

    Raises:
        CheckpointError: a shard index or ``trainer_state.json`` that cannot be read.
    """
    p = os.fspath(path)
    if is_dcp_folder(p):
        return Layout(p, "dcp")
    if os.path.isdir(p):
        opt, args = os.path.join(p, TRAINER_OPTIMIZER), os.path.join(p, TRAINER_ARGS)
        weights = folder_weights(p)
        return Layout(
            p,
            "folder",
            weights=None if weights is None else layout(weights),
            optimizer_file=opt if os.path.isfile(opt) else None,
            args_file=args if os.path.isfile(args) else None,
            step=trainer_step(p),
        )
    if p.endswith(".index.json"):
        shards = read_index(p)
        parts = tuple(layout(s) for s in dict.fromkeys(shards.values()))
        return Layout(p, "index", shards=shards, parts=parts)
    return Layout(p, "safetensors" if is_safetensors(p) else "torch")
