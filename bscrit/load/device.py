"""The device a measurement runs on: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` (the spec's syntax,
:func:`bscrit.specfile.device.parse_device`) resolved against what this machine has."""

from __future__ import annotations

import torch

from bscrit.errors import UsageError
from bscrit.specfile.device import parse_device


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
