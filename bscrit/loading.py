"""From a :class:`~bscrit.spec.Spec` to torch objects: model + weights, dataset, loss, device.

Factories are referenced as ``"path/to/file.py:fn"`` (imported from the file, its folder on
``sys.path`` while it loads so sibling imports work) or ``"pkg.module:fn"``. Models may also be
torchvision names, datasets torchvision dataset classes with torchvision transforms.

Checkpoints are read with ``torch.load(weights_only=True)`` unless the user opts in to
``unsafe=True`` (the CLI's ``--unsafe-load``), which unpickles arbitrary Python objects and so can
execute code from the file. Common layouts are recognised: a plain state_dict, wrappers
(``state_dict``, ``model``, ``model_state_dict``, ``module``, ``net``), Lightning checkpoints
(``state_dict`` with a ``model.`` prefix) and, unsafe only, a pickled ``nn.Module``. An optimizer
state saved next to the weights gives the run's hyperparameters (:class:`OptimizerInfo`).

Every user-facing failure is a :class:`~bscrit.errors.BscritError` subclass with a one-line cause
(never a traceback): :class:`SpecError` for bad references, :class:`CheckpointError` for files
that cannot be read or do not fit the model, :class:`DataError` for datasets.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import importlib.util
import itertools
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from . import checkpoint_file, optim
from .errors import CheckpointError, DataError, SpecError, SpecProblem, UsageError
from .optim import OptimizerInfo
from .spec import DataSpec, Spec, is_file_ref, parse_device, split_ref

# Wrapper keys under which training scripts commonly store the model's state_dict, in order.
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network")
# Keys under which they store the optimizer's state_dict.
# Prefixes added by DataParallel/DDP (``module.``), Lightning (``model.``), torch.compile.
AUTO_PREFIXES = ("module.", "model.", "_orig_mod.")

_import_counter = itertools.count()


def _one_line(e: BaseException) -> str:
    """``TypeError: f() got an unexpected keyword argument 'x'`` on one line, at most ~300 chars."""
    text = " ".join(str(e).split())
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _spec_error(source: str, key: str, message: str) -> SpecError:
    return SpecError(source, [SpecProblem(key, message)])


# ----------------------------------------------------------------------------------------------
# Factories
# ----------------------------------------------------------------------------------------------


def _import_file(file: Path, key: str, source: str) -> Any:
    """Import ``file`` under a unique module name, its folder temporarily on ``sys.path``."""
    if not file.is_file():
        raise _spec_error(source, key, f"file not found: {file}")
    stem = re.sub(r"\W", "_", file.stem)
    name = f"bscrit_user_{stem}_{next(_import_counter)}"
    module_spec = importlib.util.spec_from_file_location(name, file)
    if module_spec is None or module_spec.loader is None:
        raise _spec_error(source, key, f"cannot import {file}: not a Python file")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # dataclasses and pickling look the module up here
    folder = str(file.parent)
    sys.path.insert(0, folder)
    try:
        module_spec.loader.exec_module(module)
    except BaseException as e:
        sys.modules.pop(name, None)
        if isinstance(e, KeyboardInterrupt):
            raise
        raise _spec_error(source, key, f"cannot import {file}: {_one_line(e)}") from None
    finally:
        try:
            sys.path.remove(folder)
        except ValueError:
            pass
    return module


def resolve_callable(
    ref: str, base_dir: Path, key: str, *, source: str | None = None
) -> Callable[..., Any]:
    """Resolve ``"path/to/file.py:fn"`` (relative to ``base_dir``) or ``"pkg.module:fn"``.

    ``fn`` may be dotted (``"mod:Class.build"``).

    Args:
        ref: the reference string.
        base_dir: folder a relative file path resolves against (the spec's folder).
        key: spec key named in errors (``"model.factory"``).
        source: spec named in errors (default: ``base_dir``).

    Raises:
        SpecError: bad form, file missing, import failure, missing attribute, not callable.
    """
    source = source if source is not None else str(base_dir)
    parts = split_ref(ref) if isinstance(ref, str) else None
    if parts is None:
        raise _spec_error(source, key, f'expected "file.py:fn" or "pkg.module:fn", got {ref!r}')
    module_part, attr = parts
    if is_file_ref(module_part):
        file = Path(module_part).expanduser()
        file = (file if file.is_absolute() else Path(base_dir) / file).resolve()
        module = _import_file(file, key, source)
        where = str(file)
    else:
        where = module_part
        try:
            module = importlib.import_module(module_part)
        except BaseException as e:
            if isinstance(e, KeyboardInterrupt):
                raise
            raise _spec_error(source, key, f"cannot import {module_part}: {_one_line(e)}") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_")]
            close = difflib.get_close_matches(part, names, n=3, cutoff=0.6)
            hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
            raise _spec_error(source, key, f"{where} has no attribute {attr!r}{hint}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise _spec_error(
            source, key, f"{where}:{attr} is not callable (it is a {type(obj).__name__})"
        )
    return obj


def _call_factory(
    fn: Callable[..., Any], kwargs: dict, *, ref: str, key: str, error: Callable[[str], Exception]
) -> Any:
    try:
        return fn(**kwargs)
    except BaseException as e:
        if isinstance(e, KeyboardInterrupt):
            raise
        raise error(f"{ref} raised {_one_line(e)}") from None


# ----------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------


def build_model(spec: Spec) -> nn.Module:
    """Build the spec's model (random weights, not yet loaded from the checkpoint).

    Raises:
        SpecError: unknown torchvision name (with close matches), bad factory, the factory or the
            constructor raised, or the result is not an ``nn.Module``.
    """
    m = spec.model
    source = str(spec.path)
    if m.factory is not None:
        fn = resolve_callable(m.factory, spec.base_dir, "model.factory", source=source)
        model = _call_factory(
            fn,
            m.kwargs,
            ref=m.factory,
            key="model.factory",
            error=lambda msg: _spec_error(source, "model.factory", msg),
        )
        key = "model.factory"
    else:
        model = _torchvision_model(m.name or "", m.kwargs, source)
        key = "model.name"
    # A factory may wrap the network in DDP/DataParallel for training; bscrit computes per-process
    # batch gradients on the inner module (DDP would all-reduce them per batch), and checkpoints
    # saved from either form load into it (the "module." prefix is stripped when needed).
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    if not isinstance(model, nn.Module):
        raise _spec_error(source, key, f"expected an nn.Module, got {type(model).__name__}")
    return model


def _torchvision_model(name: str, kwargs: dict, source: str) -> nn.Module:
    import torchvision.models as tvm

    short = name.removeprefix("torchvision.models.")
    available = tvm.list_models()
    fn: Callable[..., Any] | None = None
    if short in available:
        fn = functools.partial(tvm.get_model, short)
    else:  # e.g. "detection.fasterrcnn_resnet50_fpn" or a name list_models misses
        obj: Any = tvm
        for part in short.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if callable(obj):
            fn = obj
    if fn is None:
        close = difflib.get_close_matches(short, available, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise _spec_error(source, "model.name", f"unknown torchvision model {name!r}{hint}")
    return _call_factory(
        fn,
        kwargs,
        ref=f"torchvision.models.{short}",
        key="model.name",
        error=lambda msg: _spec_error(source, "model.name", msg),
    )


# ----------------------------------------------------------------------------------------------
# Checkpoint
# ----------------------------------------------------------------------------------------------


@dataclass
class LoadedCheckpoint:
    """What a checkpoint file held: the model's state_dict and, if saved, the optimizer's."""

    state_dict: dict[str, Tensor]
    optimizer: OptimizerInfo | None  # source="checkpoint"
    path: Path
    optimizer_state: Mapping | None = None  # the saved optimizer state_dict, as saved


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) for k in obj)
        and all(isinstance(v, Tensor) for v in obj.values())
    )


def _find_state_dict(obj: Any, depth: int = 0) -> dict[str, Tensor] | None:
    if isinstance(obj, nn.Module):
        return dict(obj.state_dict())
    if _is_state_dict(obj):
        return dict(obj)
    if not isinstance(obj, Mapping) or depth > 2:
        return None
    for k in STATE_DICT_KEYS:
        if k in obj:
            found = _find_state_dict(obj[k], depth + 1)
            if found is not None:
                return found
    return None


def _describe_keys(obj: Any) -> str:
    if isinstance(obj, Mapping):
        keys = [str(k) for k in list(obj)[:10]]
        more = f", ... ({len(obj)} keys)" if len(obj) > 10 else ""
        return f"top-level keys: {', '.join(keys)}{more}"
    return f"it holds a {type(obj).__name__}"


def load_checkpoint(
    path: Path | str, *, key: str | None = None, unsafe: bool = False
) -> LoadedCheckpoint:
    """Read a checkpoint file (read-only) into a state_dict and, if present, optimizer info.

    Args:
        path: the file.
        key: explicit key of the state_dict inside the file (dotted for nesting, ``"ema.model"``).
        unsafe: ``torch.load(weights_only=False)``: unpickles arbitrary objects, which can
            execute code from the file. Only for trusted files (CLI ``--unsafe-load``).

    Raises:
        CheckpointError: missing, corrupt, holds pickled objects (without ``unsafe``), or no
            state_dict found.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder; expected a file saved by torch.save")
    problem = checkpoint_file.file_problem(path)
    if problem is not None:
        raise CheckpointError(f"cannot read checkpoint {path}: {problem}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not unsafe)
    except Exception as e:
        msg = str(e)
        if not unsafe and re.search(r"unsupported (global|class)|TorchScript", msg, re.I):
            refused = checkpoint_file.refusal(path, msg, key, STATE_DICT_KEYS)
            raise CheckpointError(refused, unsafe_load="unsafe_load") from None
        if unsafe and isinstance(e, (AttributeError, ImportError)):  # a pickled class
            raise CheckpointError(
                f"checkpoint {path} holds a pickled object whose class cannot be imported "
                f"({_one_line(e)}): a model saved whole with torch.save(model) needs its class "
                "importable (its module beside the spec); or save model.state_dict() instead"
            ) from None
        # torch's own reason, without its advice about weights_only
        msg = msg.rpartition("WeightsUnpickler error:")[2].split("Check the documentation")[0]
        msg = re.sub(r"In PyTorch 2\.6, we changed.*?trusted source\.", "", msg, flags=re.S)
        raise CheckpointError(
            f"cannot read checkpoint {path}: not a PyTorch checkpoint or corrupted "
            f"({type(e).__name__}: {' '.join(msg.split())[:300]})"
        ) from None
    root = obj
    if key is not None:
        for part in key.split("."):
            if isinstance(obj, Mapping) and part in obj:
                obj = obj[part]
            else:
                raise CheckpointError(
                    f"checkpoint {path} has no key {key!r}; {_describe_keys(root)}"
                )
    state_dict = _find_state_dict(obj)
    if state_dict is None:
        found = checkpoint_file.key_paths(
            obj, lambda x: isinstance(x, nn.Module) or _is_state_dict(x)
        )
        where = f"weights are at {' and '.join(repr(p) for p, _ in found)}: " if found else ""
        raise CheckpointError(
            f"no state_dict found in checkpoint {path} ({_describe_keys(obj)}); "
            f"{where}name it with checkpoint.key in the spec"
        )
    return LoadedCheckpoint(
        state_dict=state_dict,
        optimizer=optim.from_checkpoint(root),
        path=path,
        optimizer_state=optim.optimizer_state(root),
    )


def _strip(sd: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in sd.items()}


def _auto_strip(sd: dict[str, Tensor], model_keys: set[str]) -> dict[str, Tensor]:
    """Strip ``module.``/``model.``/``_orig_mod.`` when no key matches the model as is."""
    for _ in range(len(AUTO_PREFIXES) * 2):  # e.g. "_orig_mod.module." takes two rounds
        if not sd or set(sd) & model_keys:
            return sd
        for p in AUTO_PREFIXES:
            with_p = {k[len(p) :]: v for k, v in sd.items() if k.startswith(p)}
            if len(with_p) == len(sd):
                sd = with_p
                break
            if with_p and set(with_p) == model_keys:  # Lightning module with extra submodules
                sd = with_p
                break
        else:
            return sd
    return sd


def load_model(
    spec: Spec, checkpoint: Path | str | None = None, *, unsafe: bool = False
) -> tuple[nn.Module, LoadedCheckpoint]:
    """Build the spec's model and load the checkpoint's weights into it (strict).

    Args:
        spec: the spec.
        checkpoint: overrides the spec's checkpoint (CLI ``--checkpoint``); else the spec's first
            ``checkpoint.path``.
        unsafe: see :func:`load_checkpoint`.

    Returns:
        The model on CPU, and the checkpoint (its ``state_dict`` after prefix stripping).

    Raises:
        CheckpointError: no checkpoint given, unreadable, or keys / shapes do not match the model
            (counts, first 5 missing and unexpected keys, shape mismatches).
        SpecError: the model cannot be built.
    """
    if checkpoint is None:
        if not spec.checkpoint.paths:
            raise CheckpointError(
                "no checkpoint: give {checkpoint} or checkpoint.path in the spec",
                checkpoint="checkpoint",
            )
        checkpoint = spec.checkpoint.paths[0]
    model = build_model(spec)
    # A pickled nn.Module (unsafe only) names its class's module: let it import from the
    # spec's folder, as the factories do.
    folder = str(spec.base_dir)
    if unsafe:
        sys.path.insert(0, folder)
    try:
        ckpt = load_checkpoint(checkpoint, key=spec.checkpoint.key, unsafe=unsafe)
    finally:
        if unsafe and folder in sys.path:
            sys.path.remove(folder)
    expected = model.state_dict()
    sd = ckpt.state_dict
    if spec.checkpoint.strip_prefix:
        for p in spec.checkpoint.strip_prefix:
            sd = _strip(sd, p)
    else:
        sd = _auto_strip(sd, set(expected))
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    shapes = [
        (k, tuple(sd[k].shape), tuple(v.shape))
        for k, v in expected.items()
        if k in sd and isinstance(v, Tensor) and tuple(sd[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        lines = [f"checkpoint {ckpt.path} does not fit the model:"]
        if missing:
            more = ", ..." if len(missing) > 5 else ""
            lines.append(f"  {len(missing)} missing key(s): {', '.join(missing[:5])}{more}")
        if unexpected:
            more = ", ..." if len(unexpected) > 5 else ""
            lines.append(
                f"  {len(unexpected)} unexpected key(s): {', '.join(unexpected[:5])}{more}"
            )
        for k, got, want in shapes[:5]:
            lines.append(f"  shape mismatch {k}: checkpoint {list(got)}, model {list(want)}")
        if len(shapes) > 5:
            lines.append(f"  ... {len(shapes) - 5} more shape mismatch(es)")
        if missing and unexpected:
            lines.append("  (a key prefix? set checkpoint.strip_prefix in the spec)")
        raise CheckpointError("\n".join(lines))
    try:
        model.load_state_dict(sd, strict=True)
    except Exception as e:
        raise CheckpointError(f"cannot load checkpoint {ckpt.path}: {_one_line(e)}") from None
    ckpt.state_dict = sd
    return model.cpu(), ckpt


# ----------------------------------------------------------------------------------------------
# Data, loss, device, optimizer
# ----------------------------------------------------------------------------------------------


def _build_transform(transforms: tuple[dict, ...], key: str, source: str) -> Callable | None:
    if not transforms:
        return None
    import torchvision.transforms as T

    built = []
    for i, t in enumerate(transforms):
        tkey = f"{key}.transforms[{i}].name"
        name = str(t["name"]).removeprefix("torchvision.transforms.")
        cls = getattr(T, name, None)
        if cls is None or not callable(cls) or name.startswith("_"):
            names = [n for n in dir(T) if n[:1].isupper()]
            close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise _spec_error(source, tkey, f"unknown torchvision transform {name!r}{hint}")
        built.append(
            _call_factory(
                cls,
                dict(t.get("kwargs") or {}),
                ref=f"torchvision.transforms.{name}",
                key=tkey,
                error=lambda msg, tkey=tkey: _spec_error(source, tkey, msg),
            )
        )
    return built[0] if len(built) == 1 else T.Compose(built)


def build_dataset(data: DataSpec, base_dir: Path, key: str = "data") -> torch.utils.data.Dataset:
    """Build a dataset of ``(input, target)`` pairs from a torchvision class or a factory.

    A relative ``root`` kwarg resolves against ``base_dir``; ``subset`` keeps the first n.

    Raises:
        SpecError: unknown dataset / transform name, bad factory reference.
        DataError: the dataset cannot be built (files missing, ``download: false``, factory
            raised) or has no ``__len__`` / ``__getitem__``.
    """
    base_dir = Path(base_dir)
    source = str(base_dir)

    def data_error(msg: str) -> DataError:
        return DataError(f"{key}: {msg}")

    if data.factory is not None:
        fn = resolve_callable(data.factory, base_dir, f"{key}.factory")
        ds = _call_factory(
            fn, data.kwargs, ref=data.factory, key=f"{key}.factory", error=data_error
        )
        what = data.factory
    else:
        import torchvision.datasets as tvd

        name = (data.dataset or "").removeprefix("torchvision.datasets.")
        cls = getattr(tvd, name, None)
        if cls is None or not callable(cls) or name.startswith("_"):
            names = [n for n in dir(tvd) if n[:1].isupper()]
            close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise _spec_error(
                source, f"{key}.dataset", f"unknown torchvision dataset {data.dataset!r}{hint}"
            )
        kwargs = dict(data.kwargs)
        if isinstance(kwargs.get("root"), str):
            root = Path(kwargs["root"]).expanduser()
            kwargs["root"] = str(root if root.is_absolute() else base_dir / root)
        transform = _build_transform(data.transforms, key, source)
        if transform is not None:
            if "transform" in kwargs:
                raise _spec_error(
                    source, f"{key}.transforms", "give either transforms or kwargs.transform"
                )
            kwargs["transform"] = transform
        ds = _call_factory(
            cls, kwargs, ref=f"torchvision.datasets.{name}", key=key, error=data_error
        )
        what = name
    if not (hasattr(ds, "__len__") and hasattr(ds, "__getitem__")):
        raise data_error(
            f"{what} returned a {type(ds).__name__}, which has no __len__/__getitem__ "
            "(a map-style torch Dataset is needed)"
        )
    try:
        n = len(ds)
    except Exception as e:
        raise data_error(f"len() of the dataset failed: {_one_line(e)}") from None
    if n == 0:
        raise data_error(f"{what} is empty")
    if data.subset is not None and data.subset < n:
        ds = torch.utils.data.Subset(ds, range(data.subset))
    return ds


def _check_reduction(loss: Any, source: str, key: str) -> None:
    reduction = getattr(loss, "reduction", "mean")
    if isinstance(reduction, str) and reduction != "mean":
        raise _spec_error(
            source,
            key,
            f"the loss has reduction={reduction!r}; the estimators assume the batch mean "
            "(use reduction='mean')",
        )


def build_loss(spec: Spec) -> Callable[[Tensor, Tensor], Tensor]:
    """The loss ``(output, target) -> scalar``, the MEAN over the batch.

    ``cross_entropy`` / ``mse`` are ``torch.nn.functional`` functions (with the spec's kwargs);
    a factory is called with its kwargs and must return a callable. An ``nn.Module`` loss is
    returned as is (move it to the device if it holds tensors, e.g. class weights).

    Raises:
        SpecError: bad factory, non-callable result, or a reduction other than ``'mean'``.
    """
    import torch.nn.functional as F

    loss = spec.loss
    source = str(spec.path)
    if loss.name is not None:
        if loss.kwargs.get("reduction", "mean") != "mean":
            raise _spec_error(
                source, "loss.kwargs.reduction", "the estimators assume the batch mean"
            )
        fn = {"cross_entropy": F.cross_entropy, "mse": F.mse_loss}.get(loss.name)
        if fn is None:
            raise _spec_error(source, "loss", f"unknown loss {loss.name!r}")
        return functools.partial(fn, **loss.kwargs) if loss.kwargs else fn
    factory = resolve_callable(loss.factory or "", spec.base_dir, "loss.factory", source=source)
    obj = _call_factory(
        factory,
        loss.kwargs,
        ref=loss.factory or "",
        key="loss.factory",
        error=lambda msg: _spec_error(source, "loss.factory", msg),
    )
    if not callable(obj):
        raise _spec_error(
            source,
            "loss.factory",
            f"{loss.factory} returned a {type(obj).__name__}; expected a callable "
            "(output, target) -> mean loss",
        )
    _check_reduction(obj, source, "loss.factory")
    return obj


def resolve_device(device: str) -> torch.device:
    """``auto`` -> ``cuda`` if available else ``cpu``; ``cpu``, ``cuda``, ``cuda:N`` checked.

    Raises:
        UsageError: unknown device string, or CUDA asked for but not available.
    """
    kind, index = parse_device(device)
    if kind == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UsageError(
            f"device {device!r}: no CUDA device is available (torch.cuda.is_available() is "
            "False); use device: cpu or auto"
        )
    if index is not None and index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise UsageError(f"device {device!r}: only {count} CUDA device(s) (cuda:0..)")
    return torch.device("cuda", index) if index is not None else torch.device("cuda")


def optimizer_for(spec: Spec, ckpt: LoadedCheckpoint | None) -> OptimizerInfo | None:
    """The optimizer of the base run: the spec's if given, else the checkpoint's, else None."""
    if spec.optimizer is not None:
        return spec.optimizer
    return ckpt.optimizer if ckpt is not None else None
