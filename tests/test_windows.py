"""Send windows as pure wall-clock math (issue 18): days, several windows, midnight, and the
daylight-saving changes of Europe/Berlin in 2026 (clocks go forward on 29 March at 02:00, back
on 25 October at 03:00) and America/New_York (8 March, 1 November)."""

from __future__ import annotations

import datetime as dt
import io
import re
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bulksend.control.windows import (
    SendWindows,
    moment_text,
    parse_window,
    parse_windows,
    parse_zone,
)
from bulksend.errors import WindowError
from tests.conftest import run_cli
from tests.hypothesis_profiles import examples

BERLIN = parse_zone("Europe/Berlin")
NEW_YORK = parse_zone("America/New_York")
UTC = dt.UTC


def at(
    zone: dt.tzinfo,
    year: int,
    month: int,
    day: int,
    hour: int = 0,
    minute: int = 0,
    *,
    fold: int = 0,
) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, tzinfo=zone, fold=fold)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, tzinfo=UTC)


def windows(*texts: str, zone: dt.tzinfo = BERLIN) -> SendWindows:
    return parse_windows(list(texts), zone)  # type: ignore[arg-type]


def first_span(w: SendWindows, after: dt.datetime) -> tuple[dt.datetime, dt.datetime | None]:
    return next(w.spans(after))


# -- reading ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "days", "start", "end"),
    [
        ("09:00-20:00", set(range(7)), 540, 1200),
        ("Mon-Fri 09:00-20:00", {0, 1, 2, 3, 4}, 540, 1200),
        ("sat,sun 10:00-14:00", {5, 6}, 600, 840),
        ("Mon,Wed-Fri 8:30-17:00", {0, 2, 3, 4}, 510, 1020),
        ("Fri-Mon 22:00-06:00", {4, 5, 6, 0}, 1320, 1800),  # wraps past Sunday, past midnight
        ("Tuesday 00:00-24:00", {1}, 0, 1440),
        ("  Mon - Fri   09:00 - 20:00 ", {0, 1, 2, 3, 4}, 540, 1200),
    ],
)
def test_a_window_is_read(text: str, days: set[int], start: int, end: int) -> None:
    w = parse_window(text)
    assert (set(w.days), w.start, w.end) == (days, start, end)


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("9-17", "cannot read '9-17'; write it as [DAYS] HH:MM-HH:MM"),
        ("Mon-Fry 09:00-10:00", "'Fry' is not a day; write Mon, Tue, Wed, Thu, Fri, Sat or Sun"),
        ("Mon- 09:00-10:00", "cannot read the days 'Mon-'"),
        ("25:00-10:00", "25:00 is not a time of day (00:00 to 23:59)"),
        ("10:00-24:30", "24:30 is not a time of day (00:00 to 23:59, or 24:00 to close at"),
        ("09:60-10:00", "09:60 is not a time of day"),
        ("24:00-06:00", "24:00 is not a time of day (00:00 to 23:59)"),
        ("09:00-09:00", "opens and closes at the same time; for the whole day write 00:00-24:00"),
        ("", "cannot read ''"),
    ],
)
def test_a_window_that_cannot_be_read_says_what_to_write(text: str, said: str) -> None:
    with pytest.raises(WindowError) as caught:
        parse_window(text)
    assert said in str(caught.value)
    assert "\n" not in str(caught.value)


def test_zones_are_iana_names() -> None:
    assert parse_zone("UTC").key == "UTC"
    for bad in ("Europe/Berln", "CEST+2", "", " Europe/Berlin", "../etc/passwd", "/etc/localtime"):
        with pytest.raises(WindowError, match="is not an IANA time zone name"):
            parse_zone(bad)
    with pytest.raises(WindowError, match="empty array"):
        parse_windows([], BERLIN)


def test_describe_names_every_window_and_the_zone() -> None:
    w = windows("Mon-Fri 09:00-20:00", "Sat 10:00-14:00", "22:00-06:00")
    assert w.describe() == "Mon-Fri 09:00-20:00, Sat 10:00-14:00, 22:00-06:00 Europe/Berlin"


# -- weekdays, several windows, midnight -----------------------------------------------------


