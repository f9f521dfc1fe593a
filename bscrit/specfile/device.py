"""Device strings: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (the spec's ``measure.device``,
``--device``, torchrun ranks), parsed in one place (pure: no torch)."""

from __future__ import annotations

import re

from bscrit.errors import UsageError

DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


def parse_device(text: str) -> tuple[str, int | None]:
    """``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` → (kind, N or None); the one parser of
    device strings (the spec, ``--device``, torchrun ranks).

    Raises:
        UsageError: anything else.
    """
    d = str(text).strip().lower()
    if not DEVICE_RE.match(d):
        raise UsageError(f"unknown device {text!r}; expected auto, cpu, cuda or cuda:N")
    kind, _, index = d.partition(":")
    return kind, int(index) if index else None
