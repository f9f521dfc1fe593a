"""The ``per-example`` estimator: T₁ and N^B from per-example gradient norms of the same backward.

The ``batch`` estimator (docs/theory.md §2) sees one gradient per batch, so N̂ has k − 1 degrees of
freedom. Inside every batch there are B per-example gradients whose spread measures the same
noise: this module reads their squared norms out of the backward pass the hot loop does anyway
(the Goodfellow trick: forward hooks keep each layer's input a, a hook on its output receives the
backpropagated signal δ), and turns them into an unbiased estimate of the per-example trace T₁
and hence of N^B for *any* batch size ([SDBD21] eq. 22; docs/theory.md §1).

**The estimator.** Batch b holds B distinct examples drawn uniformly without replacement from the
n examples; ḡ_b = ∇L_γ = (1/B) Σᵢ ∇ℓᵢ is the batch gradient the hot loop already has. With
``s²_b = (1/(B−1)) Σᵢ ‖∇ℓᵢ − ḡ_b‖²`` (the sample covariance trace of the batch), the textbook
result for simple random sampling without replacement — applied coordinate-wise and summed —
is ``E[s²_b] = S² = (1/(n−1)) Σᵢ ‖∇ℓᵢ − ∇L‖² = n/(n−1) · T₁``. Hence::

    T̂₁ = (n − 1)/n · (1/k) Σ_b s²_b                                unbiased for T₁
    N̂^B = T̂₁ · (n − B) / (B (n − 1)) = (n − B)/(n B) · mean_b s²_b  unbiased for N^B
    Ĝ   = ‖S/k‖² − N̂^B / k                                          unbiased for G

(derivation: ``Σᵢ ‖vᵢ − v̄‖² = Σᵢ ‖vᵢ − μ‖² − B‖v̄ − μ‖²``; the first term has expectation
``B·T₁``, the second ``B·Var(v̄) = B·T₁(n − B)/(B(n − 1))``; so
``E Σᵢ‖vᵢ − v̄‖² = T₁ (B − (n − B)/(n − 1)) = T₁ (B − 1) n/(n − 1)``.) The same formula for N^B
holds for any B' in place of B, which is what "N^B for any B" means. Ĝ is unbiased because
``E‖S/k‖² = G + N^B/k`` for independent batches and N̂^B is unbiased.

**The mean-vs-sum trap.** The loss is the batch *mean*, so the signal reaching a layer for
example i is δᵢ/B and the hooks see the per-example pieces ``cᵢ = ∇ℓᵢ / B`` of ḡ. With
``Cᵦ = Σᵢ ‖cᵢ‖²``: ``Σᵢ ‖∇ℓᵢ − ḡ‖² = B² Cᵦ − B ‖ḡ‖²``. ‖ḡ‖² per batch is already in Q_j, so
per group j only the scalar ``C_j = Σ_{b∈j} C_b`` (per tensor) is new, and
``U_j = B² C_j − B Q_j`` is linear in the sums: the delete-one-group jackknife of T₁, N and G is
exact and cheap, with the same groups as the batch estimator.

**What it needs.** Per-example gradients only exist when the examples do not interact: BatchNorm
in train mode (batch statistics) couples them, so it is refused, as is any trainable parameter of
a module the hooks cannot read (supported: Linear, Conv1d, Conv2d, LayerNorm, GroupNorm and
BatchNorm in eval mode with running statistics), a module called twice in one forward pass
(weight sharing) and ``torch.compile``. Modules without parameters that mix examples (e.g.
attention across the batch dimension) cannot be detected: the estimator assumes they do not.
Also refused: B = 1 (no within-batch spread).

Per-example norms per layer: Linear on 2-D input ``‖aᵢ‖²‖δᵢ‖²``; for inputs with extra
dimensions (sequences) and for convolutions (via ``unfold``) the per-example gradient is
``Dᵢ Uᵢᵀ`` and its squared norm is computed directly or by the Gram trick
``Σ_{l,l'} (DᵢᵀDᵢ)_{ll'} (UᵢᵀUᵢ)_{ll'}``, whichever costs fewer operations, in chunks of examples
so that the transient buffer stays small. For Conv2d the direct product is one grouped
weight-gradient convolution with the examples as groups (no im2col).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from bscrit.engine.hot_loop import LoopHooks
from bscrit.engine.loop import (
    LoopSettings,
    RawMeasurement,
    measure_model,
    trainable_parameters,
)
from bscrit.engine.precision import place_model
from bscrit.errors import ExitCode, MeasurementError, UsageError
from bscrit.stats.estimators import GroupSums, PerExampleRaw, per_example_stats

if TYPE_CHECKING:
    from bscrit.engine.adaptive import AdaptiveState

#: Elements of the transient per-example buffer in the norm computations (64 MiB of float32).
CHUNK_ELEMENTS = 1 << 24

_NORMS = (nn.LayerNorm, nn.GroupNorm)
_CONVS = (nn.Conv1d, nn.Conv2d)
SUPPORTED = "Linear, Conv1d, Conv2d, LayerNorm, GroupNorm, BatchNorm (eval mode)"


# ----------------------------------------------------------------------------------------------
# Model check
# ----------------------------------------------------------------------------------------------


def _refuse(message: str) -> MeasurementError:
    """A model this estimator cannot handle: the option does not fit the model (exit 2).

    ``{estimator}`` and ``{mode}`` in ``message`` are option placeholders (see BscritError).
    """
    return MeasurementError(message, exit_code=ExitCode.USAGE, estimator="estimator", mode="mode")


def check_model(model: nn.Module, mode: str) -> None:
    """Refuse models whose per-example gradients this estimator cannot read (see module doc).

    Args:
        model: the network.
        mode: the measurement mode, "train" or "eval" (the flag every module will have).

    Raises:
        MeasurementError: naming the module and the reason (exit code 2: a usage error).
    """
    from torch.nn.modules.batchnorm import _BatchNorm

    bad: list[str] = []
    owners: dict[int, str] = {}
    for name, mod in model.named_modules():
        own = [p for p in mod.parameters(recurse=False) if p.requires_grad]
        if isinstance(mod, _BatchNorm):
            if mode == "train":
                raise _refuse(
                    f"{{estimator}} per-example: '{name}' is a {type(mod).__name__} in train mode; "
                    "per-example gradients are not defined when examples interact through the "
                    "batch statistics. Use {estimator} batch (valid with train-mode BatchNorm), "
                    "or {mode} eval"
                )
            if mod.running_mean is None or mod.running_var is None:
                raise _refuse(
                    f"{{estimator}} per-example: '{name}' is a {type(mod).__name__} without "
                    "running statistics (track_running_stats=False): it uses batch statistics "
                    "even in eval mode; use {estimator} batch"
                )
        if not own:
            continue
        if not isinstance(mod, (nn.Linear, *_CONVS, *_NORMS, _BatchNorm)):
            bad.append(f"'{name or '<root>'}' ({type(mod).__name__})")
        for p in own:
            if id(p) in owners:
                raise _refuse(
                    f"{{estimator}} per-example: a parameter is shared by '{owners[id(p)]}' and "
                    f"'{name}' (weight tying); per-example norms cannot be split across modules. "
                    "Use {estimator} batch"
                )
            owners[id(p)] = name
    if bad:
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise _refuse(
            "{estimator} per-example: trainable parameters in modules without per-example "
            f"support: {', '.join(bad[:5])}{more}. Supported: {SUPPORTED}. "
            "Use {estimator} batch (or freeze those parameters)"
        )


# ----------------------------------------------------------------------------------------------
# Per-example squared norms of one layer
# ----------------------------------------------------------------------------------------------


def _outer_sq_norms(d: Tensor, u: Tensor) -> Tensor:
    """‖Dᵢ Uᵢᵀ‖²_F for each i: ``d`` (N, O, L), ``u`` (N, I, L) → (N,).

    Direct product (N·O·I·L operations, O·I memory per example) or the Gram trick
    Σ (DᵀD ⊙ UᵀU) (N·L²·(O + I) operations, L² memory), whichever is cheaper; chunked over N.
    """
    n, o, ll = d.shape
    i = u.shape[1]
    gram = ll * (o + i) < o * i
    per = ll * ll if gram else o * i
    chunk = max(1, CHUNK_ELEMENTS // max(per, 1))
    out = []
    for s in range(0, n, chunk):
        dc, uc = d[s : s + chunk], u[s : s + chunk]
        if gram:
            dd = torch.bmm(dc.transpose(1, 2), dc)
            uu = torch.bmm(uc.transpose(1, 2), uc)
            out.append((dd * uu).sum((1, 2)))
        else:
            out.append(torch.bmm(dc, uc.transpose(1, 2)).pow(2).sum((1, 2)))
    return torch.cat(out)


def _sum_sq(x: Tensor) -> Tensor:
    """Σ over all dimensions but the first of x² → (N,)."""
    return x.reshape(x.shape[0], -1).pow(2).sum(1)


def _conv_unfold(mod: nn.Module, a: Tensor) -> Tensor:
    """Input patches of a Conv1d/Conv2d as (N, C_in·∏kernel, L), padding mode included."""
    two_d = isinstance(mod, nn.Conv2d)
    nd = 2 if two_d else 1
    if a.dim() != nd + 2:
        raise MeasurementError(
            f"{{estimator}} per-example: {type(mod).__name__} got an input of shape "
            f"{tuple(a.shape)}; expected a batch of {nd}-D feature maps",
            estimator="estimator",
        )
    padding: Any = mod.padding
    if isinstance(mod.padding, str) or mod.padding_mode != "zeros":
        pad_mode = "constant" if mod.padding_mode == "zeros" else mod.padding_mode
        a = F.pad(a, mod._reversed_padding_repeated_twice, mode=pad_mode)
        padding = (0,) * nd
    if two_d:
        return F.unfold(a, mod.kernel_size, mod.dilation, padding, mod.stride)
    return F.unfold(
        a.unsqueeze(2),
        (1, mod.kernel_size[0]),
        (1, mod.dilation[0]),
        (0, padding[0]),
        (1, mod.stride[0]),
    )


def _gram_cheaper(mod: nn.Conv2d, g: Tensor) -> bool:
    """Whether the Gram trick beats the per-example weight gradient for this convolution."""
    ll = g[0, 0].numel()  # output positions L
    o = mod.out_channels // mod.groups
    i = mod.weight[0].numel()  # C_in/groups · kh · kw
    return ll * (o + i) < o * i


def _conv2d_grouped_sq_norms(mod: nn.Conv2d, a: Tensor, g: Tensor) -> Tensor:
    """‖∇_W‖² per example from one grouped weight-gradient convolution (batch as groups).

    The N examples become N × groups convolution groups of a single "image", so the backend's
    weight-gradient kernel returns the N per-example gradients without im2col; chunked over N.
    """
    padding: Any = list(mod.padding) if not isinstance(mod.padding, str) else [0, 0]
    if isinstance(mod.padding, str) or mod.padding_mode != "zeros":
        pad_mode = "constant" if mod.padding_mode == "zeros" else mod.padding_mode
        a = F.pad(a, mod._reversed_padding_repeated_twice, mode=pad_mode)
        padding = [0, 0]
    if a.dim() != 4:
        raise MeasurementError(
            f"{{estimator}} per-example: Conv2d got an input of shape {tuple(a.shape)}; expected "
            "a batch of 2-D feature maps",
            estimator="estimator",
        )
    n, groups = a.shape[0], mod.groups
    wshape = mod.weight.shape
    chunk = max(1, CHUNK_ELEMENTS // mod.weight.numel())
    out = []
    for s in range(0, n, chunk):
        ac, gc = a[s : s + chunk], g[s : s + chunk]
        c = ac.shape[0]
        weight = ac.new_empty((c * wshape[0], *wshape[1:]))  # only its shape is read
        gw = torch.ops.aten.convolution_backward(
            gc.reshape(1, c * gc.shape[1], *gc.shape[2:]),
            ac.reshape(1, c * ac.shape[1], *ac.shape[2:]),
            weight,
            None,
            list(mod.stride),
            padding,
            list(mod.dilation),
            False,
            [0, 0],
            c * groups,
            [False, True, False],
        )[1]
        out.append(gw.reshape(c, -1).pow(2).sum(1))
    return torch.cat(out)


def layer_sq_norms(mod: nn.Module, a: Tensor, g: Tensor) -> tuple[Tensor | None, Tensor | None]:
    """Per-example squared norms of the gradients of ``mod.weight`` and ``mod.bias``.

    Args:
        mod: a supported module.
        a: its input (N, ...), detached.
        g: the gradient of the loss w.r.t. its output (N, ...).

    Returns:
        ``(weight, bias)``: (N,) float32 tensors, None where the module has no such parameter.
        They are the squared norms of the per-example *pieces* of the gradient of whatever
        scalar was differentiated (for a mean loss: ∇ℓᵢ / B).
    """
    from torch.nn.modules.batchnorm import _BatchNorm

    a = a.float()
    g = g.float()
    n = g.shape[0]
    w_sq = b_sq = None
    has_b = getattr(mod, "bias", None) is not None
    if isinstance(mod, nn.Linear):
        if a.dim() == 2:
            if mod.weight is not None:
                w_sq = _sum_sq(a) * _sum_sq(g)
            if has_b:
                b_sq = _sum_sq(g)
        else:
            a3 = a.reshape(n, -1, a.shape[-1])
            g3 = g.reshape(n, -1, g.shape[-1])
            w_sq = _outer_sq_norms(g3.transpose(1, 2), a3.transpose(1, 2))
            if has_b:
                b_sq = _sum_sq(g3.sum(1))
    elif isinstance(mod, nn.Conv2d) and not _gram_cheaper(mod, g):
        w_sq = _conv2d_grouped_sq_norms(mod, a, g)
        if has_b:
            b_sq = _sum_sq(g.sum((2, 3)))
    elif isinstance(mod, _CONVS):
        u = _conv_unfold(mod, a)  # (N, C_in·k, L)
        groups = mod.groups
        d = g.reshape(n, g.shape[1], -1)  # (N, C_out, L)
        if groups == 1:
            w_sq = _outer_sq_norms(d, u)
        else:
            ll = d.shape[-1]
            dg = d.reshape(n * groups, -1, ll)
            ug = u.reshape(n, groups, -1, ll).reshape(n * groups, -1, ll)
            w_sq = _outer_sq_norms(dg, ug).reshape(n, groups).sum(1)
        if has_b:
            b_sq = _sum_sq(d.sum(2))
    elif isinstance(mod, (*_NORMS, _BatchNorm)):
        if isinstance(mod, nn.LayerNorm):
            xhat = F.layer_norm(a, mod.normalized_shape, None, None, mod.eps)
            lead = tuple(range(1, a.dim() - len(mod.normalized_shape)))
        else:
            if isinstance(mod, nn.GroupNorm):
                xhat = F.group_norm(a, mod.num_groups, None, None, mod.eps)
            else:
                shape = (1, -1) + (1,) * (a.dim() - 2)
                mean = mod.running_mean.float().reshape(shape)
                var = mod.running_var.float().reshape(shape)
                xhat = (a - mean) * torch.rsqrt(var + mod.eps)
            lead = tuple(range(2, a.dim()))
        gw = g * xhat
        if mod.weight is not None:
            w_sq = _sum_sq(gw.sum(lead) if lead else gw)
        if has_b:
            b_sq = _sum_sq(g.sum(lead) if lead else g)
    else:  # pragma: no cover - check_model refuses these
        raise MeasurementError(
            f"{{estimator}} per-example: no per-example rule for {type(mod)}", estimator="estimator"
        )
    return w_sq, b_sq


# ----------------------------------------------------------------------------------------------
# The collector: hooks on the model, one float64 scalar per tensor per group
# ----------------------------------------------------------------------------------------------


class PerExampleNorms:
    """Hooks that add up Σᵢ ‖cᵢ‖² per trainable tensor, per group, during the hot loop.

    Group boundaries come from :attr:`bscrit.engine.loop.LoopHooks.local_rows`, which the hot loop
    calls at the start of every block of group j: :meth:`hooks` wraps an existing ``local_rows``
    (the distributed path) and, when a ``reduce`` hook is present, reduces each block's sums too.
    Everything stays on the device until :meth:`group_sums` (no synchronisation in the loop).
    """

    def __init__(self, model: nn.Module, params: Sequence[nn.Parameter], device: torch.device):
        self.model = model
        self.index = {id(p): i for i, p in enumerate(params)}
        self.device = torch.device(device)
        self.acc = torch.zeros(len(params), dtype=torch.float64, device=self.device)
        self.groups: list[Tensor] = []
        self.open: int | None = None  # the group of the block in progress
        self._reduce: Callable[[list[Tensor]], None] | None = None
        self._calls: dict[int, int] = {}
        self._handles: list[Any] = []

    # -- hooks on the model -------------------------------------------------------------------

    def install(self) -> PerExampleNorms:
        from torch.nn.modules.batchnorm import _BatchNorm

        self._handles.append(self.model.register_forward_pre_hook(self._reset_calls))
        for mod in self.model.modules():
            own = [p for p in mod.parameters(recurse=False) if p.requires_grad]
            if own and isinstance(mod, (nn.Linear, *_CONVS, *_NORMS, _BatchNorm)):
                self._handles.append(mod.register_forward_hook(self._forward_hook))
        return self

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _reset_calls(self, module: nn.Module, args: Any) -> None:
        self._calls.clear()

    def _forward_hook(self, mod: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        if not torch.is_grad_enabled() or not isinstance(output, Tensor):
            return
        if not output.requires_grad:
            return
        key = id(mod)
        if self._calls.get(key, 0) > 0:
            raise MeasurementError(
                f"{{estimator}} per-example: a {type(mod).__name__} module is called more than "
                "once in one forward pass (shared weights or recurrence); its per-example norms "
                "cannot be read. Use {estimator} batch",
                estimator="estimator",
            )
        self._calls[key] = 1
        a = inputs[0].detach()
        output.register_hook(lambda g: self._backward(mod, a, g))

    def _backward(self, mod: nn.Module, a: Tensor, g: Tensor) -> None:
        with torch.no_grad():
            w_sq, b_sq = layer_sq_norms(mod, a, g)
            for p, sq in ((getattr(mod, "weight", None), w_sq), (getattr(mod, "bias", None), b_sq)):
                if p is None or sq is None or id(p) not in self.index:
                    continue
                i = self.index[id(p)]
                self.acc[i] += sq.sum(dtype=torch.float64)

    # -- group boundaries ---------------------------------------------------------------------

    def hooks(self, base: LoopHooks | None = None) -> LoopHooks:
        """LoopHooks for :func:`bscrit.engine.loop.measure_model` (``base``: hooks to compose
        with)."""

        base = base or LoopHooks()
        inner = base.local_rows
        self._reduce = base.reduce

        def local_rows(j: int, rows: Tensor) -> Tensor:
            self.close_group()
            self.open = j
            return inner(j, rows) if inner is not None else rows

        return replace(base, local_rows=local_rows)

    def close_group(self) -> None:
        """Add the open block's sums to its group (idempotent; called at block starts and at
        the end)."""
        if self.open is None:
            return
        if self._reduce is not None:
            self._reduce([self.acc])
        if self.open == len(self.groups):
            self.groups.append(self.acc.clone())
        else:
            self.groups[self.open] += self.acc
        self.acc.zero_()
        self.open = None

    def group_sums(self) -> list[list[float]]:
        """``C[j][t]`` = Σ over the batches of group j of Σᵢ ‖cᵢ‖² for tensor t (host floats)."""
        self.close_group()
        if not self.groups:
            return []
        return torch.stack(self.groups).cpu().tolist()


# ----------------------------------------------------------------------------------------------
# Measuring
# ----------------------------------------------------------------------------------------------


def measure_per_example(
    model: nn.Module,
    dataset: Any,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    settings: LoopSettings | None = None,
    *,
    hooks: LoopHooks | None = None,
    adaptive: AdaptiveState | None = None,
    **kwargs: Any,
) -> tuple[RawMeasurement, PerExampleRaw]:
    """:func:`bscrit.engine.loop.measure_model` with the per-example collector installed.

    Same arguments as ``measure_model`` (``compile`` is refused). Hooks are removed afterwards;
    the model is otherwise untouched, as in the batch estimator. ``adaptive`` (an
    :class:`bscrit.engine.adaptive.AdaptiveState` whose hooks are in ``hooks``) is switched to the
    per-example NSR, so the stopping rule judges the estimate that is reported.

    Returns:
        ``(RawMeasurement, PerExampleRaw)``.
    """
    fields = {k: kwargs.pop(k) for k in list(kwargs) if k in LoopSettings.__dataclass_fields__}
    s = replace(settings, **fields) if settings is not None else LoopSettings(**fields)
    if s.compile:
        raise UsageError(
            "{compile} cannot be combined with the per-example estimator (its hooks need eager "
            "mode)",
            compile="compile",
        )
    if s.batch_size < 2:
        raise UsageError("the per-example estimator needs a batch size B >= 2")
    device = torch.device(s.device)
    check_model(model, s.mode)
    model = place_model(model, device, s.weights)  # before the hooks go on (deep copies)
    params = [p for _, p in trainable_parameters(model)]
    collector = PerExampleNorms(model, params, device).install()
    n = len(dataset)

    def nsr_of(sums: GroupSums) -> tuple[float, tuple[float, float]]:
        c = [sum(row) for row in collector.group_sums()]
        ps = per_example_stats(sums, c, n, s.batch_size).noise
        return ps.nsr, ps.nsr_ci95

    if adaptive is not None:
        adaptive.nsr_of = nsr_of
    try:
        settings = replace(s, device=device)
        raw = measure_model(
            model, dataset, loss_fn, settings, hooks=collector.hooks(hooks), **kwargs
        )
        c = collector.group_sums()
    finally:
        collector.remove()
    if len(c) != raw.groups:
        raise MeasurementError(f"per-example sums of {len(c)} groups for {raw.groups} groups")
    return raw, PerExampleRaw(c)