def test_weekdays_open_and_close() -> None:
    w = windows("Mon-Fri 09:00-20:00")
    # Wednesday 2026-06-10 (CEST, UTC+2)
    assert w.state(at(BERLIN, 2026, 6, 10, 12)).open
    assert w.next_closing(at(BERLIN, 2026, 6, 10, 12)) == utc(2026, 6, 10, 18)
    assert w.state(at(BERLIN, 2026, 6, 10, 8, 59)).until == utc(2026, 6, 10, 7)
    # Friday evening: closed until Monday 09:00
    friday_night = at(BERLIN, 2026, 6, 12, 20, 0)
    state = w.state(friday_night)
    assert not state.open
    assert state.until == utc(2026, 6, 15, 7)
    assert w.next_opening(friday_night) == utc(2026, 6, 15, 7)
    # the closing instant itself is closed, the opening instant open
    assert not w.state(at(BERLIN, 2026, 6, 10, 20)).open
    assert w.state(at(BERLIN, 2026, 6, 10, 9)).open


def test_several_windows_and_a_gap_between_them() -> None:
    w = windows("Mon-Fri 09:00-12:00", "Mon-Fri 13:00-17:00", "Sat 10:00-14:00")
    lunch = at(BERLIN, 2026, 6, 10, 12, 30)
    assert w.state(lunch) == w.state(at(BERLIN, 2026, 6, 10, 12))
    assert w.state(lunch).until == utc(2026, 6, 10, 11)
    assert w.state(at(BERLIN, 2026, 6, 12, 18)).until == utc(2026, 6, 13, 8)  # Sat 10:00
    assert w.state(at(BERLIN, 2026, 6, 13, 15)).until == utc(2026, 6, 15, 7)  # Mon 09:00


def test_overlapping_and_touching_windows_are_one() -> None:
    w = windows("09:00-12:00", "11:00-14:00")
    assert w.next_closing(at(BERLIN, 2026, 6, 10, 10)) == utc(2026, 6, 10, 12)  # 14:00
    days = windows("Mon 00:00-24:00", "Tue 00:00-24:00")
    assert days.next_closing(at(BERLIN, 2026, 6, 8, 12)) == utc(2026, 6, 9, 22)  # Wed 00:00
    assert windows("00:00-24:00").state(at(BERLIN, 2026, 6, 8, 12)).until is None  # never
    assert windows("Mon-Sun 00:00-12:00", "12:00-24:00").next_closing(utc(2026, 1, 1)) is None


def test_a_window_past_midnight_belongs_to_the_day_it_opens() -> None:
    w = windows("Fri 22:00-06:00")
    assert not w.state(at(BERLIN, 2026, 6, 12, 21)).open  # Friday 21:00
    assert w.state(at(BERLIN, 2026, 6, 12, 23)).open
    saturday_dawn = at(BERLIN, 2026, 6, 13, 5)
    assert w.state(saturday_dawn).open
    assert w.state(saturday_dawn).until == utc(2026, 6, 13, 4)  # Saturday 06:00
    assert w.state(at(BERLIN, 2026, 6, 13, 7)).until == utc(2026, 6, 19, 20)  # next Friday
    assert not w.state(at(BERLIN, 2026, 6, 11, 23)).open  # Thursday night: not a Friday


def test_every_night_past_midnight() -> None:
    w = windows("22:00-06:00")
    assert w.state(at(BERLIN, 2026, 6, 10, 1)).until == utc(2026, 6, 10, 4)
    assert w.state(at(BERLIN, 2026, 6, 10, 12)).until == utc(2026, 6, 10, 20)


# -- daylight-saving changes -----------------------------------------------------------------


def test_a_whole_day_is_23_hours_when_clocks_go_forward_and_25_when_they_go_back() -> None:
    w = windows("Sun 00:00-24:00")
    opens, closes = first_span(w, at(BERLIN, 2026, 3, 28, 12))
    assert (opens, closes) == (utc(2026, 3, 28, 23), utc(2026, 3, 29, 22))
    assert closes - opens == dt.timedelta(hours=23)  # type: ignore[operator]
    opens, closes = first_span(w, at(BERLIN, 2026, 10, 24, 12))
    assert (opens, closes) == (utc(2026, 10, 24, 22), utc(2026, 10, 25, 23))
    assert closes - opens == dt.timedelta(hours=25)  # type: ignore[operator]


