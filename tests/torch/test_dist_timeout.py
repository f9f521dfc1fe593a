"""``--dist-timeout`` / ``BSCRIT_DIST_TIMEOUT``: a positive number of seconds, at most a week."""

from __future__ import annotations

import math

import pytest

from bscrit.engine.distributed import DEFAULT_TIMEOUT_S, ENV_TIMEOUT, MAX_TIMEOUT_S, timeout_seconds
from bscrit.errors import UsageError


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf, MAX_TIMEOUT_S * 2])
def test_timeout_out_of_range_is_refused(bad):
    with pytest.raises(UsageError, match="dist_timeout: expected a positive number of seconds"):
        timeout_seconds(bad)


def test_timeout_default_and_environment(monkeypatch):
    monkeypatch.delenv(ENV_TIMEOUT, raising=False)
    assert timeout_seconds() == DEFAULT_TIMEOUT_S
    monkeypatch.setenv(ENV_TIMEOUT, "30")
    assert timeout_seconds() == 30.0
    monkeypatch.setenv(ENV_TIMEOUT, "inf")
    with pytest.raises(UsageError):
        timeout_seconds()
    assert timeout_seconds(MAX_TIMEOUT_S) == MAX_TIMEOUT_S
