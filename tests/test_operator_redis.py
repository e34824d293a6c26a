"""What an operator ran into using ``--state`` / ``--workers`` for real (issue 17), each as
real processes against a real ``redis-server`` and a sandbox process."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

pytest.importorskip("redis", reason="REDIS CLIENT MISSING: pip install 'bulksend[redis]'")

import redis

from bulksend.distributed.keys import checked_url, database_fault, redact_url, url_password
from bulksend.distributed.testing import RedisServer
from bulksend.errors import ConfigError
from bulksend.sandbox.testing import wait_until
from bulksend.state.journal import campaign_keys, masked_url
from bulksend.workers.shipped import shipped_text
from tests.conftest import KEY, run_bulksend, run_cli, write_campaign, write_recipients
from tests.test_workers_redis import Campaign, _no_process_left  # noqa: F401 (its fixture)

NO_REDIS = (
    "REDIS UNAVAILABLE -- these tests did NOT run: install redis-server "
    "(apt-get install redis-server; .ci/run does it)"
)


def private_redis(*extra: str) -> RedisServer:
    if not RedisServer.available():
        pytest.skip(NO_REDIS)
    return RedisServer(extra=list(extra))


@pytest.mark.parametrize("flag", ["--state", "--workers"])
def test_a_database_redis_refuses_is_one_line_not_a_traceback(tmp_path: Path, flag: str) -> None:
    recipients = write_recipients(tmp_path / "r.csv", [("v1", "u1"), ("v2", "u2")])
    campaign = write_campaign(tmp_path, recipients)
    with private_redis() as server:
        url = f"redis://127.0.0.1:{server.port}/99"  # (16 databases: 0-15)
        sent = run_bulksend(
            "send", str(campaign), flag, url, "--base-url", "http://127.0.0.1:9",
            "--progress", "never", "-q",
            env={"MAXTRAFFIC_API_KEY": KEY},
        )  # fmt: skip
    assert "Traceback" not in sent.stderr, sent.stderr
    assert sent.returncode == 4, sent.stderr
    assert sent.stderr.splitlines() == [
        f"bulksend: state {url} refused the state (DB index is out of range); check the URL "
        "(its database number) and the user's rights"
    ]


# -- a database that is not a number (redis-py would use database 0, or /1/2 as 12) -----------

PASSWORD = "s3cret-Pa55word"

#: what each refusal of a database says after "FLAG: URL: WHAT IS WRONG"
DB_REMEDY = (
    "; write redis://HOST:PORT/DB (or ?db=DB) with DB from 0 to 15 (a default Redis's 16 "
    "databases), or leave it out for database 0"
)


@pytest.mark.parametrize(
    ("url", "fault"),
    [
        ("redis://h:6379", None),
        ("redis://h:6379/", None),
        ("redis://h:6379/15", None),
        ("redis://h:6379/99", None),  # (a Redis may have more: the server says, exit 4)
        ("rediss://u:pw@h:6380/3?ssl_ca_certs=/etc/ca.pem", None),
        ("redis://h:6379/?db=5", None),
        ("redis://h:6379/5?db=5", None),
        ("unix:///run/redis.sock", None),
        ("unix:///run/redis.sock?db=2", None),
        ("redis://h:6379/x", "the database 'x' is not a number from 0 up"),
        ("redis://h:6379/0x", "the database '0x' is not a number from 0 up"),
        ("redis://h:6379/-1", "the database '-1' is not a number from 0 up"),
        ("redis://h:6379/1/2", "the database '1/2' is not a number from 0 up"),  # (12 to redis-py)
        ("redis://h:6379/1_0", "the database '1_0' is not a number from 0 up"),  # (10 to int())
        ("redis://h:6379/%31x", "the database '1x' is not a number from 0 up"),
        ("redis://h:6379/\u0661", "the database '\u0661' is not a number from 0 up"),
        ("redis://h:6379/?db=x", "the database ?db=x is not a number from 0 up"),
        ("unix:///run/redis.sock?db=-1", "the database ?db=-1 is not a number from 0 up"),
        ("redis://h:6379/3?db=5", "it names 2 databases (3, 5), not one"),
        ("redis://h:6379/?db=1&db=2", "it names 2 databases (1, 2), not one"),
        ("redis://h:6379/1?db=1&db=2", "it names 2 databases (1, 2), not one"),
        ("redis://h:6379/01?db=1&db=2&db=02", "it names 2 databases (01, 2), not one"),
    ],
)
def test_a_database_that_is_not_a_number_is_said_what_is_wrong(url: str, fault: str) -> None:
    assert database_fault(url) == fault


def test_a_socket_is_told_to_name_its_database_as_db() -> None:
    with pytest.raises(ConfigError) as caught:
        checked_url("unix:///run/redis.sock?db=x", "--state")
    assert str(caught.value) == (
        "--state: unix:///run/redis.sock?db=x: the database ?db=x is not a number from 0 up; "
        "write unix://PATH?db=DB with DB from 0 to 15 (a default Redis's 16 databases), or "
        "leave it out for database 0"
    )


UNREADABLE = (
    "expected redis://HOST:PORT/DB (or rediss://, unix://), got a URL whose host or port "
    "cannot be read; write PORT as a number from 0 to 65535 and an IPv6 HOST in brackets "
    "([::1]), and percent-encode [ ] in a password (%5B %5D)"
)
CUT_SHORT = (
    "the URL has an '@' after its host, as when a password holds a / ? or # (the rest of it "
    "would be read as the database or an option); percent-encode them in the password: / as "
    "%2F, ? as %3F, # as %23, @ as %40"
)

#: passwords urlsplit cuts short at an unencoded / ? # (the rest read as the path, the query,
#: the fragment, or the port: "Qwx1"), each with the parts no output may hold
CUT_PASSWORDS = [
    ("bob:Qwx1/Secrt9", ["Qwx1", "Secrt9"]),
    ("bob:Qwx1?Secrt9", ["Qwx1", "Secrt9"]),
    (":Qwx1#Tailz3", ["Qwx1", "Tailz3"]),
    ("bob:Qwx1/Jkp2?Secrt9#Tailz3", ["Qwx1", "Jkp2", "Secrt9", "Tailz3"]),
]


@pytest.mark.parametrize(
    ("url", "why", "secret"),
    [
        (f"redis://:{PASSWORD}@[::1/0", UNREADABLE, [PASSWORD]),
        (f"redis://:{PASSWORD}@h:99999/0", UNREADABLE, [PASSWORD]),
        ("redis://:Qwx1[Secrt9@h/0", UNREADABLE, ["Qwx1", "Secrt9"]),
        ("redis://bob:Qwx1@h:99999/0", UNREADABLE, ["Qwx1"]),
        ("redis://bob:Qwx1@h:Secrt9/0", UNREADABLE, ["Qwx1", "Secrt9"]),
        *[(f"redis://{info}@127.0.0.1:6379/0", CUT_SHORT, parts) for info, parts in CUT_PASSWORDS],
        ("redis://bob:Qwx1/Secrt9@[::1/0", CUT_SHORT, ["Qwx1", "Secrt9"]),
        ("unix://bob:Qwx1/Secrt9@/run/redis.sock", CUT_SHORT, ["Qwx1", "Secrt9"]),
    ],
)
def test_a_url_that_cannot_be_read_is_one_line_without_the_password(
    url: str, why: str, secret: list[str]
) -> None:
    """Neither the URL nor urlsplit's error (which quotes a port) is echoed: either may hold
    part of the password."""
    with pytest.raises(ConfigError) as caught:
        checked_url(url, "--state")
    assert str(caught.value) == f"--state: {why}"
    assert not [part for part in secret if part in str(caught.value)]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://bob:Qwx1/Secrt9@127.0.0.1:6379/0", "redis://***@127.0.0.1:6379/0"),
        ("redis://bob:Qwx1?Secrt9@127.0.0.1:6379/0", "redis://***@127.0.0.1:6379/0"),
        ("redis://:Qwx1#Tailz3@h/0", "redis://***@h/0"),
        (
            "rediss://bob:Qwx1/Secrt9@h:6380/2?ssl_ca_certs=/a/ca.pem",
            "rediss://***@h:6380/2?ssl_ca_certs=/a/ca.pem",
        ),
        ("redis://:Qwx1/a@h/0?password=Secrt9", "redis://***@h/0?password=***"),
        ("redis://h/0?password=Qwx1@Secrt9", "redis://***"),  # (it may go on past the @)
        ("REDIS://:Qwx1/Secrt9@h/0", "REDIS://***@h/0"),
        ("bob:Qwx1/Secrt9@h:6379/0", "***@h:6379/0"),  # (no scheme: all up to the @)
        ("redis://bob:Qwx1/Secrt9@[::1/0", "redis://***@[::1/0"),
        ("redis://:Qwx1[Secrt9@h/0", "redis://***@h/0"),  # (urlsplit cannot read it)
        ("redis://bob:Qwx1@Secrt9@h:6379/0", "redis://bob:***@h:6379/0"),  # (read as meant)
        ("redis://bob:Qwx1%2FSecrt9@h/0", "redis://bob:***@h/0"),
        ("localhost:6379", "localhost:6379"),
        ("redis://h:6379/0?ssl_ca_certs=/a/ca.pem", "redis://h:6379/0?ssl_ca_certs=/a/ca.pem"),
    ],
)
def test_a_password_urlsplit_cuts_short_is_masked_whole(url: str, shown: str) -> None:
    """A password holding an unencoded / ? # hides all that precedes the URL's last @."""
    assert redact_url(url) == shown
    assert url_password(url) is not None or "@" not in url
    assert not [part for part in ("Qwx1", "Secrt9", "Tailz3") if part in shown]