def test_office_hours_keep_their_wall_time_across_the_change() -> None:
    w = windows("Mon-Fri 09:00-20:00")
    # Friday before the spring change (CET, +1), then Monday after it (CEST, +2)
    assert w.state(at(BERLIN, 2026, 3, 27, 12)).until == utc(2026, 3, 27, 19)
    saturday = at(BERLIN, 2026, 3, 28, 10)
    assert w.state(saturday).until == utc(2026, 3, 30, 7)  # Monday 09:00 CEST
    # and back in autumn: Friday CEST, Monday CET
    assert w.state(at(BERLIN, 2026, 10, 23, 12)).until == utc(2026, 10, 23, 18)
    assert w.state(at(BERLIN, 2026, 10, 24, 10)).until == utc(2026, 10, 26, 8)


def test_a_wall_time_clocks_skip_counts_as_the_same_time_after_the_change() -> None:
    # 02:30 does not exist on 29 March 2026 in Berlin: the window opens at 03:30 CEST
    w = windows("Sun 02:30-04:00")
    assert first_span(w, at(BERLIN, 2026, 3, 28, 12)) == (
        utc(2026, 3, 29, 1, 30),
        utc(2026, 3, 29, 2),
    )
    # a window wholly in the skipped hour does not open that day; the next Sunday it does
    skipped = windows("Sun 02:00-03:00")
    assert first_span(skipped, at(BERLIN, 2026, 3, 28, 12)) == (
        utc(2026, 4, 5, 0),
        utc(2026, 4, 5, 1),
    )


def test_a_wall_time_that_occurs_twice_is_its_first_occurrence() -> None:
    # 02:30 occurs twice on 25 October 2026 in Berlin (CEST, then CET)
    w = windows("Sun 02:30-03:00")
    opens, closes = first_span(w, at(BERLIN, 2026, 10, 24, 12))
    assert (
        opens == at(BERLIN, 2026, 10, 25, 2, 30, fold=0).astimezone(UTC) == utc(2026, 10, 25, 0, 30)
    )
    assert closes == utc(2026, 10, 25, 2)  # 03:00 CET: 1.5 hours


def test_a_window_past_midnight_across_the_change() -> None:
    w = windows("Sat 22:00-06:00")
    # Saturday 22:00 CET (21:00Z) to Sunday 06:00 CEST (04:00Z): 7 hours
    assert first_span(w, at(BERLIN, 2026, 3, 28, 12)) == (utc(2026, 3, 28, 21), utc(2026, 3, 29, 4))
    # and in autumn: 22:00 CEST (20:00Z) to 06:00 CET (05:00Z): 9 hours
    assert first_span(w, at(BERLIN, 2026, 10, 24, 12)) == (
        utc(2026, 10, 24, 20),
        utc(2026, 10, 25, 5),
    )


def test_an_injected_clock_walks_across_the_spring_change() -> None:
    """A clock stepping by 10 minutes from Saturday evening to Monday morning in New York
    (clocks go forward on Sunday 8 March 2026 at 02:00): the state flips exactly at the
    openings and closings, in UTC."""
    w = windows("Sat-Sun 22:00-01:00", "Mon 08:00-09:00", zone=NEW_YORK)
    now = at(NEW_YORK, 2026, 3, 7, 20)
    flips = []
    was = w.state(now).open
    while now < utc(2026, 3, 9, 14):
        state = w.state(now)
        if state.open != was:
            flips.append((state.open, now.astimezone(NEW_YORK).strftime("%a %H:%M %Z")))
            was = state.open
        now += dt.timedelta(minutes=10)
    assert flips == [
        (True, "Sat 22:00 EST"),
        (False, "Sun 01:00 EST"),
        (True, "Sun 22:00 EDT"),
        (False, "Mon 01:00 EDT"),
        (True, "Mon 08:00 EDT"),
        (False, "Mon 09:00 EDT"),
    ]


# -- the finish time across windows ----------------------------------------------------------


