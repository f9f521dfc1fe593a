"""Which examples go into which batch, and how a batch reaches the device (torch).

One :class:`BatchSource` serves every loop that draws batches (the measurement engine and the
SVAG runs): in-memory TensorDatasets are indexed on the device directly; anything else goes
through one DataLoader with a fixed batch sampler. docs/theory.md §2 says why the batches of a
measurement are drawn independently (not as one shuffled epoch).
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from bscrit.errors import BscritError, DataError, UsageError, UserCodeError, first_line

#: The paper's protocol: at least 200 batches, and at least one epoch's worth ([LMA21] F.2).
MIN_BATCHES = 200


def default_num_batches(dataset_size: int, batch_size: int) -> int:
    """k = max(200, ceil(n / B))."""
    return max(MIN_BATCHES, math.ceil(dataset_size / batch_size))


#: Most batches one measurement plans. Above this a run takes weeks even at 1 ms a batch, and
#: precision has long stopped improving in practice (relative errors shrink as 1/√k).
MAX_BATCHES = 10**9


def check_num_batches(k: int, key: str = "batches", where: str | None = None) -> None:
    """Refuse a number of batches below 1 or above :data:`MAX_BATCHES`, before any work.

    ``key`` is the option named in the message; ``where`` (e.g. ``"spec.yaml: measure.batches"``)
    names a spec key instead."""
    name, opts = (where, {}) if where else ("{" + key + "}", {key: key})
    if k < 1:
        raise UsageError(f"{name} must be at least 1, got {k}", **opts)
    if k > MAX_BATCHES:
        raise UsageError(
            f"{name} {k:,} is more than the {MAX_BATCHES:,} batches one measurement may plan "
            f"(at 1 ms a batch that alone would take {k / 1000 / 86400:,.0f} days); relative "
            "errors shrink as 1/√k, so 10⁴–10⁶ batches are plenty; or let {target_rel_error} stop "
            "at a precision",
            **opts,
            target_rel_error="target_rel_error",
        )


def check_batches(
    given: int | None, in_spec: int | None, max_batches: int | None, where: str
) -> None:
    """``--batches`` (else the spec's ``measure.batches``, at ``where``) and ``--max-batches``
    within bounds, before the data loads."""
    if given is not None:
        check_num_batches(given)
    elif in_spec is not None:
        check_num_batches(in_spec, where=where)
    if max_batches is not None:
        check_num_batches(max_batches, "max_batches")


def group_counts(k: int, m: int) -> list[int]:
    """Split k batches into m groups of sizes as equal as possible (first ones one larger)."""
    return [k // m + (1 if j < k % m else 0) for j in range(m)]


def sample_batches(n: int, batch_size: int, num_batches: int, seed: int) -> Tensor:
    """``num_batches`` × B example indices: each row B distinct examples, rows independent.

    Independent rows matter: batches of one shuffled epoch are negatively correlated and the
    −N̂/k bias correction of Ĝ would over-correct (docs/theory.md §2, "Why independent batches").
    All rows at once: a measurement draws them lazily instead (:class:`BatchPlan`, the same rows).
    """
    return torch.cat(list(BatchPlan(n, batch_size, num_batches, seed).chunks()))


@dataclass(frozen=True)
class BatchPlan:
    """The k × B example indices of a measurement, drawn lazily: never all k rows at once.

    Row for row what :func:`sample_batches` returns for the same arguments (one generator, the
    same chunks of uniform keys), produced as a consumer asks for them: memory holds one chunk
    (keys of at most 2²⁴ elements), whatever k is. Every rank of a distributed run builds the
    same plan from the global seed and so sees the same rows.
    """

    n: int
    batch_size: int
    num_batches: int
    seed: int

    def __len__(self) -> int:
        return self.num_batches

    def chunks(self) -> Iterator[Tensor]:
        """The rows in order, in chunks (consecutive row blocks, together all k rows)."""
        n, b, k = self.n, self.batch_size, self.num_batches
        gen = torch.Generator().manual_seed(self.seed)
        # argsort of uniform keys = a uniformly random permutation; keep the first B of each row.
        # Chunked so that k × n keys never sit in memory at once for large datasets.
        chunk = max(1, (1 << 24) // max(n, 1))
        for start in range(0, k, chunk):
            c = min(chunk, k - start)
            if b == n:
                yield torch.arange(n).repeat(c, 1)
                continue
            keys = torch.rand(c, n, generator=gen)
            yield torch.topk(keys, b, dim=1, largest=False).indices


def group_blocks(
    chunks: Iterable[Tensor], counts: Sequence[int], block: int
) -> Iterator[tuple[int, Tensor]]:
    """``(group j, rows)``: the rows of ``chunks`` cut into groups of ``counts[j]`` rows in
    order, each group in blocks of at most ``block`` rows (so no group is held at once)."""
    it = iter(chunks)
    pending: list[Tensor] = []
    have = 0
    for j, count in enumerate(counts):
        left = count
        while left > 0:
            want = min(left, block)
            while have < want:
                t = next(it)
                pending.append(t)
                have += len(t)
            rows = torch.cat(pending) if len(pending) > 1 else pending[0]
            out, rest = rows[:want], rows[want:]
            pending, have = ([rest] if len(rest) else []), len(rest)
            left -= want
            yield j, out


def to_device(obj: Any, device: torch.device, non_blocking: bool = False) -> Any:
    if isinstance(obj, Tensor):
        return obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(o, device, non_blocking) for o in obj)
    if isinstance(obj, dict):
        return {k: to_device(v, device, non_blocking) for k, v in obj.items()}
    return obj


def tensor_view(dataset: Any) -> tuple[Tensor, ...] | None:
    """The underlying tensors when the dataset is a (Subset of a) TensorDataset, else None.

    Only a view of exactly two tensors (inputs, targets) is indexed on the device directly
    (:class:`BatchSource`); any other dataset (dict examples, three tensors) is collated by a
    DataLoader and checked there."""
    from torch.utils.data import Subset, TensorDataset

    if isinstance(dataset, TensorDataset):
        return tuple(dataset.tensors)
    if isinstance(dataset, Subset):
        inner = tensor_view(dataset.dataset)
        if inner is not None:
            idx = torch.as_tensor(dataset.indices, dtype=torch.long)
            return tuple(t[idx] for t in inner)
    return None


class _RowSampler:
    """A batch sampler whose rows are set before each pass (one DataLoader for all groups)."""

    def __init__(self) -> None:
        self.rows: list[list[int]] = []

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)


@dataclass
class BatchSource:
    """Yields (inputs, targets) on the device for given index rows; a batch of dict examples
    (collated by torch's ``default_collate`` into one dict of stacked tensors) as
    ``(batch, None)``: its targets are inside it (:mod:`bscrit.engine.objective`).

    In-memory TensorDatasets are indexed directly on the device (no DataLoader, no collation,
    unless a ``collate_fn`` is given);
    anything else goes through a DataLoader with a fixed batch sampler (workers, pinned memory).
    With workers, one DataLoader with persistent workers serves every group (its batch sampler
    is swapped per group), so workers start once per measurement, not once per group.
    """

    dataset: Any
    device: torch.device
    num_workers: int = 0
    prefetch: int | None = None  # batches each worker loads ahead (DataLoader prefetch_factor)
    collate_fn: Any = None  # the DataLoader's collate_fn (None: torch's default_collate)
    _tensors: tuple[Tensor, ...] | None = field(default=None, init=False)
    _loader: Any = field(default=None, init=False)
    _sampler: Any = field(default=None, init=False)

    def __post_init__(self) -> None:
        view = tensor_view(self.dataset) if self.collate_fn is None else None
        if view is not None and len(view) == 2:
            self._tensors = tuple(t.to(self.device) for t in view)

    @property
    def in_memory(self) -> bool:
        return self._tensors is not None

    def batches(self, rows: Tensor | Sequence[Tensor], seed: int) -> Iterator[tuple[Any, Any]]:
        """The batches of ``rows`` (one row of example indices per batch, in order)."""
        if self._tensors is not None:
            for row in rows:
                idx = row.to(self.device)
                x, y = self._tensors[0][idx], self._tensors[1][idx]
                yield x, y
            return
        from torch.utils.data import DataLoader

        if self._loader is None:
            self._sampler = _RowSampler()
            self._loader = DataLoader(
                guarded_dataset(self.dataset),
                batch_sampler=self._sampler,
                num_workers=self.num_workers,
                pin_memory=self.device.type == "cuda",
                persistent_workers=self.num_workers > 0,
                prefetch_factor=(self.prefetch or 4) if self.num_workers > 0 else None,
                generator=torch.Generator().manual_seed(seed),
                collate_fn=_GuardedCollate(self.collate_fn),
            )
        self._sampler.rows = [r.tolist() for r in rows]
        non_blocking = self.device.type == "cuda"
        for item in _loaded(self._loader):
            yield _pair(item, self.device, non_blocking)

    def stream(self, batch_size: int, generator: torch.Generator) -> Iterator[tuple[Any, Any]]:
        """An endless stream of independent random batches of ``batch_size`` distinct examples.

        Each batch is the first B of a fresh permutation drawn from ``generator`` (the SVAG
        runs). Anything not held in memory goes through a DataLoader of its own, so
        :meth:`batches` can serve fixed rows between two batches of the stream.
        """
        rows = _RandomRows(len(self.dataset), batch_size, generator)
        if self._tensors is not None:
            for row in rows:
                idx = torch.as_tensor(row, device=self.device)
                yield self._tensors[0][idx], self._tensors[1][idx]
            return  # not reached: the rows never end
        from torch.utils.data import DataLoader

        loader = DataLoader(
            guarded_dataset(self.dataset),
            batch_sampler=rows,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            prefetch_factor=(self.prefetch or 4) if self.num_workers > 0 else None,
            collate_fn=_GuardedCollate(self.collate_fn),
        )
        non_blocking = self.device.type == "cuda"
        for item in _loaded(loader):
            yield _pair(item, self.device, non_blocking)


class _RandomRows:
    """Endless batch sampler: B distinct examples per row, uniform, rows independent."""

    def __init__(self, n: int, b: int, generator: torch.Generator) -> None:
        self.n, self.b, self.generator = n, b, generator

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            yield torch.randperm(self.n, generator=self.generator)[: self.b].tolist()


def _pair(item: Any, device: torch.device, non_blocking: bool) -> tuple[Any, Any]:
    """A collated batch as ``(inputs, targets)`` on the device, a dict batch as ``(batch,
    None)``; a DataError if it is neither."""
    if isinstance(item, Mapping):
        return to_device(dict(item), device, non_blocking), None
    if not isinstance(item, (list, tuple)) or len(item) != 2:
        raise DataError(
            "data: each example must be an (input, target) pair or a dict of tensors (e.g. "
            "input_ids, attention_mask, labels); got a batch of "
            f"{type(item).__name__}"
            + (f" with {len(item)} elements" if isinstance(item, (list, tuple)) else "")
        )
    return to_device(item[0], device, non_blocking), to_device(item[1], device, non_blocking)


# ----------------------------------------------------------------------------------------------
# The user's code, named when it raises (docs/reliability.md)
# ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def user_code(origin: str) -> Iterator[None]:
    """Run the user's code (the model, the loss, the backward pass through them): any exception
    it raises becomes a :class:`~bscrit.errors.UserCodeError` naming ``origin``, chained to it.
    Library errors, out of memory and Ctrl-C pass unchanged."""
    try:
        yield
    except (BscritError, torch.cuda.OutOfMemoryError):
        raise
    except Exception as e:
        raise UserCodeError(origin, e) from e


class _UserDataFailure(Exception):
    """A dataset item or the collate function raised. Its one argument is ``"origin\tline"``: a
    DataLoader worker hands the main process its type and formatted traceback, not the object."""


def _data_failure(origin: str, e: BaseException) -> _UserDataFailure:
    return _UserDataFailure(f"{origin}\t{first_line(e)}")


class _GuardedDataset:
    """The dataset as the DataLoader sees it: the same items, an exception of ``__getitem__``
    named with the item's index."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: Any) -> Any:
        try:
            return self.dataset[index]
        except Exception as e:
            raise _data_failure(f"dataset item {index}", e) from e


class _GuardedBatchedDataset(_GuardedDataset):
    """The same for a dataset with a batched fetch (``__getitems__``: Hugging Face datasets, a
    Subset): a failing fetch is retried item by item to name the item that fails."""

    def __getitems__(self, indices: list[Any]) -> Any:
        try:
            return self.dataset.__getitems__(indices)
        except Exception as e:
            for i in indices:  # the item that fails alone, with its own message and index
                self.__getitem__(i)
            raise _data_failure("the dataset's __getitems__", e) from e


def guarded_dataset(dataset: Any) -> Any:
    """``dataset`` for a DataLoader with a batch sampler, its items' exceptions named (an
    iterable-style dataset is handed as it is)."""
    from torch.utils.data import IterableDataset

    if isinstance(dataset, IterableDataset):
        return dataset
    if callable(getattr(dataset, "__getitems__", None)):
        return _GuardedBatchedDataset(dataset)
    return _GuardedDataset(dataset)


class _GuardedCollate:
    """The collate function (torch's ``default_collate`` when none is given), its exceptions
    named."""

    def __init__(self, fn: Any) -> None:
        from torch.utils.data import default_collate

        self.fn = fn if fn is not None else default_collate
        self.origin = "the collate function" + (" (torch's default_collate)" if fn is None else "")

    def __call__(self, batch: list[Any]) -> Any:
        try:
            return self.fn(batch)
        except Exception as e:
            raise _data_failure(self.origin, e) from e


#: The last line of a worker's formatted traceback: ``...._UserDataFailure: origin\tline``.
_WORKER_LINE = re.compile(r"_UserDataFailure: ([^\n]*)\s*$")


def _loaded(loader: Any) -> Iterator[Any]:
    """The loader's batches; an exception while loading one becomes a
    :class:`~bscrit.errors.UserCodeError` of stage ``"data"`` naming the dataset item or the
    collate function (in this process or a worker), else the DataLoader."""
    it = iter(loader)
    while True:
        try:
            item = next(it)
        except StopIteration:
            return
        except (BscritError, torch.cuda.OutOfMemoryError):
            raise
        except _UserDataFailure as e:
            text = str(e)
            match = _WORKER_LINE.search(text)  # from a worker: its whole traceback as text
            origin, _, line = (match.group(1) if match else text).partition("\t")
            raise UserCodeError(origin, e, "data", line) from e
        except Exception as e:
            raise UserCodeError("the DataLoader", e, "data") from e
        yield item


def forward(model: nn.Module, x: Any) -> Any:
    if isinstance(x, (list, tuple)):
        return model(*x)
    if isinstance(x, dict):
        return model(**x)
    return model(x)