def test_a_campaign_file_url_cut_short_is_masked_where_kept_and_shipped() -> None:
    """The journal's copy of the campaign's keys and the text shipped to workers."""
    url = "redis://bob:Qwx1/Secrt9@127.0.0.1:6379/0"
    assert campaign_keys({"send": {"limiter": url}}) == {
        "[send].limiter": "redis://***@127.0.0.1:6379/0"
    }
    assert masked_url(url) == "redis://***@127.0.0.1:6379/0"
    shipped = shipped_text(f'[send]\nstate = "{url}"\nlimiter = "redis://:Qwx1#Tailz3@h/0"\n')
    assert (
        shipped == '[send]\nstate = "redis://***@127.0.0.1:6379/0"\nlimiter = "redis://***@h/0"\n'
    )


@pytest.mark.parametrize(
    ("info", "parts"), [*CUT_PASSWORDS, ("bob:Qwx1@Secrt9", ["Qwx1", "Secrt9"])]
)
def test_a_password_cut_short_is_in_no_output_of_any_command(
    tmp_path: Path, info: str, parts: list[str]
) -> None:
    """Every command that takes a Redis URL, as a real process: a password with an unencoded
    / ? # is refused before Redis is touched (exit 2) in one line that says to percent-encode
    it; one with an unencoded @ (which urlsplit reads as meant) reaches Redis, which refuses
    it (exit 4). No part of the password is in any output."""
    with private_redis("--requirepass", PASSWORD) as server:
        url = f"redis://{info}@127.0.0.1:{server.port}/0"
        ran = {
            flag: run_bulksend(*argv, env={"MAXTRAFFIC_API_KEY": KEY})
            for flag, argv in bad_database_runs(tmp_path, url).items()
        }
        written = database_sizes(server, PASSWORD)
    refused_here = "@" not in info.partition(":")[2]
    for flag, done in ran.items():
        printed = done.stdout + done.stderr
        assert not [p for p in parts if p in printed], (flag, printed)
        assert "Traceback" not in printed, (flag, printed)
        (line,) = done.stderr.splitlines()
        if refused_here:
            assert (done.returncode, done.stdout) == (2, ""), (flag, printed)
            assert line == f"bulksend: error: {flag}: {CUT_SHORT}", flag
        else:
            assert done.returncode == 4, (flag, printed)
            assert "refused the connection" in line, (flag, line)
            assert line.endswith("; check the user name and password"), (flag, line)
            assert f"bob:***@127.0.0.1:{server.port}/0" in line, (flag, line)
    assert set(written.values()) == {0}, written


