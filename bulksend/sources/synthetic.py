"""Synthetic recipients for benchmarks and tests: deterministic, fast, optionally repeating.

Row ``i`` draws either a new identity ``j`` (the next one) or, with probability
``duplicate_rate``, an earlier one, repeating both its id and uid. Identity ``j`` has a
32-hex-digit id (an odd-constant multiplication mod 2^128, so ids are distinct and look random)
and a uid ``u`` + 11 digits.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from pathlib import Path

from bulksend.models import Recipient
from bulksend.output.private import open_private
from bulksend.recipients import EMPTY, make_recipient

_MULT = 0x9E3779B97F4A7C15F39CC0605CEDC835
_MASK = (1 << 128) - 1
_BATCH = 65536


def _identities(n: int, duplicate_rate: float, seed: int) -> Iterator[tuple[str, str]]:
    if not 0.0 <= duplicate_rate < 1.0:
        raise ValueError("duplicate_rate must be in [0, 1)")
    rnd = random.Random(seed)
    salt = rnd.getrandbits(64)
    unique = 0
    chance = rnd.random
    pick = rnd.randrange
    for _ in range(n):
        if unique and duplicate_rate and chance() < duplicate_rate:
            j = pick(unique)
        else:
            j = unique
            unique += 1
        yield f"{((j + salt) * _MULT) & _MASK:032x}", f"u{j:011d}"


def synthetic(n: int, *, duplicate_rate: float = 0.0, seed: int = 0) -> Iterator[Recipient]:
    """``n`` recipients, lines numbered from 2 as if read from a CSV file with a header."""
    for line, (id, uid) in enumerate(_identities(n, duplicate_rate, seed), 2):
        yield make_recipient(line, id, uid, EMPTY)


def write_synthetic_csv(
    path: str | Path,
    n: int,
    *,
    duplicate_rate: float = 0.0,
    seed: int = 0,
    extra_columns: Sequence[str] = (),
) -> Path:
    """Write ``n`` synthetic rows as ``id,uid[,extra...]`` CSV (LF, no quoting); returns the path.

    Extra columns hold short plain values (``<column> <identity>``).
    """
    target = Path(path)
    with open_private(target, "w", newline="") as out:
        out.write(",".join(["id", "uid", *extra_columns]) + "\n")
        batch: list[str] = []
        extra = "".join(f",{name} %d" for name in extra_columns)
        template = "%s,%s" + extra + "\n"
        count = len(extra_columns)
        for number, (id, uid) in enumerate(_identities(n, duplicate_rate, seed)):
            tail = (number,) * count
            batch.append(template % (id, uid, *tail))
            if len(batch) >= _BATCH:
                out.writelines(batch)
                batch.clear()
        out.writelines(batch)
    return target
