"""What the Python API is handed, made into what the engine takes (torch, imported lazily).

:func:`bscrit.measure` takes live objects where the command line takes a spec: a Dataset or a
DataLoader, a loss in one of three forms, a torch optimizer. This module turns each into the
engine's inputs and says clearly what it refuses:

- **data**: a map-style ``Dataset`` (``len`` and ``[i]``), or a ``DataLoader`` whose ``dataset``
  and ``collate_fn`` are used; its sampler, batch size and shuffling are not: bscrit draws its
  own independent batches (docs/theory.md §2, "Why independent batches").
- **loss_fn** (:func:`resolve_loss`): ``"model"`` (the model's own ``output.loss``),
  ``loss_fn(outputs, targets)`` (a torch loss, or a function whose first parameter is named
  like an output), or ``loss_fn(model, batch)`` (any other function).
- **optimizer** (:func:`optimizer_selection`): its ``param_groups`` say which parameters count
  (matched by identity, not by shape) and its class and hyperparameters go into the record, as
  the optimizer state of a checkpoint does for ``bscrit measure``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bscrit.errors import UsageError
from bscrit.optim import registry as optim
from bscrit.optim import saved
from bscrit.optim.registry import OptimizerInfo

#: First-parameter names that mark a loss as ``loss_fn(outputs, targets)``.
OUTPUT_NAMES = frozenset(
    {"output", "outputs", "out", "logits", "input", "inputs", "pred", "preds", "prediction",
     "predictions", "y_pred", "y_hat", "yhat"}
)  # fmt: skip


@dataclass(frozen=True)
class Data:
    """The engine's view of ``data``: the dataset and the collate function (None: torch's)."""

    dataset: Any
    collate_fn: Callable[[list[Any]], Any] | None


def resolve_data(data: Any) -> Data:
    """A Dataset as it is; a DataLoader as its dataset and collate function.

    Raises:
        UsageError: an iterable-style dataset (bscrit draws examples by index) or an object
            with no ``len`` / ``[i]``.
    """
    from torch.utils.data import DataLoader, IterableDataset
    from torch.utils.data._utils.collate import default_collate

    collate = None
    dataset = data
    if isinstance(data, DataLoader):
        dataset = data.dataset
        collate = None if data.collate_fn is default_collate else data.collate_fn
    if isinstance(dataset, IterableDataset):
        raise UsageError(
            f"data: an IterableDataset ({type(dataset).__name__}) cannot be measured: bscrit "
            "draws independent batches by index (docs/theory.md §2); give a map-style dataset "
            "(with len() and [i])"
        )
    if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
        raise UsageError(
            f"data: expected a torch Dataset (with len() and [i]) or a DataLoader, got "
            f"{type(data).__name__}"
        )
    return Data(dataset, collate)


def loss_style(loss_fn: Any) -> str:
    """``"model"``, ``"outputs"`` (``loss_fn(outputs, targets)``) or ``"model_batch"``
    (``loss_fn(model, batch)``); the rule of :func:`resolve_loss`."""
    from torch import nn

    from bscrit.engine.objective import BatchLoss, ModelLoss

    if isinstance(loss_fn, str):
        if loss_fn != "model":
            raise UsageError(
                f"loss_fn: the only string accepted is 'model' (the model's own output.loss), "
                f"got {loss_fn!r}"
            )
        return "model"
    if isinstance(loss_fn, ModelLoss):
        return "model"
    if isinstance(loss_fn, BatchLoss):
        return "model_batch"
    if not callable(loss_fn):
        raise UsageError(f"loss_fn: expected a callable or 'model', got {type(loss_fn).__name__}")
    if isinstance(loss_fn, nn.Module):  # nn.CrossEntropyLoss(), a loss module of one's own
        return "outputs"
    func = getattr(loss_fn, "func", loss_fn)  # functools.partial(F.cross_entropy, ...)
    if getattr(func, "__module__", "") in ("torch.nn.functional", "torch._C._nn"):
        return "outputs"
    try:
        params = list(inspect.signature(loss_fn).parameters.values())
    except (TypeError, ValueError):
        return "model_batch"
    first = params[0].name.lower() if params else ""
    return "outputs" if first in OUTPUT_NAMES else "model_batch"


def resolve_loss(loss_fn: Any) -> Any:
    """The loss the engine calls (:mod:`bscrit.engine.objective`), by :func:`loss_style`:

    - ``"model"``: :class:`~bscrit.engine.objective.ModelLoss` (``model(**batch).loss``, or
      ``model(x, labels=y).loss`` for pairs);
    - a torch loss (an ``nn.Module`` such as ``nn.CrossEntropyLoss()``, a function of
      ``torch.nn.functional`` or a ``functools.partial`` of one) or a function whose first
      parameter is named ``outputs``, ``logits``, ``preds``... (:data:`OUTPUT_NAMES`):
      ``loss_fn(model(x), y)``;
    - any other callable: ``loss_fn(model, batch)``, wrapped as
      :class:`~bscrit.engine.objective.BatchLoss`.

    Every form returns the MEAN loss of the batch (a scalar tensor).
    """
    from bscrit.engine.objective import BatchLoss, ModelLoss

    style = loss_style(loss_fn)
    if style == "model":
        return loss_fn if isinstance(loss_fn, ModelLoss) else ModelLoss("bscrit.measure")
    if style == "model_batch" and not isinstance(loss_fn, BatchLoss):
        return BatchLoss(loss_fn)
    return loss_fn


def check_targets(dataset: Any, loss: Any) -> None:
    """Refuse a torch loss (``loss_fn(outputs, targets)``) on dict examples, which carry no
    separate target; reads the first example only.

    Raises:
        UsageError: naming the example's keys and the two forms that work.
    """
    from collections.abc import Mapping

    from torch import nn

    func = getattr(loss, "func", loss)
    torch_loss = isinstance(loss, nn.modules.loss._Loss) or getattr(func, "__module__", "") in (
        "torch.nn.functional",
        "torch._C._nn",
    )
    if not torch_loss:
        return
    try:
        first = dataset[0]
    except Exception:  # noqa: BLE001 - a broken dataset is reported with its first batch
        return
    if isinstance(first, Mapping):
        keys = ", ".join(sorted(map(str, first.keys())))
        raise UsageError(
            f"loss_fn: the examples are dicts (keys: {keys}), so a torch loss has no separate "
            "target: give loss_fn='model' (the model's own output.loss, model(**batch)) or "
            "loss_fn(model, batch)"
        )


class WholeBatch:
    """A collate function whose batch reaches a ``loss_fn(model, batch)`` whole: the collated
    batch as the engine's inputs, with no separate targets (any structure: a triple, a dict)."""

    def __init__(self, collate_fn: Callable[[list[Any]], Any]) -> None:
        self.collate_fn = collate_fn

    def __call__(self, items: list[Any]) -> tuple[Any, None]:
        return self.collate_fn(items), None


