"""The measurement spec: one YAML file -> frozen dataclasses, every problem reported at once.

A spec says which model to build, which checkpoint to load into it, which data and loss to take
gradients of, the batch size B of the run the checkpoint comes from and, optionally, its
optimizer and LR schedule. It is read with ``yaml.safe_load`` only and validated in one pass:
unknown keys (with a "did you mean"), wrong types, missing keys and bad values are all collected
into one :class:`~bscrit.errors.SpecError`, each with its dotted key path (``optimizer.lr``,
``data.transforms[1].name``). No torch import here; :mod:`bscrit.load.factories` turns a spec into
objects. ``model: {hf: folder}`` (a Hugging Face folder) is :mod:`bscrit.spec.model`.

Shorthands: ``model: resnet18`` means ``{name: resnet18}`` and ``model: net.py:make`` means
``{factory: net.py:make}`` (a string with a ``:`` is a factory reference); the same for ``data``
and ``loss``. ``checkpoint: ckpt.pt`` (or a list) means ``{path: ckpt.pt}``. Relative paths
(checkpoint paths, ``file.py:fn`` factories) resolve against the spec file's folder.

Number quirk: YAML 1.1 (PyYAML) reads ``1e-3`` (no dot) as a *string*; float fields accept such
strings when Python's ``float()`` parses them. Booleans are never numbers.

``loss: model`` means the model computes its own mean loss (:mod:`bscrit.engine.objective`);
``micro_batch_size`` (a divisor of ``batch_size``) runs each batch in micro-batches; strings in
the factory kwargs may use ``${spec_dir}`` (:mod:`bscrit.spec.variables`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bscrit.checker import Checker, did_you_mean, read_yaml
from bscrit.checker import describe as _describe
from bscrit.checker import join as _join
from bscrit.errors import SpecError, SpecProblem, UsageError
from bscrit.optim.registry import OptimizerInfo
from bscrit.spec.model import ModelSpec, default_checkpoint, parse_hf
from bscrit.spec.training import ScheduleSpec, parse_optimizer, parse_schedule
from bscrit.spec.variables import expand_kwargs

# ----------------------------------------------------------------------------------------------
# Dataclasses
# ----------------------------------------------------------------------------------------------


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
    batch MEAN. ``model``: the model computes its own loss (``output.loss``, bscrit.engine.objective)."""

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


@dataclass(frozen=True)
class Spec:
    """A validated spec. Paths are absolute; factories keep their reference string."""

    path: Path  # the spec file (absolute)
    base_dir: Path  # its folder: relative paths resolve against it
    model: ModelSpec
    checkpoint: CheckpointSpec
    data: DataSpec
    eval_data: DataSpec | None
    loss: LossSpec
    batch_size: int
    optimizer: OptimizerInfo | None  # source="spec"
    schedule: ScheduleSpec
    measure: MeasureSpec
    micro_batch_size: int | None = None  # forward/backward in chunks of this many (divides B)


# ----------------------------------------------------------------------------------------------
# Vocabulary
# ----------------------------------------------------------------------------------------------

TOP_KEYS = (
    "model",
    "checkpoint",
    "data",
    "eval_data",
    "loss",
    "batch_size",
    "micro_batch_size",
    "optimizer",
    "schedule",
    "measure",
)
REQUIRED_TOP_KEYS = ("model", "data", "loss", "batch_size")
MODEL_KEYS = ("name", "factory", "hf", "hf_class", "kwargs")
CHECKPOINT_KEYS = ("path", "key", "strip_prefix")
DATA_KEYS = ("dataset", "factory", "kwargs", "transforms", "subset", "num_workers")
TRANSFORM_KEYS = ("name", "kwargs")
LOSS_KEYS = ("name", "factory", "kwargs")
LOSS_NAMES = ("cross_entropy", "mse", "model")
MEASURE_KEYS = ("batches", "groups", "seed", "device", "mode")
MODES = ("train", "eval")
DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


def parse_device(text: str) -> tuple[str, int | None]:
    """``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` → (kind, N or None); the one parser of
    device strings (the spec, ``--device``, torchrun ranks).

    Raises:
        UsageError: anything else.
    """
    d = str(text).strip().lower()
    if not DEVICE_RE.match(d):
        raise UsageError(f"unknown device {text!r}; expected auto, cpu, cuda or cuda:N")
    kind, _, index = d.partition(":")
    return kind, int(index) if index else None


