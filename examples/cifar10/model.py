"""A scale-invariant PreResNet-style network for CIFAR-10 (for `examples/cifar10/spec.yaml`).

Each residual branch is pre-activation (BN → ReLU → conv → BN → ReLU → conv) and *ends* in a
BatchNorm without affine parameters; the stem and the downsampling shortcuts are conv → BN; the
classifier is a fixed (non-trainable) linear layer, as in Li & Arora (2020), App. C, which
[LMA21] F uses. Every trainable tensor is therefore a convolution whose output feeds a BatchNorm
directly, so ``L(cW) = L(W)`` for each tensor on its own (not only jointly), which is what
bscrit's per-tensor detector tests (docs/theory.md §3, [LMA21] Lemma E.7). With
``width=16, blocks=5``
this is PreResNet-32-sized (0.46M parameters).
"""

from __future__ import annotations

import torch
from torch import nn


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, affine=False)


class Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.pre = _bn(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = _bn(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = _bn(c_out)  # ends the branch: makes conv2 scale-invariant
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), _bn(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(torch.relu(self.pre(x)))
        h = self.bn2(self.conv2(torch.relu(self.bn1(h))))
        return h + self.shortcut(x)


def make_model(width: int = 16, blocks: int = 5, num_classes: int = 10, seed: int = 0) -> nn.Module:
    """Scale-invariant PreResNet-style network: 3 stages of ``blocks`` blocks, widths w, 2w, 4w."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layers: list[nn.Module] = [nn.Conv2d(3, width, 3, 1, 1, bias=False), _bn(width)]
        c = width
        for stage, mult in enumerate((1, 2, 4)):
            for b in range(blocks):
                stride = 2 if stage > 0 and b == 0 else 1
                layers.append(Block(c, width * mult, stride))
                c = width * mult
        layers += [_bn(c), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        head = nn.Linear(c, num_classes, bias=False)
        head.weight.requires_grad_(False)  # fixed last layer: keeps the loss scale-invariant
        layers.append(head)
    return nn.Sequential(*layers)
