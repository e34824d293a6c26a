from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import orjson
import pytest

from bulksend.errors import ConfigError
from bulksend.models import Batch, Recipient
from bulksend.recipients import Recipients
from bulksend.state.journal import (
    FileDigest,
    Identity,
    Journal,
    batch_digest,
    digest_in_background,
    fast_digest,
    file_fingerprint,
    prefetch_fingerprint,
    same_batch,
)

ID = Identity(campaign="c1", recipients="r1", plan="p1")


def batch(number: int, n: int = 3) -> Batch:
    start = number * 10
    return Batch(number, "g", [Recipient(start + i, f"id{start + i}") for i in range(n)])


def states(path: Path) -> dict[int, str]:
    with sqlite3.connect(path) as db:
        return dict(db.execute("SELECT number, state FROM batches"))


async def test_in_flight_is_durable_before_it_returns(tmp_path: Path) -> None:
    path = tmp_path / "j"
    j = Journal.open(path, ID, resume=False)
    await j.in_flight(batch(1))
    assert states(path) == {1: "in_flight"}  # seen by another connection: committed
    j.finished(batch(1), "delivered", "", 200)
    j.close()
    assert states(path) == {1: "delivered"}


async def test_resume_sees_the_previous_run(tmp_path: Path) -> None:
    path = tmp_path / "j"
    j = Journal.open(path, ID, resume=False)
    for n in (1, 2, 3):
        await j.in_flight(batch(n))
    j.finished(batch(1), "delivered")
    j.finished(batch(2), "split", parts=[(20, "delivered", "", 200), (21, "invalid", "bad", 422)])
    j.close()
    j = Journal.open(path, ID, resume=True)
    prev = {n: j.previous(n) for n in (1, 2, 3, 4)}
    assert prev[1] is not None
    assert prev[1].state == "delivered"
    assert prev[1].digest == fast_digest(batch(1).recipients)
    assert prev[2] is not None
    assert prev[2].state == "split"
    assert [(p.line, p.state) for p in j.parts(2)] == [(20, "delivered"), (21, "invalid")]
    assert prev[3] is not None
    assert prev[3].state == "in_flight"
    assert prev[4] is None
    assert j.resumed
    j.close()


async def test_an_existing_journal_is_continued_never_overwritten_silently(
    tmp_path: Path,
) -> None:
    path = tmp_path / "j"
    first = Journal.open(path, ID, resume=False)
    await first.in_flight(batch(1))
    first.finished(batch(1), "delivered", "", 200)
    first.close()
    again = Journal.open(path, ID, resume=False)  # the same send again: continued
    record = again.previous(1)
    assert record is not None
    assert (record.state, record.run) == ("delivered", 1)
    assert again.run_id == 2
    assert again.opening_note() == (
        f"resuming: 1 batch settled by an earlier run ({path}; --fresh starts over)"
    )
    again.set_planned(4)
    again.close()
    third = Journal.open(path, ID, resume=True)
    assert third.opening_note().startswith("resuming: 1 of 4 batches settled by an earlier run")
    third.close()
    fresh = Journal.open(path, ID, resume=False, fresh=True)
    assert fresh.previous(1) is None
    assert fresh.opening_note() == ""
    fresh.close()
    with pytest.raises(ConfigError, match="no journal to resume"):
        Journal.open(tmp_path / "other", ID, resume=True)


async def delivered_one(path: Path, identity: Identity = ID) -> None:
    j = Journal.open(path, identity, resume=False)
    await j.in_flight(batch(1))
    j.finished(batch(1), "delivered", "", 200)
    j.close()


@pytest.mark.parametrize(
    ("changed", "what"),
    [
        (Identity("c2", "r1", "p1"), "the campaign file changed"),
        (Identity("c1", "r2", "p1"), "the recipient file changed"),
        (Identity("c1", "r1", "p2"), "batch size"),
    ],
)
async def test_a_changed_campaign_is_refused(tmp_path: Path, changed: Identity, what: str) -> None:
    path = tmp_path / "j"
    await delivered_one(path)
    for resume in (False, True):
        with pytest.raises(ConfigError, match=what) as caught:
            Journal.open(path, changed, resume=resume)
        assert "--fresh" in str(caught.value)
        assert "\n" not in str(caught.value)


