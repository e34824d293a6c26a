"""``bulksend bench --plot``: the binning (pure) and the chart (with matplotlib)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from bulksend.commands import bench_plot
from bulksend.commands.bench_plot import ACCEPTED, FAILED, THROTTLED, Chart, bins, storm_spans


def test_one_second_bins_by_answer_and_a_short_last_bin() -> None:
    sent = [0.1, 0.5, 0.9, 1.2, 1.3, 2.0, 3.4]
    statuses = [200, 200, 429, 200, 500, 0, 200]
    b = bins(sent, statuses, end=3.5)
    assert (b.width, b.starts, b.widths) == (1.0, [0.0, 1.0, 2.0, 3.0], [1.0, 1.0, 1.0, 0.5])
    assert b.rates[ACCEPTED] == [2.0, 1.0, 0.0, 2.0]  # the last: 1 request in 0.5 s
    assert b.rates[THROTTLED] == [1.0, 0.0, 0.0, 0.0]
    assert b.rates[FAILED] == [0.0, 1.0, 1.0, 0.0]  # a 500, and no answer at all


def test_a_remainder_under_half_a_bin_joins_the_bin_before() -> None:
    b = bins([0.5, 1.5, 2.1, 2.2, 3.1], [200] * 5, end=3.2)
    assert b.widths == [1.0, 1.0, pytest.approx(1.2)]
    assert b.rates[ACCEPTED] == [1.0, 1.0, pytest.approx(3 / 1.2)]


def test_a_run_shorter_than_three_seconds_has_tenth_of_a_second_bins() -> None:
    b = bins([0.05, 0.15, 0.16], [200, 200, 200], end=0.2)
    assert b.width == 0.1
    assert len(b.starts) == 2
    assert b.rates[ACCEPTED] == pytest.approx([10.0, 20.0])


def test_storms_are_the_last_seconds_of_every_period_since_the_sandbox_started() -> None:
    assert storm_spans(7.0, every=3.0, length=1.0) == [(2.0, 3.0), (5.0, 6.0)]
    # the sandbox started 0.5 s before the run: its storms come 0.5 s earlier in the run
    assert storm_spans(7.0, every=3.0, length=1.0, offset=0.5) == [(1.5, 2.5), (4.5, 5.5)]
    assert storm_spans(5.5, every=3.0, length=1.0) == [(2.0, 3.0), (5.0, 5.5)]  # cut at the end
    assert storm_spans(7.0, every=0.0, length=1.0) == []


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="no matplotlib")
def test_the_chart_is_drawn(tmp_path: Path) -> None:
    sent = [i / 20 for i in range(100)]
    statuses = [429 if 40 <= i < 43 else 200 for i in range(100)]
    chart = Chart(
        title="t",
        bins=bins(sent, statuses, end=5.0),
        limit_per_s=20.0,
        limit_label="20/s",
        storms=storm_spans(5.0, 2.0, 0.5),
        throttled_at=[t for t, s in zip(sent, statuses, strict=True) if s == 429],
    )
    png = tmp_path / "sub" / "c.png"
    bench_plot.draw(chart, png)
    assert png.read_bytes().startswith(b"\x89PNG")
