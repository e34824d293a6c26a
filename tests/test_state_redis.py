"""The journal in Redis (``--state redis://...``, issue 17 "Resume anywhere") against real
``redis-server`` processes and a sandbox process that keeps a per-request ledger.

A send killed with kill -9 resumes from Redis: every recipient arrives once except the rows it
reports as possible duplicates; the CI re-run case (the working directory deleted, the campaign
cloned again) sends nothing confirmed again; the persistence check warns in one line; a password
in the URL is never printed. The records and guarantees are the SQLite journal's: the same
operations on both give the same records.

Redis comes from ``BULKSEND_TEST_REDIS`` (``.ci/run`` starts one) or a private ``redis-server``
started here; tests that need their own settings (persistence, ACL users) always start a private
one. They skip, loudly, only when neither is possible.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

pytest.importorskip("redis", reason="REDIS CLIENT MISSING: pip install 'bulksend[redis]'")

import redis.asyncio as aioredis

from bulksend.distributed.testing import RedisServer
from bulksend.errors import ConfigError, UnavailableError
from bulksend.models import Batch, Recipient
from bulksend.sandbox.ledger import ledger_counts
from bulksend.sandbox.testing import SandboxProcess
from bulksend.state.journal import BatchJournal, Identity, Journal, file_fingerprint
from bulksend.state.redis_journal import RedisJournal, persistence_problem, state_keys
from tests.conftest import KEY, ROOT, run_cli, write_recipients

NO_REDIS = (
    "REDIS UNAVAILABLE -- the --state tests did NOT run: install redis-server "
    "(apt-get install redis-server; .ci/run does it) or set BULKSEND_TEST_REDIS"
)
ENV = {"MAXTRAFFIC_API_KEY": KEY}
PASSWORD = "s3cret-Pa55word"


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    url = os.environ.get("BULKSEND_TEST_REDIS")
    if url:
        yield url
        return
    if not RedisServer.available():
        pytest.skip(NO_REDIS)
    with RedisServer() as server:
        yield server.url


def private_redis(*extra: str) -> RedisServer:
    """A redis-server of the test's own, with ``extra`` arguments (persistence, users)."""
    if not RedisServer.available():
        pytest.skip(NO_REDIS + " (this test needs the redis-server binary)")
    return RedisServer(extra=extra)


