from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from bulksend.errors import ConfigError
from bulksend.journal import Identity, Journal, batch_digest, file_fingerprint
from bulksend.models import Batch, Recipient

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
    assert prev[1].digest == batch_digest(batch(1).recipients)
    assert prev[2] is not None
    assert prev[2].state == "split"
    assert [(p.line, p.state) for p in j.parts(2)] == [(20, "delivered"), (21, "invalid")]
    assert prev[3] is not None
    assert prev[3].state == "in_flight"
    assert prev[4] is None
    assert j.resumed
    j.close()


async def test_an_existing_journal_is_never_overwritten_silently(tmp_path: Path) -> None:
    path = tmp_path / "j"
    Journal.open(path, ID, resume=False).close()
    with pytest.raises(ConfigError, match="--resume"):
        Journal.open(path, ID, resume=False)
    Journal.open(path, ID, resume=False, fresh=True).close()
    with pytest.raises(ConfigError, match="no journal to resume"):
        Journal.open(tmp_path / "other", ID, resume=True)


@pytest.mark.parametrize(
    ("changed", "what"),
    [
        (Identity("c2", "r1", "p1"), "the campaign file changed"),
        (Identity("c1", "r2", "p1"), "the recipient file changed"),
        (Identity("c1", "r1", "p2"), "batch size"),
    ],
)
def test_resume_refuses_a_changed_campaign(tmp_path: Path, changed: Identity, what: str) -> None:
    path = tmp_path / "j"
    Journal.open(path, ID, resume=False).close()
    with pytest.raises(ConfigError, match=what):
        Journal.open(path, changed, resume=True)


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


def test_batch_digest_is_what_earlier_journals_stored() -> None:
    """Resume compares digests with the ones a journal keeps: the value must never change."""
    rows = [Recipient(2, "a1", "u1"), Recipient(3, None, "u2"), Recipient(5, "a3", None)]
    rows.append(Recipient(9, "é", ""))
    assert batch_digest(rows) == "847bdaf0a75d481b9c8058e9"
    assert batch_digest([]) == "b8e1dda3ac0aa3820ad2990b"
