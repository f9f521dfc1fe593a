"""A small scale-invariant MLP for scikit-learn's ``load_digits`` (8×8 images, 64 features).

Why it is scale-invariant ([LMA21] §5, Lemma E.7; docs/theory.md §3)
-----------------------------------------------------------------
With ``affine=False`` the network is::

    Linear(64, w, bias=False) → BN(w) → ReLU → Linear(w, w, bias=False) → BN(w) → ReLU
        → Linear(w, 10, bias=False, FIXED) → BN(10)

where every BatchNorm has ``affine=False``. BatchNorm in train mode divides by the batch standard
deviation, so ``BN(c·Wh) = BN(Wh)`` for every ``c > 0``: each trainable weight tensor ``W`` sits
directly in front of a BatchNorm and the batch loss satisfies ``L_γ(cW) = L_γ(W)``. Differentiating
in ``c`` at ``c = 1`` gives Euler's identity ``⟨W, ∇_W L_γ⟩ = 0`` for every batch γ ([LMA21]
Lemma E.7), which is what the equilibrium analysis of [LMA21] §5 (and bscrit's detector) rely on.
The last layer is a fixed, deterministically seeded, scaled-orthogonal projection (``requires_grad
=False``, as in Li et al. 2020, App. C): a trainable last layer would not be scale-invariant. The
final BatchNorm over the 10 logits keeps the logit scale fixed, so the loss cannot be driven to 0
by growing the weights and SGD + weight decay settles into an equilibrium of ``R = ‖x‖²``
([LMA21] eq. 11: ``(2 − ηλ) λ R = η (G + N)``).

``affine=True`` gives an "ordinary" network of the same shape for comparison: biases, affine
BatchNorm (trainable γ, β), a trainable last layer with bias, no BatchNorm on the logits. Its
hidden ``Linear`` weights are still scale-invariant, the BN affine parameters and the last layer
are not, so the theorems cover only part of it.

Evaluation-mode caveat: in ``eval()`` BatchNorm uses running statistics, so the scale invariance
holds exactly only in train mode (the mode in which gradients are measured).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["make_model", "scale_invariant_names"]


def _fixed_projection(out_features: int, in_features: int, gen: torch.Generator) -> torch.Tensor:
    """A ``(out, in)`` matrix with orthonormal rows times ``sqrt(in / out)`` (seeded)."""
    a = torch.randn(max(out_features, in_features), min(out_features, in_features), generator=gen)
    q, r = torch.linalg.qr(a)
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)  # unique QR: deterministic sign
    w = q if out_features >= in_features else q.T
    return w.contiguous() * (in_features / out_features) ** 0.5


def make_model(
    width: int = 64, num_classes: int = 10, affine: bool = False, seed: int = 0
) -> nn.Module:
    """Build the digits MLP (scale-invariant unless ``affine=True``); see the module docstring.

    Args:
        width: hidden width w.
        num_classes: number of classes (10 for digits).
        affine: False (default) → scale-invariant network with a fixed last layer; True → ordinary
            network (biases, affine BatchNorm, trainable last layer).
        seed: seeds the initialisation and the fixed last layer (deterministic, global RNG
            untouched).

    Returns:
        An ``nn.Sequential``; its state_dict keys are ``0.weight``, ``1.running_mean``, ...
    """
    in_features = 64
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layers: list[nn.Module] = [
            nn.Linear(in_features, width, bias=affine),
            nn.BatchNorm1d(width, affine=affine),
            nn.ReLU(),
            nn.Linear(width, width, bias=affine),
            nn.BatchNorm1d(width, affine=affine),
            nn.ReLU(),
        ]
        head = nn.Linear(width, num_classes, bias=affine)
        if not affine:
            gen = torch.Generator().manual_seed(10_000 + seed)
            with torch.no_grad():
                head.weight.copy_(_fixed_projection(num_classes, width, gen))
            head.weight.requires_grad_(False)
            layers += [head, nn.BatchNorm1d(num_classes, affine=False)]
        else:
            layers.append(head)
    return nn.Sequential(*layers)


def scale_invariant_names(model: nn.Module) -> list[str]:
    """Names of the trainable weights that feed a BatchNorm directly (``L(cW) = L(W)``)."""
    names: list[str] = []
    mods = list(model.named_children())
    for (name, mod), (_, nxt) in zip(mods, mods[1:], strict=False):
        if (
            isinstance(mod, nn.Linear)
            and isinstance(nxt, nn.BatchNorm1d)
            and mod.weight.requires_grad
        ):
            names.append(f"{name}.weight")
    return names
