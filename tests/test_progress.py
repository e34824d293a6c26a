"""The live progress line: what it says, how it fits a terminal, and how it shares one."""

from __future__ import annotations

import io

from bulksend.output.progress import (
    TerminalLine,
    eta_text,
    fit,
    limit_text,
    line_parts,
    shows_progress,
)
from bulksend.output.report import Summary

CLEAR = "\r\x1b[2K"


def test_the_first_figure_counts_every_settled_row_and_delivered_only_deliveries() -> None:
    s = Summary(delivered=600, duplicates=40, invalid=10, throttled=3, retries=2)
    parts = line_parts(s, total=1300, elapsed=2.0, limits="600/min")
    assert parts == [
        "650/1,300 50.0%",
        "delivered 600",
        "300/s",
        "ETA 2s",  # 650 rows in 2 s: 650 more take 2 s
        "limit 600/min",
        "429s 3",
        "retries 2",
    ]


def test_failures_show_right_after_deliveries_and_the_end_has_no_eta() -> None:
    s = Summary(delivered=90, failed=10)
    assert line_parts(s, total=100, elapsed=4.0, limits="") == [
        "100/100 100.0%", "delivered 90", "failed 10", "22/s", "429s 0", "retries 0",
    ]  # fmt: skip


def test_without_a_row_count_there_is_no_percentage_or_eta() -> None:
    parts = line_parts(Summary(delivered=5), total=None, elapsed=1.0, limits="")
    assert parts[:3] == ["5 rows", "delivered 5", "5/s"]
    assert not any(p.startswith("ETA") for p in parts)


def test_fit_keeps_whole_parts_from_the_front_within_width_minus_one() -> None:
    parts = ["10/100 10.0%", "delivered 9", "3/s", "ETA 30s"]
    assert fit(parts, 200) == "10/100 10.0%  delivered 9  3/s  ETA 30s"
    assert fit(parts, 30) == "10/100 10.0%  delivered 9"  # 25 columns; "  3/s" would be 30
    assert fit(parts, 31) == "10/100 10.0%  delivered 9  3/s"
    assert fit(parts, 8) == "10/100 "  # even the first part is cut to the width
    assert fit([], 80) == ""


def test_short_eta_and_limit_texts() -> None:
    assert [eta_text(x) for x in (0.4, 59, 60, 185, 3599, 3600, 7620.6)] == [
        "0s", "59s", "1m00s", "3m05s", "59m59s", "1h00m", "2h07m",
    ]  # fmt: skip
    assert limit_text(600, 60.0) == "600/min"
    assert limit_text(50, 1.0) == "50/s"
    assert limit_text(1000, 3600.0) == "1000/h"
    assert limit_text(100, 15.0) == "100/15s"
    assert limit_text(5, 0.5) == "5/0.5s"


def test_a_line_written_while_the_status_is_shown_scrolls_above_it() -> None:
    out = io.StringIO()
    term = TerminalLine(out)
    term.show("1/10 10.0%")
    term.show("2/10 20.0%")
    print("a warning", file=term)  # print writes the text, then "\n"
    term.show("3/10 30.0%")
    term.keep()
    print("after the send", file=term)
    assert out.getvalue() == (
        f"{CLEAR}1/10 10.0%{CLEAR}2/10 20.0%"
        f"{CLEAR}a warning\n2/10 20.0%"  # cleared, written, the status drawn again below
        f"{CLEAR}3/10 30.0%\n"  # kept as the last status
        "after the send\n"  # nothing to clear or redraw any more
    )


def test_without_a_status_line_writes_pass_straight_through() -> None:
    out = io.StringIO()
    term = TerminalLine(out)
    term.write("one\n")
    term.write("two")
    term.keep()
    assert out.getvalue() == "one\ntwo"
    assert not term.isatty()
    assert not hasattr(term, "buffer")  # logs must not bypass it through a byte stream


def test_the_live_line_is_drawn_when_asked_or_on_a_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert shows_progress("always", io.StringIO())
    assert not shows_progress("auto", io.StringIO())
    assert shows_progress("auto", Tty())
    assert not shows_progress("never", Tty())
    assert not shows_progress(None, Tty())  # commands without --progress
