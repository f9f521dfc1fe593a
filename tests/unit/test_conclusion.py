"""The demo's last lines: one recommendation from predict, svag and confirm, disagreements named."""

from __future__ import annotations

import math

from bscrit.workflows.conclusion import Confirmation, conclude


def _c(b: int, code: str, mean: float = 0.0, ci=(-0.02, 0.02)) -> Confirmation:
    return Confirmation(b, code, mean, ci, 0.05, 3, 64000, "eval_loss")


def _conclude(confirmations, svag=None, top=1448.0):
    return conclude(
        base_batch_size=32,
        recommended_max=top,
        b_star_lower=top,
        rule="linear",
        svag=svag,
        confirmations=confirmations,
    )


def test_largest_holding_batch_is_recommended_and_confirmed():
    c = _conclude([_c(1024, "holds"), _c(512, "holds")])
    assert c.batch_size == 1024 and c.confirmed
    assert "B' = 1024" in c.lines[0] and "κ = 32×" in c.lines[0]
    assert c.disagreements == ()
    assert c.lines[-1].startswith("How sure: the batch size above was checked")


def test_svag_fails_where_confirm_holds_is_explained_not_hidden():
    c = _conclude([_c(512, "holds")], svag=(512, "sde_fails"))
    assert c.batch_size == 512
    assert len(c.disagreements) == 1 and "SVAG says SGD at 512" in c.disagreements[0]
    assert c.disagreements[0] in c.lines  # printed with the rest


def test_failure_inside_the_range_wins_over_the_prediction():
    c = _conclude([_c(256, "holds"), _c(512, "fails", 0.2, (0.1, 0.3))])
    assert c.batch_size == 256 and c.confirmed
    assert any("fails there" in line for line in c.lines)
    assert any("prediction was optimistic" in d for d in c.disagreements)


def test_holding_above_the_range_says_the_bound_is_conservative():
    c = _conclude([_c(1024, "holds")], top=700.0)
    assert c.batch_size == 1024
    assert any("conservative" in d for d in c.disagreements)


def test_nothing_confirmed_falls_back_to_the_prediction_unconfirmed():
    c = _conclude([_c(1024, "inconclusive", 0.04, (0.01, 0.07))])
    assert c.batch_size == 1448 and not c.confirmed
    assert "No branched run confirmed it" in c.lines[0]
    assert any("could not tell" in line for line in c.lines)
    assert c.lines[-1].startswith("How sure: only the noise measurement")


def test_no_range_and_no_confirmation_keeps_the_base_batch():
    c = _conclude([], top=math.inf)
    assert c.batch_size is None and not c.confirmed
    assert "keep the base batch size" in c.lines[0]


def test_svag_holds_but_confirm_fails_names_the_disagreement():
    c = _conclude([_c(512, "fails", 0.3, (0.2, 0.4))], svag=(512, "sde_holds"))
    assert any("SVAG says SGD at 512 still tracks" in d for d in c.disagreements)
    # the fallback stays below the observed failure: never a batch size a run refuted
    assert c.to_dict()["batch_size"] == 256 and c.to_dict()["confirmed"] is False
    assert "use at most 256, below the failure at 512" in c.lines[0]
