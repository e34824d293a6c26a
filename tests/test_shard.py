from __future__ import annotations

import random
from collections import Counter

import pytest

from bulksend.dedup.deduper import Deduper
from bulksend.errors import ConfigError
from bulksend.models import Duplicate, Recipient, Rejected
from bulksend.sources.spec import Chunk
from bulksend.state.shard import ALREADY_DEDUPLICATED, Shard


def rows(seed: int = 3, count: int = 6000) -> list[Recipient | Rejected]:
    """Rows whose ids and uids repeat across each other: copies, a uid under several ids, an
    id with several uids, rows with only one of the two, and rejected rows."""
    rnd = random.Random(seed)
    out: list[Recipient | Rejected] = []
    for line in range(2, count + 2):
        pick = rnd.random()
        if pick < 0.05:
            out.append(Rejected(line, "bad"))
            continue
        vid = f"v{rnd.randrange(count // 2)}" if pick < 0.9 else None
        uid = f"u{rnd.randrange(count // 3)}" if pick > 0.1 else None
        out.append(Recipient(line, vid, uid))
    return out


def chunks(items: list[Recipient | Rejected], size: int = 700) -> list[Chunk]:
    out = []
    for start in range(0, len(items), size):
        part = items[start : start + size]
        out.append(
            Chunk(
                [r for r in part if isinstance(r, Recipient)],
                [r for r in part if isinstance(r, Rejected)],
            )
        )
    return out


def unsharded(items: list[Recipient | Rejected]) -> tuple[list[Recipient], list[Recipient]]:
    kept: list[Recipient] = []
    dups: list[Recipient] = []
    with Deduper() as dedup:
        for chunk in chunks(items):
            k, d = dedup.filter_many(chunk.recipients)
            kept += list(k)
            dups += list(d)
    return kept, dups


def sharded(items: list[Recipient | Rejected], shard: Shard) -> list[Chunk]:
    with Deduper() as dedup:
        return list(shard.select(chunks(items), dedup))


def test_a_sharded_send_keeps_exactly_what_an_unsharded_one_keeps() -> None:
    items = rows()
    kept, dups = unsharded(items)
    assert dups  # the file has both kinds of repeats: whole rows and single identifiers
    assert any(r.uid is None for r in kept)
    all_kept: list[Recipient] = []
    all_dups: list[Duplicate] = []
    all_rejected: list[Rejected] = []
    for shard in (Shard(i, 4) for i in range(4)):
        for chunk in sharded(items, shard):
            assert all(shard.owns(r.line) for r in chunk.recipients)
            assert all(shard.owns(r.line) for r in chunk.rejected)
            all_kept += list(chunk.recipients)
            all_dups += [r for r in chunk.rejected if type(r) is Duplicate]
            all_rejected += [r for r in chunk.rejected if type(r) is Rejected]
    assert sorted(all_kept, key=lambda r: r.line) == kept  # cleared identifiers included
    assert sorted((d.line, d.id, d.uid) for d in all_dups) == [(r.line, r.id, r.uid) for r in dups]
    assert {d.reason for d in all_dups} == {"already in this campaign"}
    assert sorted(r.line for r in all_rejected) == [r.line for r in items if type(r) is Rejected]
    # every row once, in exactly one shard; no identifier sent twice
    lines = [r.line for r in all_kept] + [r.line for r in all_dups + all_rejected]
    assert sorted(lines) == [r.line for r in items]
    for key in ("id", "uid"):
        sent = Counter(getattr(r, key) for r in all_kept if getattr(r, key) is not None)
        assert max(sent.values()) == 1


def test_shards_split_the_rows_evenly() -> None:
    items = rows(seed=5)
    sizes = [
        sum(len(c.recipients) + len(c.rejected) for c in sharded(items, Shard(i, 4)))
        for i in range(4)
    ]
    assert sum(sizes) == len(items)
    assert max(sizes) - min(sizes) <= 1  # by line number


def test_one_shard_of_one_is_everything() -> None:
    items = rows(seed=7, count=500)
    kept, dups = unsharded(items)
    got = sharded(items, Shard(0, 1))
    assert [r for c in got for r in c.recipients] == kept
    assert len([r for c in got for r in c.rejected if type(r) is Duplicate]) == len(dups)


def test_the_engine_gets_nothing_more_to_deduplicate() -> None:
    batch = [Recipient(2, "a", "b"), Recipient(3, "a", "b")]
    kept, dups = ALREADY_DEDUPLICATED.filter_many(batch)
    assert (list(kept), list(dups)) == (batch, [])


@pytest.mark.parametrize("text", ["4/4", "-1/4", "1/0", "a/b", "1"])
def test_bad_shard_specs(text: str) -> None:
    with pytest.raises(ConfigError, match="--shard"):
        Shard.parse(text)


def test_parse() -> None:
    assert Shard.parse(" 2 / 5 ") == Shard(2, 5)
    assert str(Shard(2, 5)) == "2/5"