def campaign_in(folder: Path, rows: list[tuple[str, str]], name: str, extra: str = "") -> Path:
    """``folder/campaign.toml`` naming ``r.csv`` beside it (relative: the folder can move)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_recipients(folder / "r.csv", rows)
    path = folder / "campaign.toml"
    path.write_text(
        f'provider = "maxtraffic"\nname = "{name}"\n[message]\n'
        'messages = [{ title = "Hello", body = "World" }]\n'
        '[recipients]\npath = "r.csv"\nid = "vid"\nuid = "uid"\n'
        f"[send]\nbatch_size = 10\nin_flight = 4\n{extra}"
    )
    return path


def unique_name() -> str:
    return f"state-test-{secrets.token_hex(4)}"  # (BULKSEND_TEST_REDIS is shared by the tests)


def ledger_ids(path: Path) -> Counter[str]:
    return ledger_counts(path, "id")


def lines_with(text: str, marker: str) -> list[str]:
    return [x for x in text.splitlines() if marker in x and not x.startswith("{")]


def start_send(cwd: Path, *args: str) -> subprocess.Popen[str]:
    """``python -m bulksend send ARGS`` in ``cwd`` (this checkout's bulksend)."""
    env = {**os.environ, **ENV, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "bulksend", "send", *args, "--quiet", "--progress", "never"],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_arrivals(ledger: Path, count: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while sum(ledger_ids(ledger).values()) < count:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the send made no progress"
        time.sleep(0.02)


def kill_9(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)  # no clean-up of any kind
    proc.communicate()
    time.sleep(0.3)  # what the sandbox was still answering lands in the ledger


def report_rows(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


# -- kill -9 mid-send, resumed from Redis --------------------------------------------------------

BIG = 3_000


def test_a_send_killed_with_kill_9_resumes_from_redis_and_marks_what_was_in_flight(
    tmp_path: Path, redis_url: str
) -> None:
    """Run 1 is killed (-9) mid-send; the same command finishes. Every unique recipient is in
    the sandbox's ledger, once, except rows the report names possible duplicates; the report of
    the resumed run accounts for every row of the file (duplicates in the file included)."""
    unique = [(f"v{i:05d}", f"u{i:05d}") for i in range(BIG)]
    rows = unique + unique[:: BIG // 100]  # 100 rows twice in the file: deduplicated
    campaign = campaign_in(tmp_path / "c", rows, unique_name())
    ledger = tmp_path / "ledger.jsonl"
    report, summary = tmp_path / "report.jsonl", tmp_path / "summary.json"
    sandbox = SandboxProcess(
        "maxtraffic", "--api-key", KEY, "--ledger", str(ledger), "--limit", "100000",
        "--latency-ms", "40", "--drop-after-accept-rate", "0.03", "--seed", "7",
    )  # fmt: skip
    with sandbox as sb:
        send = (str(campaign), "--base-url", sb.base_url, "--state", redis_url)
        first = start_send(tmp_path, *send)
        wait_for_arrivals(ledger, BIG // 3, first)
        kill_9(first)
        second = start_send(
            tmp_path, *send, "--report", str(report), "--summary-json", str(summary)
        )
        _, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    resuming = lines_with(err, "resuming")
    assert len(resuming) == 1, err
    assert "with an unknown outcome" in resuming[0]
    ids = ledger_ids(ledger)
    assert set(ids) == {v for v, _ in unique}
    out = report_rows(report)
    assert len(out) == len(rows)  # every row of the file, in the resumed run's report
    marked = {x["id"] for x in out if x["reason"].startswith("may have arrived twice")}
    assert marked
    assert {i for i, n in ids.items() if n > 1} <= marked
    s = orjson.loads(summary.read_bytes())
    assert (s["delivered"], s["duplicates"]) == (BIG, len(rows) - BIG)
    assert 0 < s["delivered_earlier"] < BIG
    assert s["possible_duplicates"] == len(marked)
    reasons = {x["reason"] for x in out if x["id"] in marked}
    assert any("interrupted with the request in flight" in r for r in reasons), reasons


# -- the CI re-run case ------------------------------------------------------------------------


def git(*args: str, cwd: Path) -> None:
    subprocess.run(
        ["git", "-c", "user.name=ci", "-c", "user.email=ci@example.invalid", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
    )


def test_the_ci_rerun_case_a_fresh_clone_sends_nothing_confirmed_again(
    tmp_path: Path, redis_url: str
) -> None:
    """A CI job sends with --state and dies (kill -9); its working directory is thrown away;
    the re-run clones the campaign again and runs the same command: it resumes from Redis."""
    if shutil.which("git") is None:
        pytest.skip("GIT UNAVAILABLE: the CI re-run case needs git to clone the campaign")
    unique = [(f"v{i:05d}", f"u{i:05d}") for i in range(BIG)]
    origin = tmp_path / "origin"
    campaign_in(origin, unique, unique_name())
    git("init", "-q", cwd=origin)
    git("add", ".", cwd=origin)
    git("commit", "-q", "-m", "campaign", cwd=origin)
    ledger = tmp_path / "ledger.jsonl"
    sandbox = SandboxProcess(
        "maxtraffic", "--api-key", KEY, "--ledger", str(ledger), "--limit", "100000",
        "--latency-ms", "40",
    )  # fmt: skip
    work = tmp_path / "work"
    with sandbox as sb:
        command = ("campaign.toml", "--base-url", sb.base_url, "--state", redis_url)
        git("clone", "-q", str(origin), str(work), cwd=tmp_path)
        first = start_send(work, *command)
        wait_for_arrivals(ledger, BIG // 2, first)
        kill_9(first)
        sent_before = ledger_ids(ledger)
        shutil.rmtree(work)  # the runner is thrown away, and with it any file the send wrote
        git("clone", "-q", str(origin), str(work), cwd=tmp_path)
        again = start_send(
            work, *command, "--summary-json", "summary.json", "--report", "report.jsonl"
        )
        _, err = again.communicate(timeout=120)
        assert again.returncode == 0, err
    assert len(lines_with(err, "resuming")) == 1, err
    s = orjson.loads((work / "summary.json").read_bytes())
    ids = ledger_ids(ledger)
    assert set(ids) == {v for v, _ in unique}
    twice = {i for i, n in ids.items() if n > 1}
    out = report_rows(work / "report.jsonl")
    marked = {x["id"] for x in out if x["reason"].startswith("may have arrived twice")}
    assert twice <= marked  # only what was in flight at the kill went again, marked
    assert len(marked) == s["possible_duplicates"]
    assert len(out) == BIG
    assert s["delivered"] == BIG
    assert s["delivered_earlier"] >= len(sent_before) - s["possible_duplicates"]
    assert s["requests"] == (BIG - s["delivered_earlier"]) // 10


# -- the persistence check -----------------------------------------------------------------------


def sandbox_send(campaign: Path, url: str, *extra: str) -> Any:
    return run_cli(
        "send", str(campaign), "--sandbox", "--state", url, "-q", "--progress", "never", *extra
    )


ROWS = [(f"v{i:03d}", f"u{i:03d}") for i in range(40)]


@pytest.mark.parametrize(
    ("settings", "warned"),
    [
        pytest.param(("--appendonly", "no"), "appendonly no", id="no-aof"),
        pytest.param(
            ("--appendonly", "yes", "--appendfsync", "no"), "appendfsync no", id="fsync-no"
        ),
        pytest.param(("--appendonly", "yes", "--appendfsync", "everysec"), "", id="everysec"),
        pytest.param(("--appendonly", "yes", "--appendfsync", "always"), "", id="always"),
    ],
)
def test_redis_persistence_that_can_lose_writes_is_warned_in_one_line(
    tmp_path: Path, settings: tuple[str, ...], warned: str
) -> None:
    campaign = campaign_in(tmp_path, ROWS, unique_name())
    with private_redis(*settings) as server:
        result = sandbox_send(campaign, server.url)
    assert result.status == 0, result.stderr
    warnings = lines_with(result.stderr, "warning:")
    if not warned:
        assert warnings == [], result.stderr
        return
    assert len(warnings) == 1, result.stderr
    assert warnings[0].startswith(f"bulksend: warning: state {server.url} ")
    assert warned in warnings[0]
    assert "without counting them as possible duplicates" in warnings[0]


def test_the_warning_names_what_is_wrong_and_what_it_means() -> None:
    where = "redis://h:6379/0"
    assert persistence_problem("yes", "everysec", where) == ""
    assert persistence_problem("yes", "always", where) == ""
    no_aof = persistence_problem("no", "everysec", where)
    assert "(appendonly no)" in no_aof
    assert "set appendonly yes" in no_aof
    assert "(appendfsync no)" in persistence_problem("yes", "no", where)


# -- ACL users, passwords, rediss:// ---------------------------------------------------------------

ACL = (
    "--user", "default", "off",
    "--user", "sender", "on", f">{PASSWORD}", "~bulksend:*", "+@all", "-config",
)  # fmt: skip


def test_an_acl_user_works_its_password_is_never_printed_and_config_get_is_said_once(
    tmp_path: Path,
) -> None:
    campaign = campaign_in(tmp_path, ROWS, unique_name())
    with private_redis(*ACL) as server:
        url = f"redis://sender:{PASSWORD}@127.0.0.1:{server.port}/0"
        first = sandbox_send(campaign, url, "--summary-json", str(tmp_path / "s.json"))
        again = sandbox_send(campaign, url)
        wrong = sandbox_send(campaign, url.replace(PASSWORD, "wrong-" + PASSWORD))
    assert first.status == 0, first.stderr
    notes = lines_with(first.stderr, "CONFIG GET")
    assert len(notes) == 1, first.stderr
    assert notes[0].startswith("bulksend: note: cannot check whether state redis://sender:***@")
    assert "no permissions" in notes[0]
    assert again.status == 0, again.stderr
    assert len(lines_with(again.stderr, "resuming")) == 1, again.stderr
    assert wrong.status != 0
    assert lines_with(wrong.stderr, "bulksend:") == [
        f"bulksend: state redis://sender:***@127.0.0.1:{server.port}/0 refused the connection "
        "(invalid username-password pair or user is disabled.); check the user name and password"
    ]
    for result in (first, again, wrong):
        assert PASSWORD not in result.stdout + result.stderr
    assert PASSWORD not in (tmp_path / "s.json").read_text()


def test_an_unreachable_state_is_one_line_without_the_password(tmp_path: Path) -> None:
    campaign = campaign_in(tmp_path, ROWS, unique_name())
    with private_redis() as server:
        port = server.port
    url = f"rediss://sender:{PASSWORD}@127.0.0.1:{port}/0"  # stopped: nothing listens there
    result = sandbox_send(campaign, url)
    assert result.status != 0
    assert result.stderr.count("\n") == 1, result.stderr
    assert f"state rediss://sender:***@127.0.0.1:{port}/0 is unreachable" in result.stderr
    assert PASSWORD not in result.stdout + result.stderr


# -- what is refused, what starts over, expiry ------------------------------------------------


def test_a_changed_recipient_file_is_refused_naming_it_and_fresh_starts_over(
    tmp_path: Path, redis_url: str
) -> None:
    campaign = campaign_in(tmp_path, ROWS, unique_name())
    assert sandbox_send(campaign, redis_url).status == 0
    write_recipients(tmp_path / "r.csv", [*ROWS, ("v999", "u999")])
    refused = sandbox_send(campaign, redis_url)
    assert refused.status == 2, refused.stderr
    (error,) = lines_with(refused.stderr, "bulksend: error:")
    assert error.startswith(f"bulksend: error: state {redis_url}: cannot resume: ")
    assert "the recipient file changed" in refused.stderr
    assert "--fresh" in refused.stderr
    summary = tmp_path / "s.json"
    fresh = sandbox_send(campaign, redis_url, "--fresh", "--summary-json", str(summary))
    assert fresh.status == 0, fresh.stderr
    s = orjson.loads(summary.read_bytes())
    assert (s["delivered"], s["delivered_earlier"]) == (len(ROWS) + 1, 0)
    again = sandbox_send(campaign, redis_url, "--summary-json", str(summary))
    assert again.status == 0, again.stderr
    assert orjson.loads(summary.read_bytes())["delivered_earlier"] == len(ROWS) + 1


def test_a_changed_message_is_refused_a_changed_rate_resumes(
    tmp_path: Path, redis_url: str
) -> None:
    campaign = campaign_in(tmp_path, ROWS, unique_name())
    assert sandbox_send(campaign, redis_url).status == 0
    text = campaign.read_text()
    campaign.write_text(text + 'rate = "600/min"\n')
    resumed = sandbox_send(campaign, redis_url)
    assert resumed.status == 0, resumed.stderr
    assert "[send].rate changed (was none, now 600/60s)" in resumed.stderr
    campaign.write_text(text.replace('body = "World"', 'body = "Everyone"'))
    refused = sandbox_send(campaign, redis_url)
    assert refused.status == 2, refused.stderr
    assert "the campaign file changed" in refused.stderr


async def test_keys_expire_after_the_ttl_once_finished_and_not_while_unfinished(
    tmp_path: Path, redis_url: str
) -> None:
    name = unique_name()
    campaign = campaign_in(tmp_path, ROWS, name, extra='state_ttl = "2h"\n')
    result = await asyncio.to_thread(sandbox_send, campaign, redis_url)
    assert result.status == 0, result.stderr
    keys = state_keys("maxtraffic", "sandbox", name, file_fingerprint(tmp_path / "r.csv"))
    client = aioredis.Redis.from_url(redis_url)
    try:
        named = (keys.campaign, keys.batches, keys.runs, keys.run, keys.current)
        ttls = [await client.ttl(key) for key in named]
        assert all(7000 < t <= 7200 for t in ttls), ttls
        journal = await RedisJournal.open(
            redis_url,
            await asyncio.to_thread(_identity_of, campaign),
            provider="maxtraffic",
            fingerprint="sandbox",
            name=name,
        )  # a run starts: nothing expires while it goes
        assert [await client.ttl(key) for key in (keys.campaign, keys.batches)] == [-1, -1]
        await journal.aclose("stopped: SIGINT")
        assert await client.ttl(keys.batches) == -1
    finally:
        await client.aclose()


def _identity_of(campaign: Path) -> Identity:
    from bulksend.campaign import identity
    from bulksend.config import load_settings

    return identity(load_settings(campaign, env={}))


@pytest.mark.parametrize(
    ("flags", "error"),
    [
        (("--journal", "j.journal"), "--state and --journal contradict each other; choose one"),
        (("--no-journal",), "--state and --no-journal contradict each other; choose one"),
        (("--shard", "0/2"), "--state does not go with --shard yet"),
    ],
)
def test_flags_that_contradict_state_are_refused(
    tmp_path: Path, flags: tuple[str, ...], error: str
) -> None:
    campaign = campaign_in(tmp_path, ROWS, unique_name())
    result = sandbox_send(campaign, "redis://127.0.0.1:9/0", *flags)
    assert result.status == 2
    assert result.stderr.startswith(f"bulksend: error: {error}"), result.stderr


def test_state_from_the_environment_and_the_campaign_file(tmp_path: Path, redis_url: str) -> None:
    name = unique_name()
    campaign = campaign_in(tmp_path, ROWS, name, extra='state = "http://nope"\n')
    run = ("send", str(campaign), "--sandbox", "-q", "--progress", "never")
    bad = run_cli(*run)
    assert bad.status == 2
    assert "--state: expected redis://HOST:PORT/DB" in bad.stderr
    campaign_in(tmp_path, ROWS, name)
    first = run_cli(*run, env={"BULKSEND_STATE": redis_url})
    assert first.status == 0, first.stderr
    assert "resuming" not in first.stderr
    campaign_in(tmp_path, ROWS, name, extra=f'state = "{redis_url}"\n')
    again = run_cli(*run)
    assert len(lines_with(again.stderr, "resuming")) == 1, again.stderr


def test_a_local_journal_that_kept_sends_refuses_state_until_fresh(
    tmp_path: Path, redis_url: str
) -> None:
    campaign = campaign_in(tmp_path, ROWS, unique_name())
    local = tmp_path / ".bulksend" / "campaign.journal"
    assert run_cli("send", str(campaign), "--sandbox", "--journal", str(local), "-q").status == 0
    refused = sandbox_send(campaign, redis_url)
    assert refused.status == 2
    assert "which --state would not see" in refused.stderr, refused.stderr
    fresh = sandbox_send(campaign, redis_url, "--fresh")
    assert fresh.status == 0, fresh.stderr
    assert "moved to" in fresh.stderr
    assert not local.exists()


# -- the same records as the SQLite journal --------------------------------------------------


def batch(number: int, n: int = 3) -> Batch:
    start = number * 10
    return Batch(number, "g", [Recipient(start + i, f"id{start + i}") for i in range(n)])


async def one_run(journal: BatchJournal) -> None:
    for n in (1, 2, 3, 4):
        await journal.in_flight(batch(n))
    journal.finished(batch(1), "delivered", "", 200)
    journal.finished(
        batch(2), "split", parts=[(20, "delivered", "", 200), (21, "unknown", "no answer", None)]
    )
    journal.finished(batch(4), "failed", "503", 503, doubt="resent after a request got no answer")
    journal.set_planned(5)  # (batch 3 is left in flight)


async def test_both_journals_keep_the_same_records(tmp_path: Path, redis_url: str) -> None:
    ident = Identity(campaign="c1", recipients=f"r-{secrets.token_hex(4)}", plan="p1")
    name = unique_name()

    async def open_sqlite(**kw: Any) -> BatchJournal:
        return Journal.open(tmp_path / "j", ident, **kw)

    async def open_redis(**kw: Any) -> BatchJournal:
        return await RedisJournal.open(
            redis_url, ident, provider="p", fingerprint="f", name=name, **kw
        )

    seen = []
    for opener in (open_sqlite, open_redis):
        journal = await opener()
        assert not journal.resumed
        assert journal.opening_note() == ""
        await one_run(journal)
        await journal.aclose("crashed: KeyboardInterrupt")
        again = await opener(resume=True)
        records = [again.previous(n) for n in range(6)]
        parts = [again.parts(n) for n in range(6)]
        note = again.opening_note().replace(again.where, "WHERE")
        resent = batch(3)
        resent.attempts = 1
        await again.in_flight(resent)  # resent by the second run
        again.finished(resent, "delivered", "may have arrived twice: resent", 200)
        await again.aclose()
        third = await opener(resume=True)
        later = third.previous(3)
        await third.aclose()
        seen.append((records, parts, note, later))
    assert seen[0] == seen[1]
    records, _, note, _ = seen[1]
    assert [r.state if r else None for r in records] == [
        None, "delivered", "split", "in_flight", "failed", None,
    ]  # fmt: skip
    assert note == (
        "resuming: 1 of 5 batches settled by an earlier run, 1 with an unknown outcome "
        "(WHERE; --fresh starts over)"
    )


async def test_resume_requires_a_state_and_fresh_discards_it(redis_url: str) -> None:
    ident = Identity(campaign="c1", recipients=f"r-{secrets.token_hex(4)}", plan="p1")
    kw: dict[str, Any] = {"provider": "p", "fingerprint": "f", "name": unique_name()}
    with pytest.raises(ConfigError, match="no state of this campaign to resume"):
        await RedisJournal.open(redis_url, ident, resume=True, **kw)
    journal = await RedisJournal.open(redis_url, ident, **kw)
    await journal.in_flight(batch(1))
    await journal.aclose()
    fresh = await RedisJournal.open(redis_url, ident, fresh=True, **kw)
    assert not fresh.resumed
    await fresh.aclose()


async def test_an_in_flight_mark_redis_cannot_take_raises_and_is_written_later(
    tmp_path: Path,
) -> None:
    """Redis gone mid-send: ``in_flight`` raises (the batch must not be sent); the marks and
    states queued meanwhile are written, in order, once it is back."""
    ident = Identity(campaign="c1", recipients="r1", plan="p1")
    with private_redis("--appendonly", "yes", "--appendfsync", "always") as server:
        kw: dict[str, Any] = {"provider": "p", "fingerprint": "f", "name": "n"}
        journal = await RedisJournal.open(server.url, ident, connect_timeout=0.5, **kw)
        await journal.in_flight(batch(1))
        server.kill()
        with pytest.raises(UnavailableError, match="cannot record the batches"):
            await journal.in_flight(batch(2))
        journal.finished(batch(2), "skipped", "not sent")
        server.start()
        await journal.aclose("stopped: state unavailable")
        again = await RedisJournal.open(server.url, ident, **kw)
        assert [again.previous(n).state for n in (1, 2)] == ["in_flight", "skipped"]  # type: ignore[union-attr]
        await again.aclose()


# -- Redis lost mid-send, an API key changed ------------------------------------------------


def test_redis_lost_mid_send_stops_the_send_and_the_same_command_resumes(tmp_path: Path) -> None:
    """Redis (AOF, appendfsync always) is killed mid-send: nothing more is sent, the send stops
    with one line, exit 4; once it is back the same command finishes, every recipient once but
    the batches that were in flight, which are marked."""
    unique = [(f"v{i:05d}", f"u{i:05d}") for i in range(BIG)]
    campaign = campaign_in(tmp_path / "c", unique, unique_name())
    ledger = tmp_path / "ledger.jsonl"
    report, summary = tmp_path / "report.jsonl", tmp_path / "summary.json"
    sandbox = SandboxProcess(
        "maxtraffic", "--api-key", KEY, "--ledger", str(ledger), "--limit", "100000",
        "--latency-ms", "40",
    )  # fmt: skip
    with (
        private_redis("--appendonly", "yes", "--appendfsync", "always") as redis,
        sandbox as sb,
    ):
        send = (str(campaign), "--base-url", sb.base_url, "--state", redis.url)
        first = start_send(tmp_path, *send)
        wait_for_arrivals(ledger, BIG // 3, first)
        redis.kill()
        _, err = first.communicate(timeout=60)
        assert first.returncode == 4, err
        stop = lines_with(err, "cannot record the batches")
        assert len(stop) == 1, err
        assert stop[0].startswith(f"bulksend: state {redis.url} cannot record the batches (")
        time.sleep(0.3)
        stopped_at = sum(ledger_ids(ledger).values())
        time.sleep(0.3)
        assert sum(ledger_ids(ledger).values()) == stopped_at  # nothing sent without a record
        redis.start()
        second = start_send(
            tmp_path, *send, "--report", str(report), "--summary-json", str(summary)
        )
        _, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    ids = ledger_ids(ledger)
    assert set(ids) == {v for v, _ in unique}
    out = report_rows(report)
    marked = {x["id"] for x in out if x["reason"].startswith("may have arrived twice")}
    assert {i for i, n in ids.items() if n > 1} <= marked
    assert orjson.loads(summary.read_bytes())["delivered"] == BIG


def test_another_api_key_is_refused_when_the_state_kept_sends(
    tmp_path: Path, redis_url: str
) -> None:
    campaign = campaign_in(tmp_path, ROWS, unique_name())
    with SandboxProcess("maxtraffic", "--api-key", KEY) as sb:
        send = ("send", str(campaign), "--base-url", sb.base_url, "--state", redis_url, "-q")
        assert run_cli(*send, env=ENV).status == 0
        other = run_cli(*send, env={"MAXTRAFFIC_API_KEY": "another-key-0000"})
    assert other.status == 2, other.stderr
    (error,) = lines_with(other.stderr, "bulksend: error:")
    assert "cannot resume: the API key changed since this journal was written" in error
    assert "another-key" not in other.stderr


# -- sending again what a --state send did not deliver ------------------------------------------


def test_what_a_state_send_did_not_deliver_is_sent_by_the_same_send_with_resume(
    tmp_path: Path, redis_url: str
) -> None:
    """docs/operations.md: ``bulksend send CAMPAIGN --state URL --resume`` sends again what was
    not delivered (here: everything, the provider failing); with a URL that holds no state of
    the campaign it refuses and sends nothing; ``bulksend retry URL`` points to it."""
    campaign = campaign_in(tmp_path, ROWS, unique_name(), extra="max_attempts = 1\n")
    ledger = tmp_path / "ledger.jsonl"
    failing = SandboxProcess("maxtraffic", "--api-key", KEY, "--fail-rate", "1")
    with failing as sb:
        first = run_cli(
            "send", str(campaign), "--base-url", sb.base_url, "--state", redis_url, "-q",
            "--progress", "never", env=ENV,
        )  # fmt: skip
    assert first.status == 4, first.stderr
    with (
        SandboxProcess("maxtraffic", "--api-key", KEY, "--ledger", str(ledger)) as sb,
        private_redis() as other,  # (a wrong URL: a Redis that never saw the campaign)
    ):
        again = (str(campaign), "--base-url", sb.base_url, "--resume", "-q", "--progress", "never")
        empty = run_cli("send", *again, "--state", other.url, env=ENV)
        resumed = run_cli(
            "send", *again, "--state", redis_url, "--summary-json", str(tmp_path / "s.json"),
            env=ENV,
        )  # fmt: skip
    assert empty.status == 2, empty.stderr
    assert lines_with(empty.stderr, "bulksend:")[-1].endswith(
        "no state of this campaign to resume (run without --resume)"
    )
    assert resumed.status == 0, resumed.stderr
    assert len(lines_with(resumed.stderr, "resuming")) == 1, resumed.stderr
    assert ledger_ids(ledger) == Counter({v: 1 for v, _ in ROWS})
    assert orjson.loads((tmp_path / "s.json").read_bytes())["delivered"] == len(ROWS)
    retry = run_cli("retry", redis_url, env=ENV)
    assert retry.status == 2
    assert retry.stderr.splitlines() == [
        "bulksend: error: bulksend retry takes a journal file, and a send kept in Redis "
        "(--state) has none: run the same send again with --resume, bulksend send "
        "CAMPAIGN_FILE --state URL --resume (it sends again what was not delivered or invalid, "
        "and refuses when Redis holds no state of the campaign, so a wrong URL sends nothing)"
    ]
