"""From a :class:`~bscrit.specfile.document.Spec` to torch objects: model, dataset, loss, device.

Factories are referenced as ``"path/to/file.py:fn"`` (imported from the file, its folder on
``sys.path`` while it loads so sibling imports work) or ``"pkg.module:fn"``. Models may also be
torchvision names or Hugging Face folders (:mod:`bscrit.load.hf`), datasets torchvision dataset
classes with torchvision transforms.

Checkpoints (weights into the model, the saved optimizer) are :mod:`bscrit.load.checkpoints`.

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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bscrit.errors import DataError, SpecError, SpecProblem
from bscrit.specfile.document import Spec
from bscrit.specfile.references import is_file_ref, split_ref
from bscrit.specfile.sections import DataSpec

_import_counter = itertools.count()


def one_line(e: BaseException) -> str:
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
        raise _spec_error(source, key, f"cannot import {file}: {one_line(e)}") from None
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
            raise _spec_error(source, key, f"cannot import {module_part}: {one_line(e)}") from None
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
        raise error(f"{ref} raised {one_line(e)}") from None


# ----------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------


def build_model(spec: Spec) -> nn.Module:
    """Build the spec's model (random weights, not yet loaded from the checkpoint).

    Raises:
        SpecError: unknown torchvision name (with close matches), bad factory, the factory or the
            constructor raised, or the result is not an ``nn.Module``; for a Hugging Face folder
            see :func:`bscrit.load.hf.build_hf_model` (transformers missing: exit 2 with the extra).
    """
    m = spec.model
    source = str(spec.path)
    if m.hf is None and m.factory is not None:
        fn = resolve_callable(m.factory, spec.base_dir, "model.factory", source=source)
        model = _call_factory(
            fn,
            m.kwargs,
            ref=m.factory,
            key="model.factory",
            error=lambda msg: _spec_error(source, "model.factory", msg),
        )
        key = "model.factory"
    elif m.hf is None:
        model = _torchvision_model(m.name or "", m.kwargs, source)
        key = "model.name"
    else:  # a Hugging Face folder (transformers imported only there)
        from bscrit.load.hf import build_hf_model

        return build_hf_model(m, source)
    # A factory may wrap the network in DDP/DataParallel for training; bscrit computes per-process
    # batch gradients on the inner module (DDP would all-reduce them per batch), and checkpoints
    # saved from either form load into it (the "module." prefix is stripped when needed).
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    if not isinstance(model, nn.Module):
        raise _spec_error(source, key, f"expected an nn.Module, got {type(model).__name__}")
    meta = meta_tensors(model)
    if meta:
        raise _spec_error(source, key, meta_message(meta))
    return model


def meta_tensors(model: nn.Module) -> list[str]:
    """The names of the model's parameters and buffers on the meta device (no data)."""
    named = [*model.named_parameters(), *model.named_buffers()]
    return [name for name, t in named if t is not None and t.is_meta]


def meta_message(names: list[str]) -> str:
    """Why a model with tensors on the meta device cannot be measured, and what to do."""
    shown = ", ".join(names[:5]) + (f", … ({len(names) - 5} more)" if len(names) > 5 else "")
    return (
        f"the model has {len(names)} tensor(s) on the meta device, without data ({shown}): it "
        "was built under torch.device('meta') or init_empty_weights, and weights cannot be "
        "loaded into it; build it on the CPU (or call model.to_empty(device='cpu') before "
        "returning it)"
    )


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
# Data, loss, device
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


def build_dataset(
    data: DataSpec, base_dir: Path, key: str = "data", source: str | None = None
) -> torch.utils.data.Dataset:
    """Build a dataset of ``(input, target)`` pairs from a torchvision class or a factory.

    A relative ``root`` kwarg resolves against ``base_dir``; ``subset`` keeps the first n.
    ``source`` is the spec named in errors (its file; default: ``base_dir``).

    Raises:
        SpecError: unknown dataset / transform name, bad factory reference.
        DataError: the dataset cannot be built (files missing, ``download: false``, factory
            raised) or has no ``__len__`` / ``__getitem__``.
    """
    base_dir = Path(base_dir)
    source = str(base_dir) if source is None else source

    def data_error(msg: str) -> DataError:
        return DataError(f"{key}: {msg}")

    if data.factory is not None:
        fn = resolve_callable(data.factory, base_dir, f"{key}.factory", source=source)
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
        raise data_error(f"len() of the dataset failed: {one_line(e)}") from None
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
    ``model`` is :class:`~bscrit.engine.objective.ModelLoss` (the model's own ``output.loss``);
    a factory is called with its kwargs and must return a callable. An ``nn.Module`` loss is
    returned as is (move it to the device if it holds tensors, e.g. class weights).

    Raises:
        SpecError: bad factory, non-callable result, or a reduction other than ``'mean'``.
    """
    import torch.nn.functional as F

    loss = spec.loss
    source = str(spec.path)
    if loss.name == "model":
        from bscrit.engine.objective import ModelLoss

        return ModelLoss(source)
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
