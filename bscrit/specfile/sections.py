"""The sections of a spec other than the model's Hugging Face folder and the training ones:
``model``, ``checkpoint``, ``data`` / ``eval_data``, ``loss`` and ``measure``, each parsed into a
frozen dataclass with every problem added to the :class:`~bscrit.checker.Checker` (pure: no torch).

Shorthands: ``model: resnet18`` means ``{name: resnet18}`` and ``model: net.py:make`` means
``{factory: net.py:make}`` (a string with a ``:`` is a factory reference); the same for ``data``
and ``loss``. ``checkpoint: ckpt.pt`` (or a list) means ``{path: ckpt.pt}``. The whole document
is :mod:`bscrit.specfile.document`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bscrit.checker import Checker, did_you_mean
from bscrit.checker import describe as _describe
from bscrit.checker import join as _join
from bscrit.specfile.device import DEVICE_RE
from bscrit.specfile.model import ModelSpec, parse_hf
from bscrit.specfile.references import check_factory, resolve_path
from bscrit.specfile.variables import expand_kwargs


@dataclass(frozen=True)
class CheckpointSpec:
    """Checkpoint file(s) (absolute), an optional key inside the file, prefixes to strip."""

    paths: tuple[Path, ...] = ()
    key: str | None = None
    strip_prefix: tuple[str, ...] = ()


@dataclass(frozen=True)
class DataSpec:
    """A torchvision ``dataset`` class (with ``transforms``) or a ``factory``; first ``subset``."""

    dataset: str | None
    factory: str | None
    kwargs: dict = field(default_factory=dict)
    transforms: tuple[dict, ...] = ()  # each {"name": str, "kwargs": dict}
    subset: int | None = None  # first n examples; None = all
    num_workers: int = 0


@dataclass(frozen=True)
class LossSpec:
    """``cross_entropy`` / ``mse`` / ``model`` (``name``) or a ``factory``; each must give the
    batch MEAN. ``model``: the model computes its own loss (``output.loss``,
    bscrit.engine.objective)."""

    name: str | None
    factory: str | None
    kwargs: dict = field(default_factory=dict)


@dataclass(frozen=True)
class MeasureSpec:
    """How to measure: number of batches k (None = auto), jackknife groups m, seed, device."""

    batches: int | None = None  # None = auto = max(200, ceil(n/B))
    groups: int = 10  # m, jackknife groups
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    mode: str = "train"  # train | eval
    precision: str | None = None  # fp32 | bf16-autocast | bf16-weights (None: as the model is)
    shard_blocks: tuple[str, ...] | None = None  # --shard fsdp: classes sharded as one unit each


MODEL_KEYS = ("name", "factory", "hf", "hf_class", "kwargs")
CHECKPOINT_KEYS = ("path", "key", "strip_prefix")
DATA_KEYS = ("dataset", "factory", "kwargs", "transforms", "subset", "num_workers")
TRANSFORM_KEYS = ("name", "kwargs")
LOSS_KEYS = ("name", "factory", "kwargs")
LOSS_NAMES = ("cross_entropy", "mse", "model")
MEASURE_KEYS = ("batches", "groups", "seed", "device", "mode", "precision", "shard_blocks")
#: measure.precision (bscrit.engine.precision.PRECISIONS; no torch here)
PRECISIONS = ("fp32", "bf16-autocast", "bf16-weights")
MODES = ("train", "eval")


def _strings(c: Checker, value: Any, path: str) -> tuple[str, ...] | None:
    """A string or a list of strings -> tuple."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,) if value else ()
    if isinstance(value, list):
        out = []
        for i, v in enumerate(value):
            s = c.string(v, _join(path, i))
            if s is not None:
                out.append(s)
        return tuple(out)
    c.add(path, f"expected a string or a list of strings, got {_describe(value)}")
    return None


