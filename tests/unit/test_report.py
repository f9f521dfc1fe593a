"""Report helpers: messages are printed literally."""

from __future__ import annotations

import pytest


def test_report_messages_are_not_parsed_as_markup(capsys: pytest.CaptureFixture[str]) -> None:
    from bscrit import report

    report.error("gloo [x.cc:12] [/closing] failed")
    report.warn("[bold]literal[/]")
    err = capsys.readouterr().err
    assert "[x.cc:12] [/closing]" in err and "[bold]literal[/]" in err
