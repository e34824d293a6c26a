"""Which files are a campaign's default journals, by layout, and where ``--fresh`` moves them."""

from __future__ import annotations

from pathlib import Path

from bulksend.models import Batch, Recipient
from bulksend.state.journal import Identity, Journal
from bulksend.state.layouts import default_journals, move_aside, other_layouts
from bulksend.state.shard import Shard


def test_only_the_names_bulksend_gives_are_journals_of_the_campaign(tmp_path: Path) -> None:
    folder = tmp_path / ".bulksend"
    folder.mkdir()
    names = [
        "c.journal", "c.shard-0-of-4.journal", "c.shard-3-of-4.journal", "c.shard-1-of-2.journal",
        "c.shard-4-of-4.journal", "c.shard-0-of-4.journal-wal", "c.dead-letter.jsonl",
        "cc.journal", "c.x.journal", "c.shard-0-of-4.old.journal", "empty.journal",
    ]  # fmt: skip
    for name in names:
        (folder / name).write_bytes(b"x")
    (folder / "c.shard-1-of-4.journal").write_bytes(b"")  # nothing in it: not one
    found = default_journals(folder, "c")
    assert {n: [p.name for p in paths] for n, paths in found.items()} == {
        1: ["c.journal"],
        2: ["c.shard-1-of-2.journal"],
        4: ["c.shard-0-of-4.journal", "c.shard-3-of-4.journal"],
    }
    assert default_journals(tmp_path / "none", "c") == {}


async def test_fresh_moves_the_other_layout_aside_with_its_files(tmp_path: Path) -> None:
    campaign = tmp_path / "c.toml"
    folder = tmp_path / ".bulksend"
    journal = folder / "c.shard-0-of-2.journal"
    book = Journal.open(journal, Identity("c", "r", "p"))
    batch = Batch(1, "g", [Recipient(2, "v2")])
    await book.in_flight(batch)
    book.finished(batch, "delivered")
    book.close()
    (folder / "c.shard-0-of-2.dead-letter.jsonl").write_text("{}\n")
    (folder / "c.shard-1-of-2.journal").write_bytes(b"not a journal")  # counts: may have sent

    found = other_layouts(campaign, None)
    assert [(x.count, [p.name for p in x.journals]) for x in found] == [
        (2, ["c.shard-0-of-2.journal", "c.shard-1-of-2.journal"])
    ]
    assert other_layouts(campaign, Shard(1, 2)) == []  # its own layout
    line = move_aside(found, clock=lambda: 1_700_000_000.0)
    target = folder / "superseded-20231114T221320Z"
    assert line == (
        f"--fresh: the send of this campaign as 2 shards ({folder}/c.shard-*-of-2.journal) is "
        f"not resumed: its 2 journals (and their dead-letter files) moved to {target}/, not "
        "deleted"
    )
    assert sorted(p.name for p in target.iterdir()) == [
        "c.shard-0-of-2.dead-letter.jsonl", "c.shard-0-of-2.journal", "c.shard-1-of-2.journal",
    ]  # fmt: skip
    assert sorted(p.name for p in folder.iterdir()) == [target.name]
    assert move_aside(found) == ""  # already moved (by another shard started with --fresh)