def engine_collate(data: Data, loss: Any) -> Callable[[list[Any]], Any] | None:
    """The collate function to hand the engine: for a ``loss_fn(model, batch)`` the batch is
    kept whole (:class:`WholeBatch`) unless it is an in-memory pair of tensors (then the engine
    indexes the tensors and hands ``(x, y)``)."""
    from torch.utils.data._utils.collate import default_collate

    from bscrit.engine.data import tensor_view
    from bscrit.engine.objective import BatchLoss

    if not isinstance(loss, BatchLoss):
        return data.collate_fn
    view = tensor_view(data.dataset) if data.collate_fn is None else None
    if view is not None and len(view) == 2:
        return None
    return WholeBatch(data.collate_fn or default_collate)


def resolve_device(model: Any, device: Any) -> Any:
    """``device`` (a string or ``torch.device``), or None: where the model's parameters are."""
    import torch

    from bscrit.load.device import resolve_device as parse

    if device is None:
        first = next(iter(model.parameters()), None)
        return first.device if first is not None else torch.device("cpu")
    return device if isinstance(device, torch.device) else parse(str(device))


def unwrap_optimizer(optimizer: Any) -> Any:
    """The torch optimizer inside a wrapper (Lightning's ``LightningOptimizer``, accelerate's
    ``AcceleratedOptimizer``).

    Raises:
        UsageError: not a torch optimizer (no ``param_groups``).
    """
    import torch

    opt = optimizer
    for _ in range(4):  # a wrapper may itself subclass Optimizer (AcceleratedOptimizer does)
        inner = getattr(opt, "_optimizer", None) or getattr(opt, "optimizer", None)
        if not isinstance(inner, torch.optim.Optimizer) or inner is opt:
            break
        opt = inner
    if not isinstance(getattr(opt, "param_groups", None), list):
        raise UsageError(
            f"optimizer: expected a torch.optim.Optimizer, got {type(optimizer).__name__}"
        )
    return opt


def registry_name(optimizer: Any) -> str | None:
    """The registry name of a live optimizer's class (or of a base class), else None."""
    for cls in type(optimizer).__mro__:
        if cls.__name__.lower() in optim.REGISTRY:
            return cls.__name__.lower()
    return None


@dataclass(frozen=True)
class OptimizerView:
    """What a live optimizer says: which parameters, its record, its state and notes."""

    selection: Any  # ParameterSelection
    info: OptimizerInfo | None
    state: Any  # its state_dict (the tensors are the optimizer's own, only read)
    notes: tuple[str, ...]