def database_sizes(server: RedisServer, password: str | None = None) -> dict[int, int]:
    """How many keys each of the server's 16 databases holds."""
    sizes = {}
    for n in range(16):
        with redis.Redis(host=server.host, port=server.port, db=n, password=password) as client:
            sizes[n] = int(client.dbsize())
    return sizes


def bad_database_runs(tmp_path: Path, url: str) -> dict[str, list[str]]:
    """Every command that takes a Redis URL, given ``url`` (each its argv)."""
    recipients = write_recipients(tmp_path / "r.csv", [("v1", "u1"), ("v2", "u2")])
    campaign = str(write_campaign(tmp_path, recipients))
    send = ["send", campaign, "--base-url", "http://127.0.0.1:9", "--progress", "never", "-q"]
    return {
        "--state": [*send, "--state", url],
        "--limiter": [*send, "--limiter", url],
        "--workers": [*send, "--workers", url],
        "bulksend worker": ["worker", url, "--wait", "1"],
        "bulksend status": ["status", url, "E2E"],
        "bulksend pause": ["pause", url, "--campaign", "E2E"],
        "bulksend resume": ["resume", url, "--campaign", "E2E"],
    }


def test_a_database_that_is_not_a_number_is_refused_by_every_command(tmp_path: Path) -> None:
    """``/x`` is database 0 to redis-py: each command that takes a Redis URL refuses it before
    touching Redis (exit 2, one line naming the flag, the URL without its password, what is
    wrong and what to do); nothing is written in any database."""
    with private_redis("--requirepass", PASSWORD) as server:
        url = f"redis://:{PASSWORD}@127.0.0.1:{server.port}/x"
        shown = f"redis://:***@127.0.0.1:{server.port}/x"
        ran = {
            flag: run_cli(*argv, env={"MAXTRAFFIC_API_KEY": KEY})
            for flag, argv in bad_database_runs(tmp_path, url).items()
        }
        written = database_sizes(server, PASSWORD)
    for flag, done in ran.items():
        assert (done.status, done.stdout) == (2, ""), (flag, done.stderr)
        assert done.stderr.splitlines() == [
            f"bulksend: error: {flag}: {shown}: the database 'x' is not a number from 0 up"
            + DB_REMEDY
        ], flag
    assert set(written.values()) == {0}, written


