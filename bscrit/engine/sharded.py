"""Sharded measurement (``bscrit measure --shard fsdp``): the model sharded over the ranks by
PyTorch's FSDP2 (``torch.distributed.fsdp.fully_shard``), for models that do not fit one device.

- **Sharding.** On an explicit device mesh of the W ranks (``init_device_mesh("cpu", (W,))`` on
  CPU, so that FSDP2 never moves a CPU run to a GPU it finds, pytorch issue 132471; ``cuda``
  when the ranks run on GPUs): every module whose class is named in the spec's
  ``measure.shard_blocks`` (else in the model's own ``_no_split_modules``, as Hugging Face
  models declare their blocks) is a unit of its own, then the root (embeddings, head, norms).
- **Reduction.** FSDP2 is told to sum (``set_gradient_divide_factor(1.0)`` and sum-only
  collectives); the chunk weights make the sum the mean gradient
  (:mod:`bscrit.engine.sharded_loop`).
- **Every rank takes part in every batch** (B/W examples each), so the rows are not dealt out
  and the progress counts batches, as in one process.
- One process without torchrun is a world of one (a process group over an in-memory store).

What is refused, with a message, before any work: B not divisible by W (or a micro-batch that
does not divide B/W), the per-example estimator, ``--sample-steps`` (continued training),
``--target-rel-error``, ``--compile``, ``--precision bf16-weights``, a model the factory returns
already sharded, and torch older than 2.6 (no public ``fully_shard``).
"""

from __future__ import annotations

import functools
import re
from typing import Any

import torch
from torch import Tensor, nn

from bscrit.engine.data import BatchPlan
from bscrit.engine.distributed import DistContext, unwrap_model
from bscrit.engine.hot_loop import LoopHooks
from bscrit.errors import UsageError

#: ``--shard`` values.
SHARD_KINDS = ("fsdp",)
#: ``fully_shard`` is public from this torch version.
MIN_TORCH = (2, 6)


def require_fully_shard(version: str | None = None) -> None:
    """Refuse ``--shard fsdp`` on a torch without the public FSDP2 API.

    Raises:
        UsageError: torch older than 2.6, or ``fully_shard`` cannot be imported.
    """
    version = version or torch.__version__
    parts = tuple(int(x) for x in re.findall(r"\d+", version)[:2])
    problem = None
    if parts < MIN_TORCH:
        problem = f"installed: {version}"
    else:
        try:
            from torch.distributed.device_mesh import init_device_mesh  # noqa: F401
            from torch.distributed.fsdp import FSDPModule, fully_shard  # noqa: F401
        except ImportError as e:
            problem = f"torch {version} cannot import it: {e}"
    if problem is not None:
        raise UsageError(
            f"{{shard}} fsdp needs torch >= {'.'.join(map(str, MIN_TORCH))}, where FSDP2's "
            f"fully_shard is public ({problem}): pip install -U 'torch>=2.6', or measure "
            "without {shard}",
            shard="shard",
        )


def check_shard_plan(
    *,
    world: int,
    batch_size: int,
    micro: int | None,
    estimator: str = "batch",
    sampling: bool = False,
    adaptive: bool = False,
    compile: bool = False,
    precision: str | None = None,
) -> None:
    """Everything ``--shard fsdp`` cannot do, refused before any work (every problem at once).

    Raises:
        UsageError: naming each option that does not go with ``--shard``.
    """
    problems = []
    if batch_size % world:
        problems.append(
            f"the batch size B = {batch_size} is not divisible by the {world} ranks: each rank "
            f"computes B/W examples of every batch (use a B that is a multiple of {world}, or "
            "another number of processes)"
        )
    elif micro is not None and micro < batch_size // world and (batch_size // world) % micro:
        problems.append(
            f"micro_batch_size {micro} does not divide the {batch_size // world} examples each "
            f"of the {world} ranks computes per batch"
        )
    refused = {
        "{estimator} per-example (per-example norms of a sharded gradient are not summed "
        "across ranks)": estimator == "per-example",
        "--sample-steps/--samples (continued training runs in one process)": sampling,
        "--target-rel-error (adaptive runs are not sharded yet)": adaptive,
        "--compile": compile,
        "--precision bf16-weights (measure in fp32 or bf16-autocast)": precision
        == "bf16-weights",
    }  # fmt: skip
    problems += [f"{what} does not work with {{shard}}" for what, bad in refused.items() if bad]
    if problems:
        raise UsageError(
            "{shard} fsdp: " + "; ".join(problems), shard="shard", estimator="estimator"
        )