_MISSING = object()


def micro_problem(micro: int, batch_size: int, key: str = "batch_size") -> str:
    """Why ``micro`` cannot split a batch of ``batch_size`` examples into equal micro-batches."""
    return (
        f"{micro} does not divide {key} = {batch_size} (the micro-batches of one batch must be "
        f"equal; divisors near it: {', '.join(map(str, _near_divisors(batch_size, micro)))})"
    )


def _near_divisors(n: int, x: int) -> list[int]:
    small = [d for d in range(1, int(n**0.5) + 1) if n % d == 0]
    divisors = set(small) | {n // d for d in small}
    return sorted(sorted(divisors, key=lambda d: (abs(d - x), d))[:2])


# ----------------------------------------------------------------------------------------------
# References and paths
# ----------------------------------------------------------------------------------------------


def is_file_ref(module_part: str) -> bool:
    """True for ``path/to/file.py`` (a file), False for ``pkg.module`` (an importable module)."""
    return module_part.endswith(".py") or "/" in module_part or "\\" in module_part


def split_ref(ref: str) -> tuple[str, str] | None:
    """``"a/b.py:fn"`` -> ``("a/b.py", "fn")``; ``None`` when it is not of the form ``X:name``."""
    if ":" not in ref:
        return None
    module_part, _, attr = ref.rpartition(":")
    module_part, attr = module_part.strip(), attr.strip()
    if not module_part or not attr or not all(p.isidentifier() for p in attr.split(".")):
        return None
    return module_part, attr


def _factory(c: Checker, value: Any, path: str, base_dir: Path) -> str | None:
    """Validate a factory reference; make a relative ``file.py`` part absolute."""
    ref = c.string(value, path, 'a factory reference "file.py:fn" or "pkg.module:fn"')
    if ref is None:
        return None
    parts = split_ref(ref)
    if parts is None:
        c.add(path, f'expected "file.py:fn" or "pkg.module:fn", got {ref!r}')
        return None
    module_part, attr = parts
    if is_file_ref(module_part):
        file = Path(module_part).expanduser()
        if not file.is_absolute():
            file = base_dir / file
        file = file.resolve()
        if not file.is_file():
            c.add(path, f"file not found: {file}")
            return None
        return f"{file}:{attr}"
    return ref


def _resolve_path(value: str, base_dir: Path) -> Path:
    p = Path(value).expanduser()
    return (p if p.is_absolute() else base_dir / p).resolve()


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


# ----------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------


def _parse_model(c: Checker, value: Any, base_dir: Path) -> ModelSpec | None:
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
    factory = _factory(c, d["factory"], "model.factory", base_dir)
    return None if factory is None else ModelSpec(name=None, factory=factory, kwargs=kwargs)


def _parse_checkpoint(c: Checker, value: Any, base_dir: Path) -> CheckpointSpec | None:
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
    if raw_paths is None or strip is None:
        return None
    paths = tuple(_resolve_path(p, base_dir) for p in raw_paths)
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


def _parse_data(c: Checker, value: Any, path: str, base_dir: Path) -> DataSpec | None:
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
        factory = _factory(c, d["factory"], _join(path, "factory"), base_dir)
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


def _parse_loss(c: Checker, value: Any, base_dir: Path) -> LossSpec | None:
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
    factory = _factory(c, d["factory"], "loss.factory", base_dir)
    return None if factory is None else LossSpec(name=None, factory=factory, kwargs=kwargs)


def _parse_measure(c: Checker, value: Any) -> MeasureSpec | None:
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
    if len(c.problems) > n_before:
        return None
    return MeasureSpec(batches=batches, groups=groups, seed=seed, device=device, mode=mode)


# ----------------------------------------------------------------------------------------------
# Entry points
# ----------------------------------------------------------------------------------------------


def parse_spec(
    raw: Any,
    source: str,
    base_dir: Path | str,
    *,
    path: Path | str | None = None,
    problems: Sequence[SpecProblem] = (),
) -> Spec:
    """Validate a spec already read from YAML.

    Args:
        raw: the ``yaml.safe_load`` result (must be a mapping).
        source: how to name the spec in errors (usually its path).
        base_dir: the folder relative paths resolve against.
        path: the spec file, stored in ``Spec.path`` (default: ``base_dir / source``).
        problems: found while reading the file (duplicate keys), listed with the others.

    Raises:
        SpecError: listing every problem, each with its dotted key path.
    """
    base_dir = Path(base_dir).expanduser().resolve()
    spec_path = Path(path).resolve() if path is not None else (base_dir / source).resolve()
    if raw is None:
        raise SpecError(
            source,
            [
                SpecProblem(
                    "",
                    "the spec is empty; expected a mapping with keys "
                    + ", ".join(REQUIRED_TOP_KEYS),
                )
            ],
        )
    if not isinstance(raw, Mapping):
        raise SpecError(
            source,
            [SpecProblem("", f"expected a mapping at the top level, got {type(raw).__name__}")],
        )
    c = Checker()
    c.problems.extend(problems)
    c.unknown_keys(raw, TOP_KEYS, "")
    for key in REQUIRED_TOP_KEYS:
        if raw.get(key) is None:
            c.add(key, "missing required key")

    model = _parse_model(c, raw["model"], base_dir) if raw.get("model") is not None else None
    checkpoint = default_checkpoint(model, _parse_checkpoint(c, raw.get("checkpoint"), base_dir))
    data = _parse_data(c, raw["data"], "data", base_dir) if raw.get("data") is not None else None
    eval_data = None
    if raw.get("eval_data") is not None:
        eval_data = _parse_data(c, raw["eval_data"], "eval_data", base_dir)
    loss = _parse_loss(c, raw["loss"], base_dir) if raw.get("loss") is not None else None
    batch_size = None
    if raw.get("batch_size") is not None:
        batch_size = c.integer(raw["batch_size"], "batch_size", minimum=1)
    micro = None
    if raw.get("micro_batch_size") is not None:
        micro = c.integer(raw["micro_batch_size"], "micro_batch_size", minimum=1)
        if micro is not None and batch_size is not None and batch_size % micro:
            c.add("micro_batch_size", micro_problem(micro, batch_size))
    optimizer = parse_optimizer(c, raw.get("optimizer"))
    schedule = parse_schedule(c, raw.get("schedule"))
    measure = _parse_measure(c, raw.get("measure"))

    if c.problems:
        raise SpecError(source, c.problems)
    assert model and checkpoint and data and loss and batch_size and schedule and measure
    return Spec(
        path=spec_path,
        base_dir=base_dir,
        model=model,
        checkpoint=checkpoint,
        data=data,
        eval_data=eval_data,
        loss=loss,
        batch_size=batch_size,
        optimizer=optimizer,
        schedule=schedule,
        measure=measure,
        micro_batch_size=micro,
    )


def load_spec(path: str | Path) -> Spec:
    """Read and validate a spec file (``yaml.safe_load`` only).

    Raises:
        SpecError: the file is missing or unreadable, is not valid YAML (with line and column),
            or has any problem (all listed, with key paths; a key given twice, with its lines).
    """
    p = Path(path).expanduser()
    source = str(path)
    if not p.exists():
        raise SpecError(source, [SpecProblem("", f"file not found: {p}")])
    if not p.is_file():
        raise SpecError(source, [SpecProblem("", f"not a file: {p}")])
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(source, [SpecProblem("", f"cannot read {p}: {e}")]) from None
    raw, duplicates = read_yaml(text, source)
    p = p.resolve()
    return parse_spec(raw, source, p.parent, path=p, problems=duplicates)


def resolve_micro_batch_size(spec: Spec, override: int | None, batch_size: int) -> int | None:
    """The micro-batch size (``--micro-batch-size``, else the spec's), checked to divide B."""
    micro = override or spec.micro_batch_size
    if micro is None or batch_size % micro == 0:
        return micro
    if override is not None:
        raise UsageError(
            f"{{micro_batch_size}} {micro_problem(micro, batch_size, 'the batch size B')}",
            micro_batch_size="micro_batch_size",
        )
    problem = micro_problem(micro, batch_size, "--batch-size")
    raise SpecError(str(spec.path), [SpecProblem("micro_batch_size", problem)])