@pytest.mark.parametrize("path", ["/0x", "/-1", "/1/2", "/2?db=3"])
def test_each_bad_database_is_one_line_from_a_real_process(path: str) -> None:
    """As above, from ``python -m bulksend`` (no traceback, the password nowhere)."""
    with private_redis("--requirepass", PASSWORD) as server:
        url = f"redis://:{PASSWORD}@127.0.0.1:{server.port}{path}"
        done = run_bulksend("pause", url, "--campaign", "E2E")
    assert done.returncode == 2, done.stderr
    assert PASSWORD not in done.stdout + done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"bulksend: error: bulksend pause: redis://:***@127.0.0.1:{server.port}")
    assert line.endswith(DB_REMEDY)


def test_a_database_the_server_lacks_is_one_line_for_every_command(tmp_path: Path) -> None:
    """``/99`` is a number, which the server refuses (16 databases): one line, exit 4."""
    with private_redis("--requirepass", PASSWORD) as server:
        url = f"redis://:{PASSWORD}@127.0.0.1:{server.port}/99"
        shown = f"redis://:***@127.0.0.1:{server.port}/99"
        ran = {
            flag: run_cli(*argv, env={"MAXTRAFFIC_API_KEY": KEY})
            for flag, argv in bad_database_runs(tmp_path, url).items()
        }
    for flag, done in ran.items():
        assert done.status == 4, (flag, done.stderr)
        (line,) = done.stderr.splitlines()
        assert line.startswith(("bulksend: state ", "bulksend: limiter ", f"bulksend: {shown}"))
        assert line.endswith(
            "(DB index is out of range); check the URL (its database number) and the user's rights"
        ), line
        assert PASSWORD not in done.stdout + done.stderr
    assert ran["bulksend worker"].stderr == (
        f"bulksend: {shown} refused the worker (DB index is out of range); check the URL "
        "(its database number) and the user's rights\n"
    )
    assert ran["bulksend pause"].stderr == (
        f"bulksend: {shown} (campaign 'E2E'): cannot pause: Redis refused it (DB index is out "
        "of range); check the URL (its database number) and the user's rights\n"
    )


@pytest.mark.parametrize(
    ("path", "db"), [("", 0), ("/", 0), ("/5", 5), ("/?db=5", 5), ("/5?db=5", 5), ("/07", 7)]
)
def test_a_database_written_as_a_number_is_the_one_used(path: str, db: int) -> None:
    """The forms accepted reach the database they name: ``bulksend pause`` writes the
    campaign's pause key there and nowhere else."""
    with private_redis() as server:
        url = f"redis://127.0.0.1:{server.port}{path}"
        done = run_cli("pause", url, "--campaign", "E2E")
        sizes = database_sizes(server)
    assert done.status == 0, done.stderr
    assert {n for n, size in sizes.items() if size} == {db}, sizes


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("--idle", "0", "a number > 0"),  # (every worker would take every batch over at once)
        ("--idle", "-1", "a number > 0"),
        ("--idle", "nan", "a number > 0"),
        ("--wait", "-1", "a number >= 0"),
    ],
)
def test_worker_refuses_an_idle_or_wait_that_cannot_work(
    flag: str, value: str, expected: str
) -> None:
    ran = run_bulksend("worker", "redis://127.0.0.1:9/0", flag, value)
    assert ran.returncode == 2, ran.stderr
    assert ran.stderr.splitlines()[-1] == (
        f"bulksend worker: error: argument {flag}: expected {expected}, got '{value}'"
    )


