"""The demo's last lines: one recommendation from predict, svag and confirm, disagreements named."""

from __future__ import annotations

import math

import pytest

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


def test_holding_above_the_range_does_not_contradict_the_failure_bound():
    c = _conclude([_c(1024, "holds")], top=700.0)
    assert c.batch_size == 1024
    (note,) = c.disagreements
    # Thm 5.6 certifies failure beyond B*, nothing below it, and is no SDE statement
    assert "no contradiction" in note and "fails beyond B*" in note
    assert "nothing below B*" in note


# Words [LMA21] does not support, anywhere in what the conclusion prints (issue 23).
FORBIDDEN = ("certif", "±", "holds up to", "vouch")


def _all_conclusions():
    s = (512, "sde_fails")
    yield _conclude([_c(1024, "holds")], top=700.0)
    yield _conclude([_c(256, "holds"), _c(512, "fails", 0.2, (0.1, 0.3))], svag=s)
    yield _conclude([_c(1024, "inconclusive", 0.04, (0.01, 0.07))], svag=(1024, "inconclusive"))
    yield _conclude([_c(512, "holds")], svag=s)
    yield _conclude([], top=math.inf)
    yield conclude(base_batch_size=32, recommended_max=900.0, b_star_lower=900.0,
                   rule="square-root", svag=None, confirmations=[])  # fmt: skip


def test_no_printed_line_claims_a_certificate_a_symmetric_tolerance_or_holds_up_to():
    for c in _all_conclusions():
        for line in c.lines:
            low = line.lower()
            assert not any(w in low for w in FORBIDDEN), line


def test_holds_is_worded_one_sided_against_the_tolerance():
    c = _conclude([_c(512, "holds", -0.01, (-0.03, 0.01))])
    assert "less than δ = 5% above the base run's" in c.lines[0]
    assert "upper end below δ" in c.lines[0]


def test_a_hold_above_a_failure_is_named_and_never_recommended():
    c = _conclude([_c(256, "holds"), _c(512, "fails", 0.2, (0.1, 0.3)), _c(1024, "holds")])
    assert c.batch_size == 256 and c.confirmed
    assert "You can train at B' = 256" in c.lines[0]
    assert not any("train at B' = 1024" in line for line in c.lines)
    assert any("held although it failed at the smaller 512" in d for d in c.disagreements)
    # nothing held below the failure: the unconfirmed fallback, capped below it
    c = _conclude([_c(512, "fails", 0.2, (0.1, 0.3)), _c(1024, "holds")])
    assert c.batch_size == 256 and not c.confirmed
    assert "stay at or below 256, below the failure at 512" in c.lines[0]


@pytest.mark.parametrize(
    ("rule", "momentum", "label"),
    [("square-root", 0.0, "heuristic reading for the square-root rule"),
     ("linear", 0.9, "heuristic reading for momentum SGD"),
     ("linear", 0.0, None)],
)  # fmt: skip
def test_the_unconfirmed_reading_is_labelled_heuristic_beyond_plain_sgd(rule, momentum, label):
    c = conclude(base_batch_size=32, recommended_max=900.0, b_star_lower=900.0, rule=rule,
                 svag=None, confirmations=[], momentum=momentum)  # fmt: skip
    assert c.batch_size == 900 and "no evidence that the" in c.lines[0]
    assert "not a guarantee that it holds" in c.lines[0]
    if label is None:
        assert "heuristic" not in c.lines[0]
    else:
        assert label in c.lines[0]


def test_svag_inconclusive_is_no_evidence_either_way():
    c = _conclude([_c(512, "holds")], svag=(512, "inconclusive"))
    assert any("inconclusive" in d and "no evidence either way" in d for d in c.disagreements)


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
    assert "stay at or below 256, below the failure at 512" in c.lines[0]


def test_one_seed_inconclusive_says_there_is_no_interval():
    c = _conclude([_c(512, "inconclusive", 0.02, None)])
    (line,) = [x for x in c.lines if "could not tell" in x]
    assert "one seed, no interval" in line and "contains δ" not in line
