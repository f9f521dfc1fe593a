"""Which parameters count: the tensors the run's optimizer updates (torch).

The gradient noise that matters is that of the parameters training moves. Two things say which
they are: ``requires_grad`` after the spec's factory built the model and the checkpoint was
loaded, and, when the checkpoint holds an optimizer state, the parameters of its param groups.
They disagree when, say, a run froze its backbone by handing only the head to the optimizer
(``Adam(model.head.parameters())``) while the factory leaves every tensor trainable: measured over
all of them, G and N would describe a run that never happened. The optimizer's set wins, with a
warning that gives the counts.

An optimizer state_dict names its parameters by integer index in the order they were handed to
it, group after group, so its indices must be matched to the model's tensors. bscrit assumes that
each group lists its tensors in the model's order (true for ``model.parameters()``, a submodule's
``.parameters()``, timm's and the HF Trainer's decay / no-decay groups, which filter
``named_parameters()``) and matches by order and by shape (the shapes its ``exp_avg`` /
``momentum_buffer`` / ... tensors reveal):

1. the ``requires_grad`` tensors, when they can hold every group in order (agreement);
2. else one contiguous run of the model's tensors (a head, a block), when exactly one fits;
3. else any placement, when exactly one fits.

A state saved by parameter name (``get_optimizer_state_dict``, a DCP checkpoint; its names kept as
``param_names``) is matched by name instead, when every name is a model parameter's.

Several fits are an error that says so (never a guess); no fit is a warning, and the
``requires_grad`` tensors are measured. :func:`requires_grad_only` makes the selection what the
engine sees (``requires_grad``) for the measurement and restores every flag afterwards.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from bscrit.errors import CheckpointError
from bscrit.optim.state import group_shapes, param_names

Shape = tuple[int, ...]
#: States the matcher may visit before it gives up and calls the match ambiguous.
SEARCH_BUDGET = 2_000_000


@dataclass(frozen=True)
class ParameterSelection:
    """The parameters a measurement covers, and how they were chosen.

    Attributes:
        names: the measured parameters, in the model's order.
        by: ``"requires_grad"``, ``"requires_grad, matching the optimizer state"`` or
            ``"the optimizer state"``.
        state_indices: per measured parameter, its index in the optimizer state (None when the
            indices could not be matched one to one, e.g. no state saved).
        group_params: per param group, its number of scalars (empty without a state match).
        total_tensors: the model's parameter tensors; ``total_params`` their scalars.
        measured_params: the scalars measured.
        warning: the disagreement between ``requires_grad`` and the optimizer, or why the
            optimizer state could not be matched.
    """

    names: tuple[str, ...]
    by: str
    state_indices: tuple[int, ...] | None
    group_params: tuple[int, ...]
    total_tensors: int
    total_params: int
    measured_params: int
    warning: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The measurement JSON's ``extra.parameters``."""
        return {
            "selected_by": self.by,
            "measured": {"tensors": len(self.names), "params": self.measured_params},
            "left_out": {
                "tensors": self.total_tensors - len(self.names),
                "params": self.total_params - self.measured_params,
            },
        }


class _TooMany(Exception):
    pass


