from __future__ import annotations

import pytest

from bulksend.errors import ConfigError
from bulksend.models import Recipient, Rejected
from bulksend.shard import Shard


def test_every_row_lands_in_exactly_one_shard_and_copies_together() -> None:
    rows: list[Recipient | Rejected] = [Recipient(i, f"id{i % 700}", f"u{i}") for i in range(3000)]
    rows += [Rejected(5000 + i, "bad") for i in range(40)]
    shards = [Shard(i, 4) for i in range(4)]
    owners = [[s.index for s in shards if s.owns(r)] for r in rows]
    assert all(len(o) == 1 for o in owners)
    by_id: dict[str, set[int]] = {}
    for r, (owner,) in zip(rows, owners, strict=True):
        if isinstance(r, Recipient) and r.id:
            by_id.setdefault(r.id, set()).add(owner)
    assert all(len(v) == 1 for v in by_id.values())
    sizes = [sum(1 for o in owners if o == [i]) for i in range(4)]
    assert min(sizes) > 600  # roughly even


@pytest.mark.parametrize("text", ["4/4", "-1/4", "1/0", "a/b", "1"])
def test_bad_shard_specs(text: str) -> None:
    with pytest.raises(ConfigError, match="--shard"):
        Shard.parse(text)


def test_parse() -> None:
    assert Shard.parse(" 2 / 5 ") == Shard(2, 5)
    assert str(Shard(2, 5)) == "2/5"