def identity(
    campaign: str,
    recipients: str = "r1",
    /,
    how: Mapping[str, object] | None = None,
    **settings: object,
) -> Identity:
    named = {"batch size": 100, "message": {"title": "Hi"}, **settings}
    details = {
        "campaign_text": campaign,  # (as journals before campaign_keys kept it)
        "recipients_path": f"/data/{recipients}.csv",
        "settings": orjson.dumps(named).decode(),
        **({"how": orjson.dumps(how).decode()} if how is not None else {}),
    }
    plan = orjson.dumps(named).decode()
    return Identity(campaign, recipients, plan, details)


async def test_the_refusal_names_what_changed(tmp_path: Path) -> None:
    path = tmp_path / "j"
    base = 'provider = "maxtraffic"\n[send]\nbatch_size = 100\nrate = "300/min"\n'
    await delivered_one(path, identity(base))
    edited = base.replace("100", "50").replace("300/min", "600/min")
    with pytest.raises(ConfigError) as caught:
        Journal.open(path, identity(edited, "r2", how=None, **{"batch size": 50}))
    assert str(caught.value) == (  # ([send].rate changed too: how it is sent, not what)
        f"{path}: cannot resume: the recipient file changed (was /data/r1.csv, now "
        "/data/r2.csv), the batch size changed (was 100, now 50) and the campaign file "
        "changed ([send].batch_size) since this journal was written; restore them, "
        "or add --fresh to start over (sending everything again)"
    )
    with pytest.raises(ConfigError, match=r"the message changed since"):
        Journal.open(path, identity(base, message={"title": "Bye"}))
    # comments and layout are not a change: the journal is continued
    Journal.open(path, identity("# the sale\n" + base.replace(" = ", "=")), resume=True).close()


async def test_a_change_of_how_it_is_sent_resumes_and_is_named(tmp_path: Path) -> None:
    path = tmp_path / "j"
    base = 'provider = "maxtraffic"\nname = "A"\n[send]\nbase_url = "http://a"\nrate = "1/s"\n'
    how = {"[send].base_url": "http://a", "[send].rate": "1/1s", "[api].paths": None}
    await delivered_one(path, identity(base, how=how))
    edited = base.replace("http://a", "http://b").replace('"1/s"', '"2/s"') + "[auth]\nx = 1\n"
    now = {**how, "[send].base_url": "http://b", "[send].rate": "2/1s", "[api].paths": {"a": "/"}}
    named = {"[api] paths": {"a": "/"}, "campaign name": "B"}  # plan settings of how, too
    j = Journal.open(path, identity(edited.replace('"A"', '"B"'), how=now, **named), resume=True)
    assert j.opening_note() == (
        "resuming with [send].base_url changed (was http://a, now http://b), [send].rate "
        "changed (was 1/1s, now 2/1s), [api].paths changed: 1 batch settled by an earlier run "
        f"({path}; --fresh starts over)"
    )
    j.close()


def test_the_identity_of_a_campaign_keeps_no_password(tmp_path: Path) -> None:
    from bulksend.campaign import identity as identity_of
    from bulksend.config import load_settings

    (tmp_path / "r.csv").write_text("id,uid\nv1,u1\n")
    campaign = tmp_path / "c.toml"
    campaign.write_text(
        'provider = "maxtraffic"\n[recipients]\npath = "r.csv"\n[message]\n'
        'messages = [{title = "t"}]\n[send]\nlimiter = "redis://u:s3cret@h:6379/0"\n'
        'base_url = "https://x.example"\n'  # (a user:password in it is refused at load)
    )
    details = identity_of(load_settings(campaign, env={})).details
    kept = orjson.dumps(details).decode()
    assert "s3cret" not in kept
    assert orjson.loads(details["campaign_keys"])["[send].limiter"] == "redis://u:***@h:6379/0"
    assert orjson.loads(details["how"])["[send].base_url"] == "https://x.example"