def test_the_finish_time_counts_only_open_time() -> None:
    w = windows("Mon-Fri 09:00-17:00", zone=parse_zone("UTC"))
    friday_4pm = utc(2026, 6, 12, 16)
    assert w.finish(friday_4pm, 3600) == utc(2026, 6, 12, 17)
    assert w.finish(friday_4pm, 2 * 3600) == utc(2026, 6, 15, 10)  # Monday 10:00
    assert w.finish(utc(2026, 6, 13, 3), 60) == utc(2026, 6, 15, 9, 1)  # waits for Monday
    assert w.finish(utc(2026, 6, 15, 9), 5 * 8 * 3600) == utc(2026, 6, 19, 17)  # a full week
    always = windows("00:00-24:00")
    assert always.finish(friday_4pm, 90 * 86400) == friday_4pm + dt.timedelta(days=90)


def test_the_finish_time_across_the_autumn_change() -> None:
    w = windows("Sun 00:00-24:00")
    start = at(BERLIN, 2026, 10, 25, 0)
    assert w.finish(start, 24 * 3600) == utc(2026, 10, 25, 22)  # 23:00 CET: the day has 25 h
    assert w.finish(start, 26 * 3600) == utc(2026, 11, 1, 0)  # the next Sunday, 01:00 CET


def test_moments_are_shown_in_the_zone() -> None:
    now = at(BERLIN, 2026, 6, 10, 21)  # Wednesday
    assert moment_text(utc(2026, 6, 11, 7), now, BERLIN) == "Thu 09:00 Europe/Berlin"
    assert moment_text(utc(2026, 6, 10, 20), now, BERLIN) == "22:00 Europe/Berlin"
    assert moment_text(utc(2026, 6, 30, 7), now, BERLIN) == "2026-06-30 09:00 Europe/Berlin"


# -- properties ------------------------------------------------------------------------------

