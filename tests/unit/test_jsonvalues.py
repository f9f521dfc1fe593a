"""inf/NaN ↔ null in JSON (bscrit.artifacts.jsonvalues): the one pair every artifact uses."""

from __future__ import annotations

import json
import math

from bscrit.artifacts.jsonvalues import estimate_dict, finite_or_none, finite_pair, none_to_inf
from bscrit.stats.estimators import Estimate


def test_finite_or_none_writes_inf_and_nan_as_null() -> None:
    assert finite_or_none(None) is None
    assert finite_or_none(math.inf) is None and finite_or_none(-math.inf) is None
    assert finite_or_none(math.nan) is None
    assert finite_or_none(3) == 3.0 and isinstance(finite_or_none(3), float)
    assert finite_or_none(-0.25) == -0.25


def test_none_to_inf_reads_null_back_as_unbounded() -> None:
    assert none_to_inf(None) == math.inf
    assert none_to_inf(2) == 2.0 and isinstance(none_to_inf(2), float)
    for x in (0.0, 1.5, 1e300):
        assert none_to_inf(finite_or_none(x)) == x
    assert none_to_inf(finite_or_none(math.inf)) == math.inf


def test_pairs_and_estimates_are_valid_json() -> None:
    assert finite_pair((1.0, math.inf)) == [1.0, None]
    e = Estimate(2.0, math.nan, (-math.inf, 4.0))
    d = estimate_dict(e)
    assert d == {"value": 2.0, "se": None, "ci95": [None, 4.0]}
    json.dumps(d, allow_nan=False)  # raises on inf/NaN
