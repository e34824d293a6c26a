"""Send windows: when a campaign may send, as wall-clock hours of one time zone (pure).

    [send]
    window = ["Mon-Fri 09:00-20:00", "Sat 10:00-14:00"]     # or one text
    timezone = "Europe/Berlin"                              # an IANA name (zoneinfo)

A window is ``[DAYS] HH:MM-HH:MM``: days as ``Mon-Fri``, ``Sat,Sun``, ``Mon,Wed-Fri`` (every day
when left out), the hours in the zone's local time. An end at or before the start runs past
midnight (``Fri 22:00-06:00``: Friday 22:00 to Saturday 06:00; the days name the opening's
day); ``24:00`` ends at midnight. Overlapping or touching windows are one: ``Mon-Sun 00:00-24:00``
never closes.

Daylight-saving changes are taken as a clock on the wall shows them: a window is open from its
opening wall time to its closing wall time that day, whatever the change made of the hours in
between (``00:00-24:00`` is 23 hours long on the day clocks go forward, 25 on the day they go
back). A wall time that does not exist (02:30 as clocks go forward from 02:00 to 03:00) is the
same time after the change (03:30); one that occurs twice (02:30 as they go back) is its first
occurrence. Every instant is compared in UTC: aware datetimes of one zone compare by wall time
in Python, which is wrong across a change.

Nothing here reads a clock: every function takes the moment it is asked about.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import count
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bulksend.errors import WindowError

UTC = dt.UTC
DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_DAYS = {name.lower(): i for i, name in enumerate(DAY_NAMES)}
_DAYS.update(
    {
        name: i
        for i, name in enumerate(
            ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
        )
    }
)
_WINDOW = re.compile(
    r"^\s*(?:(?P<days>[A-Za-z][A-Za-z,\s-]*?)\s+)?"
    r"(?P<start>\d{1,2}:\d{2})\s*-\s*(?P<end>\d{1,2}:\d{2})\s*$"
)
_EXAMPLE = "write it as [DAYS] HH:MM-HH:MM, e.g. 'Mon-Fri 09:00-20:00' or '22:00-06:00'"
#: a run of open time longer than this is open for good (the windows repeat every week)
_ALWAYS = dt.timedelta(days=8)
_MINUTES_A_DAY = 24 * 60


@dataclass(frozen=True, slots=True)
class Window:
    """One window: the days it opens on (0 = Monday), and its opening and closing wall times
    in minutes after the opening day's midnight (``end`` past 1440: the next day)."""

    days: frozenset[int]
    start: int
    end: int
    text: str

    def spans(self, day: dt.date, zone: ZoneInfo) -> tuple[dt.datetime, dt.datetime] | None:
        """The UTC instants it opens and closes when it opens on ``day`` (None: it does not
        open that day, or it lies wholly in the hour clocks skip)."""
        if day.weekday() not in self.days:
            return None
        opens, closes = _instant(day, self.start, zone), _instant(day, self.end, zone)
        return (opens, closes) if closes > opens else None