def parse_model(c: Checker, value: Any, base_dir: Path) -> ModelSpec | None:
    path = "model"
    if isinstance(value, str):
        value = {"factory": value} if ":" in value else {"name": value}
    d = c.mapping(value, path)
    if d is None:
        return None
    c.unknown_keys(d, MODEL_KEYS, path)
    kwargs = expand_kwargs(c, c.kwargs(d, path), "model.kwargs", base_dir)
    given = [k for k in ("name", "factory", "hf") if d.get(k) is not None]
    if d.get("hf_class") is not None and "hf" not in given:
        c.add("model.hf_class", "only used with 'hf' (a Hugging Face model folder)")
    if len(given) != 1:
        c.add(
            path,
            "give exactly one of 'name' (a torchvision model), 'factory' (file.py:fn) or 'hf' "
            "(a Hugging Face model folder)",
        )
        return None
    if given == ["hf"]:
        return parse_hf(c, d, base_dir, kwargs)
    if given == ["name"]:
        name = c.string(d["name"], "model.name", "a torchvision model name")
        return None if name is None else ModelSpec(name=name, factory=None, kwargs=kwargs)
    factory = check_factory(c, d["factory"], "model.factory", base_dir)
    return None if factory is None else ModelSpec(name=None, factory=factory, kwargs=kwargs)


def parse_checkpoint(c: Checker, value: Any, base_dir: Path) -> CheckpointSpec | None:
    path = "checkpoint"
    if value is None:
        return CheckpointSpec()
    if isinstance(value, (str, list)):
        value = {"path": value}
    d = c.mapping(value, path)
    if d is None:
        return None
    c.unknown_keys(d, CHECKPOINT_KEYS, path)
    raw_paths = _strings(c, d.get("path"), "checkpoint.path")
    key = None
    if d.get("key") is not None:
        key = c.string(d["key"], "checkpoint.key")
    strip = _strings(c, d.get("strip_prefix"), "checkpoint.strip_prefix")
    if raw_paths is not None and any("\0" in p for p in raw_paths):
        c.add("checkpoint.path", "a path cannot hold a NUL character (\\0)")
        return None
    if raw_paths is None or strip is None:
        return None
    paths = tuple(resolve_path(p, base_dir) for p in raw_paths)
    return CheckpointSpec(paths=paths, key=key, strip_prefix=strip)