async def test_a_journal_of_a_send_nothing_reached_does_not_block_a_changed_one(
    tmp_path: Path,
) -> None:
    path = tmp_path / "j"
    j = Journal.open(path, ID)
    await j.in_flight(batch(1))
    j.finished(batch(1), "failed", "provider rejected the credentials (401)", 401)
    await j.in_flight(batch(2))
    j.finished(batch(2), "invalid", "no such visitor", 422)
    j.close()
    changed = Identity("c1", "r2", "p1")
    with pytest.raises(ConfigError, match="cannot resume"):
        Journal.open(path, changed, resume=True)  # --resume and retry: never started over
    again = Journal.open(path, changed)
    assert again.previous(1) is None
    assert again.opening_note() == (
        "starting over: the recipient file changed, and the provider kept nothing the earlier "
        f"run sent ({path})"
    )
    again.close()


@pytest.mark.parametrize("left", ["in_flight", "unknown", "doubt"])
async def test_a_journal_with_a_request_in_doubt_blocks_a_changed_send(
    tmp_path: Path, left: str
) -> None:
    path = tmp_path / "j"
    j = Journal.open(path, ID)
    await j.in_flight(batch(1))
    if left == "unknown":
        j.finished(batch(1), "unknown", "interrupted while in flight")
    elif left == "doubt":
        j.finished(batch(1), "failed", "500", 500, doubt="resent after a request got no answer")
    j.close()
    with pytest.raises(ConfigError, match="cannot resume: the recipient file changed"):
        Journal.open(path, Identity("c1", "r2", "p1"))
    again = Journal.open(path, ID)
    note = again.opening_note()
    record = again.previous(1)
    again.close()
    assert record is not None
    if left == "doubt":
        assert record.doubt == "resent after a request got no answer"
        assert note == ""  # a failed batch is simply sent again
    else:
        assert note.startswith("resuming: 0 batches settled by an earlier run, 1 with an unknown")