def align(
    shapes: Sequence[Shape],
    groups: Sequence[Sequence[Shape | None]],
    positions: Sequence[int],
    cover: bool,
    budget: int = SEARCH_BUDGET,
) -> tuple[int, list[list[int]] | None]:
    """Place each group's tensors, in order, on distinct ``positions`` (model tensor numbers, in
    order) whose shapes match (None matches any shape).

    Returns:
        ``(number of placements capped at 2, one placement: per group its positions)``; with
        ``cover`` every position must be used.

    Raises:
        _TooMany: more than ``budget`` partial placements were visited.
    """
    lens = tuple(len(g) for g in groups)
    total = sum(lens)
    if total > len(positions) or (cover and total != len(positions)):
        return 0, None
    layer: dict[tuple[int, ...], int] = {tuple(0 for _ in lens): 1}
    parents: list[dict[tuple[int, ...], tuple[tuple[int, ...], int]]] = []
    visited = 0
    for step, p in enumerate(positions):
        after = len(positions) - step - 1  # positions left after this one
        nxt: dict[tuple[int, ...], int] = {}
        par: dict[tuple[int, ...], tuple[tuple[int, ...], int]] = {}
        for st, count in layer.items():
            left = total - sum(st)
            moves = [] if cover or left > after else [(st, -1)]
            if left - 1 <= after:
                for k, g in enumerate(groups):
                    i = st[k]
                    if i < lens[k] and (g[i] is None or g[i] == shapes[p]):
                        moves.append((st[:k] + (i + 1,) + st[k + 1 :], k))
            for ns, action in moves:
                nxt[ns] = min(nxt.get(ns, 0) + count, 2)
                par.setdefault(ns, (st, action))
        visited += len(nxt)
        if visited > budget:
            raise _TooMany
        parents.append(par)
        layer = nxt
        if not layer:
            return 0, None
    count = layer.get(lens, 0)
    if not count:
        return 0, None
    placement: list[list[int]] = [[] for _ in lens]
    st = lens
    for step in range(len(positions) - 1, -1, -1):
        st, action = parents[step][st]
        if action >= 0:
            placement[action].append(positions[step])
    return count, [list(reversed(x)) for x in placement]


def _windows(
    shapes: Sequence[Shape], groups: Sequence[Sequence[Shape | None]]
) -> list[tuple[int, int, list[list[int]]]]:
    """The contiguous runs of the model's tensors that hold every group (at most 2)."""
    size = sum(len(g) for g in groups)
    known = Counter(s for g in groups for s in g if s is not None)
    complete = sum(known.values()) == size
    fits = []
    for start in range(len(shapes) - size + 1):
        window = range(start, start + size)
        if complete and Counter(shapes[i] for i in window) != known:
            continue
        count, placement = align(shapes, groups, window, cover=True)
        if count and placement is not None:
            fits.append((start, count, placement))
            if len(fits) > 1:
                break
    return fits


@dataclass(frozen=True)
class _Model:
    """The model's tensors, in order, and the optimizer state's groups."""

    names: list[str]
    shapes: list[Shape]
    numels: list[int]
    trainable: list[int]
    state_groups: list[list[tuple[int, Shape | None]]]

    def selection(
        self, chosen: Sequence[int], by: str, placement: list[list[int]] | None,
        warning: str | None = None,
    ) -> ParameterSelection:  # fmt: skip
        chosen = sorted(chosen)
        state_indices = None
        group_params: tuple[int, ...] = ()
        if placement is not None:
            index_at = {
                p: i for g, ps in zip(self.state_groups, placement) for (i, _), p in zip(g, ps)
            }
            state_indices = tuple(index_at[p] for p in chosen)
            group_params = tuple(sum(self.numels[p] for p in ps) for ps in placement)
        return ParameterSelection(
            names=tuple(self.names[i] for i in chosen),
            by=by,
            state_indices=state_indices,
            group_params=group_params,
            total_tensors=len(self.names),
            total_params=sum(self.numels),
            measured_params=sum(self.numels[i] for i in chosen),
            warning=warning,
        )

    def optimizers(
        self, placement: list[list[int]], one_to_one: bool, where: str
    ) -> ParameterSelection:
        """The optimizer's tensors, with a warning when ``requires_grad`` says otherwise."""
        found = sorted(p for ps in placement for p in ps)
        warning = None
        if found != self.trainable:
            n, num = self.names, self.numels
            shown = ", ".join(n[i] for i in found[:4]) + (", ..." if len(found) > 4 else "")
            warning = (
                f"{where}: its optimizer state updates {len(found)} of the model's {len(n)} "
                f"parameter tensors ({sum(num[i] for i in found):,} of {sum(num):,} "
                f"parameters), but {len(self.trainable)} have requires_grad "
                f"({sum(num[i] for i in self.trainable):,}): measuring the {len(found)} the "
                f"optimizer updates ({shown}); set requires_grad=False on the others in the "
                "model factory to make the two agree"
            )
        return self.selection(found, "the optimizer state", placement if one_to_one else None,
                              warning)  # fmt: skip