def test_a_pause_longer_than_idle_takes_no_batch_over(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """A paused worker keeps refreshing what it holds: a pause longer than ``--idle`` (the
    normal case: minutes against 30 s) makes no worker take another's batches over after
    ``bulksend resume`` (before, each worker's feed stood still while its engine queue was
    full, and the others took its batches over, saying so in warnings and resending what was
    in flight)."""
    run = Campaign(tmp_path, n_unique=3_000, limit=100)
    run.plan(redis_server.url)
    for i in range(2):
        run.worker(redis_server.url, f"w{i}", "--idle", "1")
    wait_until(lambda: run.delivered() > 300, timeout=20, interval=0.1)
    paused = run_bulksend("pause", redis_server.url, "--campaign", "E2E")
    assert paused.returncode == 0, paused.stderr
    time.sleep(4)  # four times --idle
    during = run_bulksend("status", redis_server.url, "E2E")
    resumed = run_bulksend("resume", redis_server.url, "--campaign", "E2E")
    assert resumed.returncode == 0, resumed.stderr
    assert run.planner is not None
    try:
        _, err = run.planner.communicate(timeout=60)
        workers = {name: p.communicate(timeout=60)[1] for name, p in run.workers.items()}
    finally:
        run.stop()
    assert run.planner.returncode == 0, err[-3000:]
    for name, werr in workers.items():
        assert "taken over" not in werr, werr[-3000:]
        assert run.workers[name].returncode == 0, werr[-3000:]
    assert "seen 0 s ago" in during.stdout or "seen 1 s ago" in during.stdout, during.stdout
    summary = run.check()
    assert summary["possible_duplicates"] == 0


def test_a_batch_both_workers_delivered_is_reported_as_arrived_twice() -> None:
    """The batch changed hands twice (w0, w1, w0 again: seen with two workers and a tiny
    --idle): w0's record says delivered, w1's resend -- delivered too -- was kept apart as
    the late outcome. Both requests were answered, so the rows arrived twice: reported so
    (before, w0's record stood and the duplicate went unreported)."""
    from bulksend.workers.late import reconcile

    mine = {"state": "delivered", "reason": "", "http": 200, "size": 3}
    late = {
        "worker": "w1",
        "record": {
            "state": "delivered",
            "reason": "may have arrived twice: resent after run 2 was interrupted",
            "http": 200,
        },
        "parts": {},
    }
    record, parts = reconcile(mine, {}, late)
    assert record["state"] == "delivered"
    assert record["reason"] == (
        "may have arrived twice: delivered by two workers' requests (worker w1's too: the "
        "batch was taken over while it was in flight)"
    )
    assert (record["size"], parts) == (3, {})
    # split: the row both delivered is marked, the others stand
    split = {"state": "split", "reason": "", "http": None}
    parts_in = {
        1: {"state": "delivered", "reason": "", "http": 200},
        2: {"state": "invalid", "reason": "bad id", "http": 422},
    }
    their_parts = {"9:1": {"state": "delivered", "reason": "", "http": 200}}
    record, parts = reconcile(split, parts_in, {**late, "record": split, "parts": their_parts})
    assert parts[1]["reason"].startswith("may have arrived twice: delivered by two workers'")
    assert parts[2] == parts_in[2]


def test_a_delivery_reported_from_the_late_outcome_is_not_counted_twice() -> None:
    """A takeover that did not send the rows (the late outcome said they were delivered) and
    the late outcome itself: one request, so not a duplicate."""
    from bulksend.workers.late import reconcile

    told = {
        "state": "delivered",
        "reason": "delivered by worker w0's request (in flight when this batch was taken over "
        "from it); not sent again",
        "http": None,
    }
    late = {"worker": "w0", "record": {"state": "delivered", "reason": "", "http": 200}}
    record, _ = reconcile(told, {}, late)
    assert record["reason"] == told["reason"]