def shard_model(
    model: nn.Module, mesh: Any, blocks: tuple[str, ...] | None
) -> tuple[nn.Module, list[str]]:
    """``fully_shard`` each block (class names ``blocks``, else the model's own
    ``_no_split_modules``), then the root, on ``mesh``; FSDP2 told to sum the gradients.

    Returns:
        The model (sharded in place) and the names of the modules sharded on their own.

    Raises:
        UsageError: a class of ``blocks`` (the spec's ``measure.shard_blocks``) that no module
            of the model has.
    """
    from torch.distributed.fsdp import FSDPModule, fully_shard

    names = tuple(blocks or ())
    if names:
        have = {type(m).__name__ for m in model.modules()}
        unknown = [n for n in names if n not in have]
        if unknown:
            shown = ", ".join(sorted(have)[:12])
            raise UsageError(
                f"measure.shard_blocks: no module of class {', '.join(unknown)} in the model "
                f"(its module classes: {shown})"
            )
    else:
        names = tuple(
            n for n in getattr(model, "_no_split_modules", None) or () if isinstance(n, str)
        )
    wrapped = [
        (name, m)
        for name, m in model.named_modules()
        if m is not model and type(m).__name__ in names
    ]
    for _, m in reversed(wrapped):  # inner blocks before the blocks that hold them
        fully_shard(m, mesh=mesh)
    fully_shard(model, mesh=mesh)
    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.set_gradient_divide_factor(1.0)  # a sum: the chunk weights make it the mean
            m.set_force_sum_reduction_for_comms(True)  # no AVG/PREMUL_SUM reduce op (gloo)
    return model, [name for name, _ in wrapped]


class ShardedContext(DistContext):
    """One rank of a sharded measurement (module docstring): every rank computes its B/W
    examples of every batch; the loop is :class:`~bscrit.engine.sharded_loop.ShardedLoop`.

    Attributes (besides :class:`~bscrit.engine.distributed.DistContext`'s):
        blocks: the spec's ``measure.shard_blocks`` (None: the model's ``_no_split_modules``).
        wrapped: the modules sharded on their own at the last :meth:`prepare_model`.
    """

    sharded = True

    def __init__(self, *args: Any, blocks: tuple[str, ...] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        from bscrit.engine.sharded_loop import ShardedLoop

        self.blocks = blocks
        self.wrapped: list[str] = []
        self._mesh: Any = None
        self.hooks = LoopHooks(loop=functools.partial(ShardedLoop, ctx=self))

    @property
    def mesh(self) -> Any:
        """The 1-D device mesh of all ranks, on this rank's kind of device (made once)."""
        if self._mesh is None:
            from torch.distributed.device_mesh import init_device_mesh

            self._mesh = init_device_mesh(self.device.type, (self.world_size,))
        return self._mesh

    def measure_kwargs(self, n: int, batch_size: int, k: int, seed: int) -> dict[str, Any]:
        """The rows one process draws (every rank computes every batch), the model seed per
        rank (two ranks' chunks never share a dropout mask), the sharded loop."""
        rows = BatchPlan(n, batch_size, k, seed) if 0 < batch_size <= n else None
        return {"seed": self.rank_seed(seed), "batch_rows": rows, "hooks": self.hooks}

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """The factory's plain model (DDP unwrapped), sharded over the mesh."""
        model, self.wrapped = shard_model(unwrap_model(model), self.mesh, self.blocks)
        return model

    def load_model(self, spec: Any, path: Any, *, unsafe: bool = False) -> tuple[nn.Module, Any]:
        """The sharded model at checkpoint ``path``, each rank holding its shards: a DCP folder
        is read into them (:mod:`bscrit.load.dcp_sharded`: weights and optimizer state), other
        weights copied in by rows (:mod:`bscrit.load.sharded_weights`: safetensors read by rows,
        a ``torch.save`` file memory-mapped; its weights and optimizer state cut to the shards)."""
        from bscrit.load.checkpoint_file import is_dcp_folder

        if is_dcp_folder(path):
            from bscrit.load.dcp_sharded import load_sharded

            return load_sharded(spec, path, self.prepare_model)
        if unsafe:  # a pickled model may need the spec's folder on sys.path: the usual loader
            model, ckpt = super().load_model(spec, path, unsafe=unsafe)
            ckpt.state_dict = {}  # the whole weights: each rank keeps its shards only
            return model, ckpt
        from bscrit.load.sharded_weights import load_sharded_weights

        return load_sharded_weights(spec, path, self.prepare_model, unsafe=False)

    def describe(self, batch_size: int) -> dict[str, Any]:
        """The ``extra.distributed`` entry of the measurement JSON."""
        return {
            "world_size": self.world_size,
            "backend": self.backend,
            "shard": "fsdp",
            "sharded_blocks": len(self.wrapped),
            "unit_of_sampling": f"batch of B = {batch_size} examples, "
            f"{batch_size // self.world_size} on each rank",
            "assignment": "every rank computes its B/W examples of every batch (the chunks of "
            "one process with micro_batch_size B/W); the gradient is reduce-scattered (summed) "
            "and each rank keeps the group sums of its shard",
            "model_seed": "seed + rank * 1000003 (dropout/augmentation per rank)",
        }

    def all_sum(self, tensors: list[Tensor], what: str = "summing the sums of the shards") -> None:
        """In-place sum over the ranks, a lost rank reported as such."""
        super().all_sum(tensors, what)

    def reduce_scalars(self, tensors: list[Tensor]) -> None:
        """The status exchange (a failed rank stops every rank), then :meth:`all_sum`."""
        self.exchange()
        self.all_sum(tensors)