def select_parameters(
    model: nn.Module, optimizer_state: Mapping | None, where: str = "the checkpoint"
) -> ParameterSelection:
    """The parameters the run's optimizer updates (module docstring).

    Raises:
        CheckpointError: the optimizer state's tensors fit the model in more than one way.
    """
    named = list(model.named_parameters())
    m = _Model(
        names=[n for n, _ in named],
        shapes=[tuple(p.shape) for _, p in named],
        numels=[p.numel() for _, p in named],
        trainable=[i for i, (_, p) in enumerate(named) if p.requires_grad],
        state_groups=group_shapes(optimizer_state) if optimizer_state is not None else [],
    )
    groups = [[s for _, s in g] for g in m.state_groups]
    size = sum(len(g) for g in groups)
    if size == 0:
        return m.selection(m.trainable, "requires_grad", None)
    by_name = _by_name(m.names, param_names(optimizer_state))
    if by_name is not None:
        if sorted(p for ps in by_name for p in ps) == m.trainable:
            return m.selection(m.trainable, "requires_grad, matching the optimizer state by name",
                               by_name)  # fmt: skip
        return m.optimizers(by_name, True, where)
    try:
        count, placement = align(m.shapes, groups, m.trainable, cover=True)
        if count:
            return m.selection(m.trainable, "requires_grad, matching the optimizer state",
                               placement if count == 1 else None)  # fmt: skip
        fits = _windows(m.shapes, groups)
        if len(fits) == 1:
            return m.optimizers(fits[0][2], fits[0][1] == 1, where)
        if len(fits) > 1:
            a, b = (m.names[f[0]] for f in fits)
            why = f"two runs of the model's tensors fit (from {a} and from {b})"
            raise _ambiguous(where, size, len(named), why)
        count, placement = align(m.shapes, groups, range(len(named)), cover=False)
    except _TooMany:
        raise _ambiguous(where, size, len(named), "too many ways to place them") from None
    if count > 1:
        raise _ambiguous(where, size, len(named), "they fit the model's tensors in several ways")
    if count == 0 or placement is None:
        return m.selection(m.trainable, "requires_grad", None, (
            f"{where}: the optimizer state's {size} tensors cannot be matched to the model's "
            f"{len(named)} parameter tensors by order and shape (an optimizer built over other "
            f"parameters?): measuring the {len(m.trainable)} with requires_grad"))  # fmt: skip
    return m.optimizers(placement, True, where)


def _by_name(names: Sequence[str], saved: list[list[str]] | None) -> list[list[int]] | None:
    """Per group, the model positions of the parameters a by-name optimizer state lists (with a
    ``module.`` / ``model.`` / ``_orig_mod.`` wrapper prefix dropped when that makes them fit);
    None when the names do not all name distinct model parameters."""
    if not saved:
        return None
    pos = {n: i for i, n in enumerate(names)}
    for prefix in ("", "module.", "model.", "_orig_mod."):
        cut = [[n[len(prefix) :] if n.startswith(prefix) else n for n in g] for g in saved]
        flat = [n for g in cut for n in g]
        if all(n in pos for n in flat) and len(set(flat)) == len(flat):
            return [[pos[n] for n in g] for g in cut]
    return None


def _ambiguous(where: str, size: int, total: int, why: str) -> CheckpointError:
    return CheckpointError(
        f"{where}: cannot tell which of the model's {total} parameter tensors its optimizer "
        f"state's {size} are: {why}; set requires_grad=False in the model factory on the "
        "parameters the run did not train, so that requires_grad and the optimizer state agree"
    )


@contextlib.contextmanager
def requires_grad_only(model: nn.Module, names: Sequence[str]) -> Iterator[None]:
    """``requires_grad`` is True exactly for ``names`` inside the block; every flag is restored
    on the way out (the user's model is left as it was)."""
    keep = set(names)
    flags = [(p, p.requires_grad) for _, p in model.named_parameters()]
    try:
        for n, p in model.named_parameters():
            p.requires_grad_(n in keep)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
