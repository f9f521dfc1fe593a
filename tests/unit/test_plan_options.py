"""``measure``'s options checked before any work (bscrit.workflows.plan.check_options): the caps
on DataLoader workers and prefetch."""

from __future__ import annotations

import pytest

from bscrit.errors import UsageError
from bscrit.workflows.plan import MAX_PREFETCH, MAX_WORKERS, MeasureOptions, check_options


def test_num_workers_and_prefetch_are_capped_and_named():
    with pytest.raises(UsageError) as e:
        check_options(MeasureOptions(num_workers=MAX_WORKERS + 1, prefetch=MAX_PREFETCH + 1))
    msg = e.value.for_cli()
    assert "--num-workers" in msg and "--prefetch" in msg  # both problems at once
    check_options(MeasureOptions(num_workers=MAX_WORKERS, prefetch=MAX_PREFETCH))
    check_options(MeasureOptions(num_workers=0, prefetch=None))