def _parse_transforms(c: Checker, value: Any, path: str) -> tuple[dict, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        c.add(path, f"expected a list of {{name, kwargs}}, got {_describe(value)}")
        return ()
    out = []
    for i, t in enumerate(value):
        tpath = _join(path, i)
        if isinstance(t, str):
            t = {"name": t}
        d = c.mapping(t, tpath)
        if d is None:
            continue
        c.unknown_keys(d, TRANSFORM_KEYS, tpath)
        if d.get("name") is None:
            c.add(_join(tpath, "name"), "missing required key")
            continue
        name = c.string(d["name"], _join(tpath, "name"), "a torchvision.transforms name")
        kwargs = c.kwargs(d, tpath)
        if name is not None:
            out.append({"name": name, "kwargs": kwargs})
    return tuple(out)


def parse_data(c: Checker, value: Any, path: str, base_dir: Path) -> DataSpec | None:
    if isinstance(value, str):
        value = {"factory": value} if ":" in value else {"dataset": value}
    d = c.mapping(value, path)
    if d is None:
        return None
    c.unknown_keys(d, DATA_KEYS, path)
    kwargs = expand_kwargs(c, c.kwargs(d, path), _join(path, "kwargs"), base_dir)
    transforms = _parse_transforms(c, d.get("transforms"), _join(path, "transforms"))
    subset = None
    if d.get("subset") is not None:
        subset = c.integer(d["subset"], _join(path, "subset"), minimum=1)
    num_workers = 0
    if d.get("num_workers") is not None:
        num_workers = c.integer(d["num_workers"], _join(path, "num_workers"), minimum=0) or 0
    has_ds, has_factory = d.get("dataset") is not None, d.get("factory") is not None
    if has_ds == has_factory:
        c.add(
            path, "give exactly one of 'dataset' (a torchvision dataset) or 'factory' (file.py:fn)"
        )
        return None
    if has_factory and d.get("transforms"):
        c.add(_join(path, "transforms"), "only used with 'dataset'; a factory applies its own")
    if has_ds:
        name = c.string(d["dataset"], _join(path, "dataset"), "a torchvision dataset name")
        factory = None
        if name is None:
            return None
    else:
        name = None
        factory = check_factory(c, d["factory"], _join(path, "factory"), base_dir)
        if factory is None:
            return None
    return DataSpec(
        dataset=name,
        factory=factory,
        kwargs=kwargs,
        transforms=transforms,
        subset=subset,
        num_workers=num_workers,
    )


def parse_loss(c: Checker, value: Any, base_dir: Path) -> LossSpec | None:
    path = "loss"
    shorthand = isinstance(value, str)
    if shorthand:
        value = {"factory": value} if ":" in value else {"name": value}
    d = c.mapping(value, path)
    if d is None:
        return None
    c.unknown_keys(d, LOSS_KEYS, path)
    kwargs = expand_kwargs(c, c.kwargs(d, path), "loss.kwargs", base_dir)
    has_name, has_factory = d.get("name") is not None, d.get("factory") is not None
    if has_name == has_factory:
        c.add(path, f"give exactly one of 'name' ({' or '.join(LOSS_NAMES)}) or 'factory'")
        return None
    if has_name:
        name = d["name"]
        if not isinstance(name, str) or name.strip().lower() not in LOSS_NAMES:
            shown = repr(name) if isinstance(name, str) else _describe(name)
            hint = did_you_mean(str(name), LOSS_NAMES)
            c.add(
                path if shorthand else "loss.name",
                f"unknown loss {shown}; expected {' or '.join(LOSS_NAMES)}, "
                f'or a factory "file.py:fn" / "pkg.module:fn"{hint}',
            )
            return None
        if name.strip().lower() == "model" and kwargs:
            c.add("loss.kwargs", "not used with loss: model (the model computes its own loss)")
            return None
        reduction = kwargs.get("reduction", "mean")
        if reduction != "mean":
            c.add("loss.kwargs.reduction", "must be 'mean': the estimators assume the batch mean")
            return None
        return LossSpec(name=name.strip().lower(), factory=None, kwargs=kwargs)
    factory = check_factory(c, d["factory"], "loss.factory", base_dir)
    return None if factory is None else LossSpec(name=None, factory=factory, kwargs=kwargs)


def parse_measure(c: Checker, value: Any) -> MeasureSpec | None:
    path = "measure"
    if value is None:
        return MeasureSpec()
    d = c.mapping(value, path)
    if d is None:
        return None
    c.unknown_keys(d, MEASURE_KEYS, path)
    n_before = len(c.problems)
    groups = 10
    if d.get("groups") is not None:
        groups = c.integer(d["groups"], "measure.groups", minimum=2) or 10
    batches = None
    b = d.get("batches")
    if b is not None and not (isinstance(b, str) and b.strip().lower() == "auto"):
        batches = c.integer(b, "measure.batches", minimum=1, what="'auto' or a positive integer")
        if batches is not None and batches < 2 * groups:
            c.add(
                "measure.batches",
                f"expected at least 2 * groups = {2 * groups} batches, got {batches}",
            )
    seed = 0
    if d.get("seed") is not None:
        seed = c.integer(d["seed"], "measure.seed", minimum=0) or 0
    device = "auto"
    if d.get("device") is not None:
        dev = d["device"]
        if not isinstance(dev, str) or not DEVICE_RE.match(dev.strip().lower()):
            shown = repr(dev) if isinstance(dev, str) else _describe(dev)
            c.add("measure.device", f"expected auto, cpu, cuda or cuda:N, got {shown}")
        else:
            device = dev.strip().lower()
    mode = "train"
    if d.get("mode") is not None:
        mode = c.choice(d["mode"], "measure.mode", MODES) or "train"
    precision = None
    if d.get("precision") is not None:
        precision = c.choice(d["precision"], "measure.precision", PRECISIONS)
    blocks = None
    if d.get("shard_blocks") is not None:
        blocks = _strings(c, d["shard_blocks"], "measure.shard_blocks") or None
    if len(c.problems) > n_before:
        return None
    return MeasureSpec(
        batches=batches, groups=groups, seed=seed, device=device, mode=mode, precision=precision,
        shard_blocks=blocks,
    )  # fmt: skip