def optimizer_selection(model: Any, optimizer: Any | None) -> OptimizerView:
    """The parameters that count and the optimizer's record (docs/theory.md §1, "Which
    parameters").

    Without an optimizer: the ``requires_grad`` parameters. With one: the model's parameters in
    its ``param_groups`` (matched by identity), its hyperparameters read from its
    ``state_dict()`` as from a checkpoint (:func:`bscrit.optim.saved.read_state`, named by its
    class), a warning when ``requires_grad`` says otherwise.

    Raises:
        UsageError: no parameter of the optimizer is one of the model's.
    """
    from bscrit.engine.params import ParameterSelection, select_parameters

    if optimizer is None:
        return OptimizerView(select_parameters(model, None), None, None, ())
    opt = unwrap_optimizer(optimizer)
    order = [p for g in opt.param_groups for p in g["params"]]
    index = {id(p): i for i, p in enumerate(order)}
    named = list(model.named_parameters())
    chosen = [(n, p) for n, p in named if id(p) in index]
    if not chosen:
        raise UsageError(
            f"optimizer: none of its {len(order)} parameters is one of the model's "
            f"{len(named)} (an optimizer of another model?)"
        )
    notes: list[str] = []
    trainable = [n for n, p in named if p.requires_grad]
    names = [n for n, _ in chosen]
    if names != trainable:
        notes.append(
            f"the optimizer updates {len(names)} of the model's {len(named)} parameter tensors "
            f"but {len(trainable)} have requires_grad: measuring the optimizer's"
        )
    if len(chosen) < len({id(p) for p in order}):
        notes.append(
            f"{len(order) - len(chosen)} of the optimizer's parameters are not the model's: "
            "left out"
        )
    numel = {id(p): p.numel() for p in order}
    sel = ParameterSelection(
        names=tuple(names),
        by="the optimizer's param_groups",
        state_indices=tuple(index[id(p)] for _, p in chosen),
        group_params=tuple(sum(numel[id(p)] for p in g["params"]) for g in opt.param_groups),
        total_tensors=len(named),
        total_params=sum(p.numel() for _, p in named),
        measured_params=sum(p.numel() for _, p in chosen),
        warning=notes[0] if notes else None,
    )
    state = opt.state_dict()
    name = registry_name(opt)
    info = None
    if name is None:
        notes.append(
            f"the optimizer {type(opt).__name__} is not one bscrit knows "
            f"({', '.join(sorted(optim.NAMES))}): no optimizer is recorded"
        )
    else:
        reading = saved.read_state(state, name=name)
        info = reading.info
        if info is not None:
            info = optim.with_group_params(info, sel.group_params)
            info = _replace(info, identified_by=f"its class, {type(opt).__name__}", source="api")
        elif reading.note:
            notes.append(reading.note)
    return OptimizerView(sel, info, state, tuple(notes))


def _replace(info: OptimizerInfo, **kw: Any) -> OptimizerInfo:
    from dataclasses import replace

    return replace(info, **kw)


def check_arguments(
    batch_size: Any,
    num_batches: Any,
    groups: Any,
    micro_batch_size: Any,
    mode: str,
    **counts: Any,
) -> None:
    """Every check of :func:`bscrit.measure`'s numbers that needs no data, before any work
    (:mod:`bscrit.boundary`: int64 integers in their ranges), every problem at once.

    ``counts``: the other integers, ``seed`` (≥ 0), ``step``, ``examples_seen`` and
    ``num_workers`` (≥ 0; None: not given).

    Raises:
        UsageError: listing each bad argument.
    """
    from bscrit import boundary
    from bscrit.engine.data import MAX_BATCHES

    p = boundary.Problems()
    b = p.integer("batch_size", batch_size, minimum=1, what="a positive integer (a batch size)")
    if batch_size is None:
        p.add("batch_size", "expected a positive integer (a batch size), got None")
    k = p.integer("num_batches", num_batches, minimum=1, maximum=MAX_BATCHES)
    m = p.integer("groups", groups, minimum=2, what="an integer of at least 2 (the jackknife)")
    if groups is None:
        p.add("groups", "expected an integer of at least 2 (the jackknife), got None")
    if k is not None and m is not None and k < 2 * m:
        p.add("num_batches", f"expected at least 2 * groups = {2 * m}, got {k}")
    micro = p.integer("micro_batch_size", micro_batch_size, minimum=1)
    if micro is not None and b is not None and b % micro:
        p.add("micro_batch_size", f"{micro} does not divide batch_size {b}")
    for key, v in counts.items():
        p.integer(key, v, minimum=0)
    if mode not in ("train", "eval"):
        p.add("mode", f"expected 'train' or 'eval', got {boundary.short(mode)}")
    p.raise_any()


def parameter_names(model: Any, names: Sequence[str]) -> list[Any]:
    """The model's parameters named ``names``, in the model's order."""
    keep = set(names)
    return [p for n, p in model.named_parameters() if n in keep]