async def test_a_journal_written_before_runs_and_doubts_were_kept_is_upgraded(
    tmp_path: Path,
) -> None:
    path = tmp_path / "j"
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE campaign (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE batches (number INTEGER PRIMARY KEY, grp TEXT NOT NULL,
            first_line INTEGER NOT NULL, last_line INTEGER NOT NULL, size INTEGER NOT NULL,
            digest TEXT NOT NULL, state TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '',
            http_status INTEGER, attempts INTEGER NOT NULL DEFAULT 0,
            runs INTEGER NOT NULL DEFAULT 1, updated REAL NOT NULL);
        INSERT INTO campaign VALUES ('campaign', 'c1'), ('recipients', 'r1'), ('plan', 'p1'),
            ('meta', '{"campaign_file": "/c.toml", "overrides": {}}');
        INSERT INTO batches VALUES (1, 'g', 10, 12, 3, 'x', 'in_flight', '', NULL, 1, 1, 0);
        """
    )
    db.close()
    j = Journal.open(path, ID, meta={"campaign_file": "/c.toml", "settings": {}})
    record = j.previous(1)
    assert record is not None
    assert (record.state, record.run, record.doubt) == ("in_flight", None, "")
    j.close()
    assert Journal.read_meta(path) == {"campaign_file": "/c.toml", "settings": {}}


def test_not_a_journal(tmp_path: Path) -> None:
    path = tmp_path / "j"
    path.write_text("hello, I am a text file" * 100)
    with pytest.raises(ConfigError, match="not a bulksend journal"):
        Journal.open(path, ID, resume=True)


def test_fingerprint_changes_with_content(tmp_path: Path) -> None:
    f = tmp_path / "r.csv"
    f.write_text("id\n1\n")
    a = file_fingerprint(f)
    f.write_text("id\n2\n")
    assert file_fingerprint(f) != a


def test_a_prefetched_fingerprint_is_the_fingerprint_unless_the_file_changed(
    tmp_path: Path,
) -> None:
    f = tmp_path / "r.csv"
    f.write_text("id\n1\n")
    expected = file_fingerprint(f)
    prefetch_fingerprint(f)
    assert file_fingerprint(f) == expected
    prefetch_fingerprint(f)
    f.write_text("id\n22\n")  # changed after the hash started: hashed again
    assert file_fingerprint(f) == file_fingerprint(f) != expected


# -- the recipient file's hash, written once known (issue 16) -----------------------------------


class HeldDigest(FileDigest):
    """A FileDigest whose hash starts only once ``gate`` is set."""

    def __init__(self, path: Path) -> None:
        self.gate = threading.Event()
        super().__init__(path)

    def _run(self) -> None:
        self.gate.wait(30)
        super()._run()


def later(path: Path, digest: FileDigest) -> Identity:
    """ID without the recipient file's fingerprint, as a send opens its journal."""
    return Identity("c1", "", "p1", {"recipients_stat": digest.provisional})


def kept(path: Path) -> dict[str, str]:
    return Journal.read_campaign(path)


async def test_a_new_journal_keeps_the_files_stat_until_its_hash_is_known(
    tmp_path: Path,
) -> None:
    f, path = recipients(tmp_path), tmp_path / "j"
    digest = HeldDigest(f)
    j = Journal.open(path, later(f, digest), digest=digest)
    await j.in_flight(batch(1))  # the first request need not wait for the hash
    assert "recipients" not in kept(path)
    st = os.stat(f)
    assert kept(path)["recipients_stat"] == (
        f"stat:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}"
    )
    digest.gate.set()
    digest.result()
    await j.in_flight(batch(2))  # the next commit writes it
    assert kept(path)["recipients"] == file_fingerprint(f)
    j.close()


async def test_the_hash_starts_after_the_first_commit_unless_prefetched(
    tmp_path: Path,
) -> None:
    f, path = recipients(tmp_path), tmp_path / "j"
    digest = digest_in_background(f)
    assert not digest.started  # nothing prefetched it
    j = Journal.open(path, later(f, digest), digest=digest)
    assert not digest.started
    await j.in_flight(batch(1))  # the first request goes without it
    assert digest.started
    j.close()
    assert kept(path)["recipients"] == file_fingerprint(f)
    prefetch_fingerprint(f)
    early = digest_in_background(f)
    assert early.started
    assert digest_in_background(f) is not early  # (taken once)


def test_closing_waits_for_the_hash(tmp_path: Path) -> None:
    f = tmp_path / "r.csv"
    f.write_text("id\n1\n")
    digest = HeldDigest(f)
    j = Journal.open(tmp_path / "j", later(f, digest), digest=digest)
    threading.Timer(0.05, digest.gate.set).start()
    j.close()
    assert kept(tmp_path / "j")["recipients"] == file_fingerprint(f)


def recipients(tmp_path: Path, text: str = "id\n1\n2\n") -> Path:
    f = tmp_path / "r.csv"
    f.write_text(text)
    return f


def rewrite_keeping_size_and_mtime(f: Path, text: str) -> None:
    """``text`` written to ``f`` (the same length) with its mtime set back; rewritten until
    the file system's clock, which may tick every few ms, has moved on (ctime cannot be set
    back)."""
    before = os.stat(f)
    while os.stat(f).st_ctime_ns == before.st_ctime_ns:
        time.sleep(0.002)
        f.write_text(text)
        os.utime(f, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(f).st_size == before.st_size


async def crashed_before_the_hash(f: Path, path: Path) -> HeldDigest:
    """A run that settled batch 1 and died before the file's hash was known (the caller
    releases the digest's gate to end its thread)."""
    digest = HeldDigest(f)
    j = Journal.open(path, later(f, digest), digest=digest)
    await j.in_flight(batch(1))
    j.finished(batch(1), "delivered", "", 200)
    await j.in_flight(batch(2))
    j._db.close()  # as a kill -9: no close, no hash
    return digest


async def test_a_resume_after_a_crash_before_the_hash_compares_the_stat(
    tmp_path: Path,
) -> None:
    f, path = recipients(tmp_path), tmp_path / "j"
    (await crashed_before_the_hash(f, path)).gate.set()
    assert "recipients" not in kept(path)
    digest = FileDigest(f)
    j = Journal.open(path, later(f, digest), resume=True, digest=digest)
    settled = j.previous(1)
    assert settled is not None
    assert settled.state == "delivered"
    assert j.opening_note() == (
        f"resuming: 1 batch settled by an earlier run, 1 with an unknown outcome; it stopped "
        f"before it had hashed the recipient file, which has the same size, times and inode "
        f"({path}; --fresh starts over)"
    )
    j.close()
    assert kept(path)["recipients"] == file_fingerprint(f)  # this run's hash, now known


@pytest.mark.parametrize("change", ["append", "same size, mtime set back"])
async def test_a_file_changed_after_a_crash_before_the_hash_is_refused(
    tmp_path: Path, change: str
) -> None:
    f, path = recipients(tmp_path), tmp_path / "j"
    (await crashed_before_the_hash(f, path)).gate.set()
    if change == "append":
        recipients(tmp_path, "id\n1\n2\n3\n")
    else:
        rewrite_keeping_size_and_mtime(f, "id\n1\n9\n")
    digest = FileDigest(f)
    for resume in (True, False):
        with pytest.raises(ConfigError) as err:
            Journal.open(path, later(f, digest), resume=resume, digest=digest)
        assert str(err.value) == (
            f"{path}: cannot resume: the recipient file changed since this journal was "
            "written; restore it, or add --fresh to start over (sending everything again)"
        )


async def test_a_journal_with_the_hash_compares_the_hash(tmp_path: Path) -> None:
    f, path = recipients(tmp_path), tmp_path / "j"
    digest = FileDigest(f)
    j = Journal.open(path, later(f, digest), digest=digest)
    await j.in_flight(batch(1))
    j.finished(batch(1), "delivered", "", 200)
    j.close()
    assert kept(path)["recipients"] == file_fingerprint(f)
    recipients(tmp_path)  # other times, the same bytes: resumes
    digest = HeldDigest(f)
    threading.Timer(0.05, digest.gate.set).start()  # the open waits for the hash
    again = Journal.open(path, later(f, digest), resume=True, digest=digest)
    assert again.opening_note() == (
        f"resuming: 1 batch settled by an earlier run ({path}; --fresh starts over)"
    )
    again.close()
    rewrite_keeping_size_and_mtime(f, "id\n1\n3\n")
    digest = FileDigest(f)
    with pytest.raises(ConfigError, match="cannot resume: the recipient file changed"):
        Journal.open(path, later(f, digest), resume=True, digest=digest)


async def test_the_hash_of_a_file_changed_during_the_run_is_not_recorded(
    tmp_path: Path,
) -> None:
    f, path = recipients(tmp_path), tmp_path / "j"
    digest = HeldDigest(f)
    j = Journal.open(path, later(f, digest), digest=digest)
    await j.in_flight(batch(1))
    j.finished(batch(1), "delivered", "", 200)
    recipients(tmp_path, "id\n1\n2\n3\n")
    digest.gate.set()
    j.close()
    assert "recipients" not in kept(path)  # what was read is not what the hash would say
    again = FileDigest(f)
    with pytest.raises(ConfigError, match="cannot resume: the recipient file changed"):
        Journal.open(path, later(f, again), digest=again)


def test_fast_digest_is_what_journals_store_and_both_kinds_are_recognised() -> None:
    """Resume compares digests with the ones a journal keeps: the value must never change."""
    rows = [Recipient(2, "a1", "u1"), Recipient(3, None, "u2"), Recipient(5, "a3", None)]
    rows.append(Recipient(9, "é", ""))
    text = "4\x1f2\x1f9\x1ea1\x1f\x1fa3\x1fé\x1eu1\x1fu2\x1f\x1f"  # count, first, last; ids; uids
    assert hashlib.sha256(text.encode()).hexdigest()[:24] == "d7d01ca100052f8b78c5a534"
    assert fast_digest(rows) == "2:d7d01ca100052f8b78c5a534"
    assert fast_digest([]) == "2:fba9582a35ae9b697e4edceb"
    assert fast_digest(Recipients.of(rows)) == fast_digest(rows)
    for stored in (fast_digest(rows), batch_digest(rows)):  # now, and before issue 16
        assert same_batch(stored, rows)
        assert not same_batch(stored, rows[:3])
        assert not same_batch(stored, [*rows[:3], Recipient(9, "e", "")])


def test_batch_digest_is_what_earlier_journals_stored() -> None:
    """Resume compares digests with the ones a journal keeps: the value must never change."""
    rows = [Recipient(2, "a1", "u1"), Recipient(3, None, "u2"), Recipient(5, "a3", None)]
    rows.append(Recipient(9, "é", ""))
    assert batch_digest(rows) == "847bdaf0a75d481b9c8058e9"
    assert batch_digest([]) == "b8e1dda3ac0aa3820ad2990b"
