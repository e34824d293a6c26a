"""``bulksend bench --plot``: requests per second over the run, against the limit.

Requests are counted in 1-second bins by the time they were sent (0.1 s bins for a run shorter
than 3 s, which 1 s bins would show as two or three bars), stacked by their answer: accepted,
429, other failures. The limit is a dashed line of its own colour; the sandbox's 429 storms are
shaded; the legend sits outside the axes, where it hides no bar. The binning is pure
(``bins``); matplotlib is imported only to draw.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bulksend.output.private import open_private

PLOT_EXTRA = "pip install 'bulksend[plot]'"
ACCEPTED, THROTTLED, FAILED = "accepted", "429", "failed"
COLOURS = {ACCEPTED: "#3b75af", THROTTLED: "#d62728", FAILED: "#7f7f7f"}
LIMIT_COLOUR = "#ff7f0e"
STORM_COLOUR = "#d62728"


def check_matplotlib() -> str | None:
    """None when matplotlib can be imported, else the one line that says what to install."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return f"--plot needs matplotlib, which is not installed here: {PLOT_EXTRA}"
    return None


@dataclass(frozen=True, slots=True)
class Bins:
    width: float  # seconds
    starts: list[float]
    widths: list[float]  # ``width``, but the last bin's is as long as the run lasted in it
    #: requests per second in each bin, by answer (ACCEPTED, THROTTLED, FAILED)
    rates: dict[str, list[float]]


def kind(status: int) -> str:
    if status == 429:
        return THROTTLED
    return ACCEPTED if 200 <= status < 300 else FAILED


def bin_width(span: float) -> float:
    return 1.0 if span >= 3.0 else 0.1


def bins(sent_at: Sequence[float], statuses: Sequence[int], end: float) -> Bins:
    """Requests per second in bins from 0 to ``end``. The last bin is as long as the run
    lasted in it (and drawn so), so a bin cut short by the end does not read as a drop; a
    remainder under half a bin joins the bin before (a few requests in a sliver of time make
    a rate that means nothing)."""
    width = bin_width(end)
    full, rest = divmod(end, width)
    count = max(1, int(full) + (rest >= width / 2))
    totals = {name: [0] * count for name in COLOURS}
    for t, status in zip(sent_at, statuses, strict=True):
        totals[kind(status)][min(count - 1, max(0, int(t / width)))] += 1
    spans = [width] * count
    spans[-1] = max(end - width * (count - 1), width / 10)
    rates = {name: [n / s for n, s in zip(row, spans, strict=True)] for name, row in totals.items()}
    return Bins(width, [i * width for i in range(count)], spans, rates)


def storm_spans(
    end: float, every: float, length: float, offset: float = 0.0
) -> list[tuple[float, float]]:
    """The sandbox's 429 storms in the run's seconds: the last ``length`` seconds of every
    ``every`` seconds after the sandbox started, ``offset`` seconds before the run did."""
    if every <= 0 or length <= 0:
        return []
    spans: list[tuple[float, float]] = []
    k = 1
    while (start := k * every - length - offset) < end:
        spans.append((max(0.0, start), min(end, k * every - offset)))
        k += 1
    return [(a, b) for a, b in spans if b > a]


@dataclass(frozen=True, slots=True)
class Chart:
    title: str
    bins: Bins
    limit_per_s: float | None
    limit_label: str
    storms: list[tuple[float, float]]
    throttled_at: list[float]  # when each request answered 429 was sent


LABELS = {ACCEPTED: "accepted", THROTTLED: "429 Too Many Requests", FAILED: "other failures"}
BAR = {"align": "edge", "edgecolor": "white", "linewidth": 0.5, "zorder": 2}
RUG = {"marker": "|", "markersize": 14, "linestyle": "none", "zorder": 3, "clip_on": False}
LIMIT = {"color": LIMIT_COLOUR, "linestyle": "--", "linewidth": 2}
#: hatched over the bars, which keep their colours under it
STORM = {
    "facecolor": (0.84, 0.15, 0.16, 0.06),
    "edgecolor": (0.84, 0.15, 0.16, 0.45),
    "hatch": "///",
    "linewidth": 0,
    "zorder": 2.5,
}


def _stack(ax: Any, chart: Chart) -> tuple[list[tuple[Any, str]], list[float]]:
    """The bars, one colour per kind of answer stacked in each bin, and a tick on the axis
    for every 429 (a few 429s among many answers make a bar too thin to see): ((legend
    handle, label) pairs, the tops of the stacks)."""
    b = chart.bins
    handles: list[tuple[Any, str]] = []
    tops = [0.0] * len(b.starts)
    for name, colour in COLOURS.items():
        heights = b.rates[name]
        if name == ACCEPTED or any(heights):
            bars = ax.bar(b.starts, heights, width=b.widths, bottom=tops, color=colour, **BAR)
            if name == THROTTLED:
                rug = ax.plot(chart.throttled_at, [0.0] * len(chart.throttled_at), color=colour,
                              transform=ax.get_xaxis_transform(), **RUG)  # fmt: skip
                bars = (bars, rug[0])
            handles.append((bars, LABELS[name]))
            tops = [x + h for x, h in zip(tops, heights, strict=True)]
    return handles, tops


def _marks(ax: Any, chart: Chart) -> list[tuple[Any, str]]:
    """The limit line and the storms' spans: (legend handle, label)."""
    marks = []
    if chart.limit_per_s:
        marks.append((ax.axhline(chart.limit_per_s, **LIMIT), f"limit {chart.limit_label}"))
    spans = [ax.axvspan(a, b, **STORM) for a, b in chart.storms]
    return marks + [(span, "429 storm (sandbox profile)") for span in spans[:1]]


def draw(chart: Chart, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    b = chart.bins
    fig, ax = plt.subplots(figsize=(10, 4), layout="constrained")
    handles, tops = _stack(ax, chart)
    handles += _marks(ax, chart)
    ax.set_ylim(0, max([*tops, chart.limit_per_s or 0.0, 1.0]) * 1.12)
    ax.set_xlim(0, b.starts[-1] + b.widths[-1])
    ax.set_xlabel("seconds since the start of the send")
    ax.set_ylabel(f"requests/s ({b.width:g} s bins)")
    ax.set_title(chart.title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    # outside the axes, right of them: it hides no bar
    shown, labels = zip(*handles, strict=True)
    ax.legend(shown, labels, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open_private(path, "wb") as f:  # owner-only, as every file bulksend writes
        fig.savefig(f, dpi=110, format=path.suffix.lstrip(".").lower() or "png")
    plt.close(fig)