def _instant(day: dt.date, minutes: int, zone: ZoneInfo) -> dt.datetime:
    """The UTC instant of the wall time ``minutes`` after ``day``'s midnight in ``zone``
    (fold 0: a skipped time as after the change, a repeated one at its first occurrence)."""
    day += dt.timedelta(days=minutes // _MINUTES_A_DAY)
    minutes %= _MINUTES_A_DAY
    wall = dt.datetime.combine(day, dt.time(minutes // 60, minutes % 60), tzinfo=zone)
    return wall.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class WindowState:
    """Whether the windows are open at a moment, and when that changes (UTC; None: never)."""

    open: bool
    until: dt.datetime | None


@dataclass(frozen=True, slots=True)
class SendWindows:
    """The windows of a campaign in their time zone."""

    windows: tuple[Window, ...]
    zone: ZoneInfo

    def describe(self) -> str:
        """``Mon-Fri 09:00-20:00, Sat 10:00-14:00 Europe/Berlin``."""
        return f"{', '.join(w.text for w in self.windows)} {self.zone.key}"

    def spans(self, after: dt.datetime) -> Iterator[tuple[dt.datetime, dt.datetime | None]]:
        """The open spans (UTC) that end after ``after``, in order, overlapping and touching
        windows merged; the last is ``(start, None)`` when from then on they never close."""
        first = after.astimezone(self.zone).date() - dt.timedelta(days=1)
        current: list[dt.datetime] | None = None
        for offset in count():
            day = first + dt.timedelta(days=offset)
            found = (w.spans(day, self.zone) for w in self.windows)
            for opens, closes in sorted(s for s in found if s is not None):
                if current is not None and opens <= current[1]:
                    current[1] = max(current[1], closes)
                    continue
                if current is not None and current[1] > after:
                    yield current[0], current[1]
                current = [opens, closes]
            if current is not None and current[1] - current[0] > _ALWAYS:
                yield current[0], None
                return

    def state(self, now: dt.datetime) -> WindowState:
        """Open or closed at ``now``, and the next closing or opening."""
        opens, closes = next(self.spans(now))
        if opens <= now:
            return WindowState(True, closes)
        return WindowState(False, opens)

    def next_opening(self, now: dt.datetime) -> dt.datetime:
        """``now`` (in UTC) when the windows are open then, else when they next open."""
        opens, _ = next(self.spans(now))
        return max(opens, now.astimezone(UTC))

    def next_closing(self, now: dt.datetime) -> dt.datetime | None:
        """When the span open at ``now`` (or the next one) closes; None: never."""
        return next(self.spans(now))[1]

    def finish(self, start: dt.datetime, seconds: float) -> dt.datetime:
        """When ``seconds`` of sending started at ``start`` end, sending only while open."""
        left = dt.timedelta(seconds=max(0.0, seconds))
        start = start.astimezone(UTC)
        for opens, closes in self.spans(start):
            begin = max(opens, start)
            if closes is None or left <= closes - begin:
                return begin + left
            left -= closes - begin
        raise AssertionError("unreachable: spans() ends only with an open end")


def parse_zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name`` (``Europe/Berlin``, ``UTC``)."""
    try:
        if not name or name != name.strip() or name.startswith(("/", ".")) or ".." in name:
            raise ValueError(name)
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise WindowError(
            f"{name!r} is not an IANA time zone name; give one such as 'Europe/Berlin', "
            "'America/New_York' or 'UTC'"
        ) from None


def parse_windows(texts: str | Sequence[str], zone: ZoneInfo) -> SendWindows:
    """``"Mon-Fri 09:00-20:00"`` or a list of such texts, in ``zone``."""
    items = [texts] if isinstance(texts, str) else list(texts)
    if not items:
        raise WindowError("is an empty array; give at least one window, e.g. 'Mon-Fri 09:00-20:00'")
    return SendWindows(tuple(parse_window(text) for text in items), zone)


def parse_window(text: str) -> Window:
    """One window: ``[DAYS] HH:MM-HH:MM``."""
    m = _WINDOW.match(text)
    if m is None:
        raise WindowError(f"cannot read {text!r}; {_EXAMPLE}")
    start = _minutes(m.group("start"), text)
    end = _minutes(m.group("end"), text, end=True)
    if start == end:
        raise WindowError(
            f"{text!r} opens and closes at the same time; for the whole day write 00:00-24:00"
        )
    if end <= start:
        end += _MINUTES_A_DAY  # past midnight
    days_text = m.group("days")
    days = _days(days_text, text) if days_text else frozenset(range(7))
    shown = f"{_hhmm(start)}-{_hhmm(end if end == _MINUTES_A_DAY else end % _MINUTES_A_DAY)}"
    if days_text:
        shown = f"{' '.join(days_text.split())} {shown}"
    return Window(days, start, end, shown)


def _minutes(hhmm: str, text: str, *, end: bool = False) -> int:
    hours, minutes = (int(part) for part in hhmm.split(":"))
    if hours == 24 and minutes == 0 and end:
        return _MINUTES_A_DAY
    if hours > 23 or minutes > 59:
        allowed = "00:00 to 23:59, or 24:00 to close at midnight" if end else "00:00 to 23:59"
        raise WindowError(f"{text!r}: {hhmm} is not a time of day ({allowed})")
    return hours * 60 + minutes


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _days(spec: str, text: str) -> frozenset[int]:
    """``Mon-Fri``, ``Sat,Sun``, ``Mon,Wed-Fri``, ``Fri-Mon`` (wrapping past Sunday)."""
    days: set[int] = set()
    for part in re.split(r"\s*,\s*", spec.strip()):
        ends = [p.strip() for p in part.split("-")]
        if len(ends) > 2 or not all(ends):
            raise WindowError(f"{text!r}: cannot read the days {spec.strip()!r}; {_EXAMPLE}")
        first, last = (_day(name, text) for name in (ends[0], ends[-1]))
        days.update((first + i) % 7 for i in range((last - first) % 7 + 1))
    return frozenset(days)


def _day(name: str, text: str) -> int:
    day = _DAYS.get(name.lower())
    if day is None:
        raise WindowError(
            f"{text!r}: {name!r} is not a day; write Mon, Tue, Wed, Thu, Fri, Sat or Sun"
        )
    return day


def moment_text(at: dt.datetime, now: dt.datetime, zone: ZoneInfo) -> str:
    """``09:00 Europe/Berlin`` today (in the zone), ``Mon 09:00 Europe/Berlin`` within a week,
    else ``2026-03-30 09:00 Europe/Berlin``."""
    local, today = at.astimezone(zone), now.astimezone(zone).date()
    clock = local.strftime("%H:%M")
    days = (local.date() - today).days
    if days == 0:
        return f"{clock} {zone.key}"
    if 0 < days < 7:
        return f"{DAY_NAMES[local.weekday()]} {clock} {zone.key}"
    return f"{local:%Y-%m-%d} {clock} {zone.key}"