WINDOW_TEXTS = st.sampled_from(
    [
        "Mon-Fri 09:00-20:00",
        "Sat 10:00-14:00",
        "22:00-06:00",
        "Sun 02:30-03:30",
        "Fri-Mon 23:00-01:00",
        "Wed 00:00-24:00",
        "Tue,Thu 01:59-02:01",
    ]
)
ZONES = st.sampled_from(["Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "UTC"])
MOMENTS = st.datetimes(
    min_value=dt.datetime(2026, 1, 1), max_value=dt.datetime(2027, 12, 31), timezones=st.just(UTC)
)


@settings(max_examples=examples(300))
@given(st.lists(WINDOW_TEXTS, min_size=1, max_size=3), ZONES, MOMENTS)
def test_the_state_holds_until_it_changes_and_then_flips(
    texts: list[str], zone: str, now: dt.datetime
) -> None:
    """Whatever the windows and the zone (Lord Howe moves by half an hour), the state at ``now``
    lasts until ``until`` and the state there is the other one."""
    w = parse_windows(texts, parse_zone(zone))
    state = w.state(now)
    if state.until is None:
        assert state.open
        return
    assert state.until > now
    just_before = state.until - dt.timedelta(microseconds=1)
    assert w.state(just_before).open == state.open
    assert w.state(just_before).until == state.until
    assert w.state(state.until).open != state.open


# -- the campaign file -----------------------------------------------------------------------


def window_campaign(tmp_path: Path, send: str) -> Path:
    (tmp_path / "r.csv").write_text("vid\nv1\nv2\n")
    path = tmp_path / "campaign.toml"
    path.write_text(
        'provider = "maxtraffic"\n[message]\nmessages = [{ title = "t" }]\n'
        f'[recipients]\npath = "r.csv"\nid = "vid"\n[send]\n{send}\n'
    )
    return path


@pytest.mark.parametrize(
    ("send", "said"),
    [
        (
            'window = "Mon-Fri 09:00-20:00"',
            "[send] window needs [send] timezone, the zone its hours are in: an IANA name such "
            "as 'Europe/Berlin' (or 'UTC')",
        ),
        (
            'timezone = "Europe/Berlin"',
            "[send] timezone is set without [send] window; add a window such as "
            "'Mon-Fri 09:00-20:00', or remove timezone",
        ),
        (
            'window = "Mon-Fri 09:00-20:00"\ntimezone = "Europe/Berln"',
            "[send] timezone: 'Europe/Berln' is not an IANA time zone name; give one such as "
            "'Europe/Berlin', 'America/New_York' or 'UTC'",
        ),
        (
            'window = ["Mon-Fri 09:00-20:00", "Sunday 9-17"]\ntimezone = "UTC"',
            "[send] window: cannot read 'Sunday 9-17'; write it as [DAYS] HH:MM-HH:MM, e.g. "
            "'Mon-Fri 09:00-20:00' or '22:00-06:00'",
        ),
        (
            'window = []\ntimezone = "UTC"',
            "[send] window: is an empty array; give at least one window, e.g. "
            "'Mon-Fri 09:00-20:00'",
        ),
        (
            'window = ["09:00-20:00", 5]\ntimezone = "UTC"',
            "[send] window must be a window such as 'Mon-Fri 09:00-20:00' (text), or an array "
            "of them, got an array",
        ),
        (
            'window = "09:00-20:00"\ntimezone = 1',
            "[send] timezone must be an IANA time zone name such as 'Europe/Berlin' (text), got 1",
        ),
    ],
)
def test_a_bad_window_or_zone_is_one_line_naming_the_file_and_key(
    tmp_path: Path, send: str, said: str
) -> None:
    path = window_campaign(tmp_path, send)
    for command in (["validate"], ["send", "--dry-run"], ["send", "--sandbox"]):
        result = run_cli(*command, str(path), env={})
        assert (result.status, result.stderr) == (2, f"bulksend: error: {path}: {said}\n")


def test_validate_and_dry_run_say_when_the_send_would_finish(tmp_path: Path) -> None:
    path = window_campaign(tmp_path, 'window = "Mon-Fri 09:00-20:00"\ntimezone = "Europe/Berlin"')
    out = tmp_path / "plan.json"
    result = run_cli("validate", str(path), "--json", str(out), env={})
    assert result.status == 0, result.stderr
    assert "  window       Mon-Fri 09:00-20:00 Europe/Berlin\n" in result.stdout
    finish = re.search(
        r"  finishes     about (\w{3}) (\S+ \S+) Europe/Berlin if started now", result.stdout
    )
    assert finish is not None, result.stdout
    data = orjson.loads(out.read_bytes())
    assert data["window"] == "Mon-Fri 09:00-20:00 Europe/Berlin"
    ends = dt.datetime.fromisoformat(data["estimated_finish"])
    assert ends.strftime("%Y-%m-%d %H:%M") == finish.group(2)
    local = ends.astimezone(BERLIN)
    assert local.weekday() < 5
    assert (9, 0) <= (local.hour, local.minute) <= (20, 0)
    dry = run_cli("send", str(path), "--dry-run", "--show", "0", env={})
    assert dry.status == 0, dry.stderr
    assert "  window       Mon-Fri 09:00-20:00 Europe/Berlin\n" in dry.stdout
    assert "  finishes     about " in dry.stdout


def test_the_finish_line_with_an_injected_clock(tmp_path: Path) -> None:
    """``print_plan`` with ``now`` given: a weekend start waits for Monday and says so."""
    from bulksend.campaign import build_provider
    from bulksend.commands.common import Context
    from bulksend.commands.validate import print_plan, walk
    from bulksend.config import load_settings

    path = window_campaign(
        tmp_path,
        'window = "Mon-Fri 09:00-20:00"\ntimezone = "Europe/Berlin"\n'
        'limit = "1/1min"\nbatch_size = 1',
    )
    settings = load_settings(path, env={})
    provider = build_provider(settings, {"api_key": "x"})
    plan = walk(settings, provider)
    out = io.StringIO()
    saturday = at(BERLIN, 2026, 3, 28, 12)
    print_plan(settings, provider, plan, Context({}, out, out), title="t", now=saturday)
    # 2 requests at 1/min: a minute of sending (and the margin), from Monday 09:00 CEST
    assert "  estimated    0:01:00 at the known limits\n" in out.getvalue()
    assert (
        "  finishes     about Mon 2026-03-30 09:01 Europe/Berlin if started now (it waits for "
        "the window to open at Mon 09:00 Europe/Berlin)\n"
    ) in out.getvalue()
