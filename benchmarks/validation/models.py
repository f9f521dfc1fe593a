"""MLPs for the validation study: scale-invariant (default) or ordinary (``affine=True``).

Scale-invariant variant ([LMA21] §5, Lemma E.7; Li et al. 2020 App. C)::

    Linear(d, w, bias=False) → BN(w) → ReLU → Linear(w, w, bias=False) → BN(w) → ReLU
        → Linear(w, C, bias=False, FIXED) → BN(C)          (all BN with affine=False)

Every trainable weight feeds a BatchNorm, so ``L_γ(cW) = L_γ(W)`` for c > 0 and
``⟨W, ∇_W L_γ⟩ = 0``; the last layer is a fixed seeded scaled-orthogonal projection and the final
BatchNorm fixes the logit scale, so SGD + weight decay reaches an equilibrium of ‖x‖² ([LMA21]
eq. 11). The ordinary variant has biases, affine BatchNorm and a trainable last layer with bias
(no BatchNorm on the logits): its hidden weights are still scale-invariant, the rest is not.
Same architecture as ``examples/digits/model.py``.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["make_mlp", "make_mnist1d_model", "make_digits_model", "make_model_for"]


def _fixed_projection(out_features: int, in_features: int, gen: torch.Generator) -> torch.Tensor:
    """A ``(out, in)`` matrix with orthonormal rows (or columns) times ``sqrt(in / out)``."""
    a = torch.randn(max(out_features, in_features), min(out_features, in_features), generator=gen)
    q, r = torch.linalg.qr(a)
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)
    w = q if out_features >= in_features else q.T
    return w.contiguous() * (in_features / out_features) ** 0.5


def make_mlp(
    in_features: int,
    width: int = 128,
    num_classes: int = 10,
    affine: bool = False,
    seed: int = 0,
    depth: int = 2,
) -> nn.Sequential:
    """``depth`` hidden Linear→BN→ReLU blocks and a head (see the module docstring).

    The initialisation (and the fixed head) is seeded by ``seed``; the global RNG is untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layers: list[nn.Module] = []
        d = in_features
        for _ in range(depth):
            layers += [nn.Linear(d, width, bias=affine), nn.BatchNorm1d(width, affine=affine)]
            layers.append(nn.ReLU())
            d = width
        head = nn.Linear(d, num_classes, bias=affine)
        if affine:
            layers.append(head)
        else:
            gen = torch.Generator().manual_seed(10_000 + seed)
            with torch.no_grad():
                head.weight.copy_(_fixed_projection(num_classes, d, gen))
            head.weight.requires_grad_(False)
            layers += [head, nn.BatchNorm1d(num_classes, affine=False)]
    return nn.Sequential(*layers)


def make_mnist1d_model(width: int = 128, affine: bool = False, seed: int = 0) -> nn.Sequential:
    """MLP for MNIST-1D (40 inputs, 10 classes); spec factory ``models.py:make_mnist1d_model``."""
    return make_mlp(40, width, 10, affine=affine, seed=seed)


def make_digits_model(width: int = 64, affine: bool = False, seed: int = 0) -> nn.Sequential:
    """MLP for digits (64 inputs, 10 classes); spec factory ``models.py:make_digits_model``."""
    return make_mlp(64, width, 10, affine=affine, seed=seed)


def make_model_for(dataset: str, width: int, affine: bool, seed: int) -> nn.Sequential:
    """The model of data set ``dataset`` ("mnist1d" or "digits")."""
    if dataset == "mnist1d":
        return make_mnist1d_model(width, affine, seed)
    if dataset == "digits":
        return make_digits_model(width, affine, seed)
    raise ValueError(f"unknown data set {dataset!r}")
