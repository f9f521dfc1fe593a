"""No sentence in the package or its docs says more than the theorems do (issue 23).

[LMA21] Thm 5.6 certifies *failure* of (C, κ)-linear scaling invariance beyond B*, and nothing
below it; Thm 5.2 (ii) certifies that SGD and its SDE are *not* C-close. So nothing bscrit prints
or documents may say that a bound certifies the SDE approximation or that the rule holds, call a
one-sided test "within ±δ", or say "C-close" of a verdict decided by the losses alone.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]

#: (pattern, why it is wrong), matched case-insensitively across line breaks.
FORBIDDEN = [
    (r"certif\w*\s+(?:that\s+)?the\s+SDE\s+approximation(?!\s+(?:is\s+)?\w*\s*(?:to\s+)?fail)",
     "Thm 5.2 certifies failure of the SDE approximation, Thm 5.6 says nothing about it"),
    (r"within\s+±", "confirm's test is one-sided: below δ, not within ±δ"),
    (r"predicts\s+the\s+\S+\s+rule\s+holds", "the bound certifies failure beyond B*, not a hold"),
    (r"bound\s+is\s+conservative", "the bound says nothing below B*: not 'conservative'"),
    (r"certif\w*\s+(?:that\s+)?(?:the\s+)?(?:\S+\s+)?(?:rule|LSR)\s+holds",
     "no theorem here certifies that a scaling rule holds"),
]  # fmt: skip


def _texts() -> list[Path]:
    files = sorted((ROOT / "bscrit").rglob("*.py"))
    files += [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    files += sorted((ROOT / "examples").rglob("*.md")) + sorted((ROOT / "examples").rglob("*.sh"))
    return [f for f in files if f.is_file()]


@pytest.mark.parametrize(("pattern", "why"), FORBIDDEN)
def test_no_file_says_more_than_the_theorems(pattern: str, why: str) -> None:
    rx = re.compile(pattern, re.IGNORECASE)
    hits = []
    for f in _texts():
        text = " ".join(f.read_text(encoding="utf-8").split())  # sentences across line breaks
        hits += [f"{f.relative_to(ROOT)}: …{m.group(0)}…" for m in rx.finditer(text)]
    assert not hits, f"{why}:\n" + "\n".join(hits)


def test_the_patterns_catch_the_old_words() -> None:
    """The sentences bscrit printed before issue 23 are caught (the test can fail)."""
    old = [
        "the bound is conservative here (it certifies the SDE approximation, a sufficient "
        "condition, not where training gets worse)",
        "(d = -1.9% [95%: -3.5%, -0.2%], within ±10%, 3 seeds)",
        "bscrit predicts the square-root rule holds up to B' = 1024",
    ]
    for sentence in old:
        assert any(re.search(p, sentence, re.IGNORECASE) for p, _ in FORBIDDEN), sentence
    ok = "the SDE approximation is certified to fail at this batch size"
    assert not any(re.search(p, ok, re.IGNORECASE) for p, _ in FORBIDDEN)
