"""Isolating the invalid recipients of a part the provider refused (a 422): a pure decision.

``isolate(size, named, budget)`` says, for a part of ``size`` recipients whose answer named
the positions in ``named`` as invalid (with reasons), what is invalid and what is sent again.
``budget`` is the extra requests the batch may still spend isolating (``split_budget``).

============================================  ===============================================
situation                                     isolation
============================================  ===============================================
all positions named                           NAMED: each named one invalid, nothing resent,
                                              no cost
some named, budget >= 1                       NAMED: each named one invalid, the rest resent
                                              as one part, cost 1
none named (or budget < 1), size > 1,         BISECT: resend both halves (the first half
budget >= 2                                   first; the second is the larger), cost 2
otherwise (one recipient, or no budget)       ALL: the whole part invalid, nothing resent
============================================  ===============================================

Named positions outside the part (``>= size`` or negative) are ignored.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["How", "Isolation", "isolate"]


class How(enum.Enum):
    NAMED = "named"  # the provider named the invalid ones
    BISECT = "bisect"  # split in halves, each sent again
    ALL = "all"  # the whole part is invalid


@dataclass(frozen=True, slots=True)
class Isolation:
    how: How
    #: with NAMED: the invalid positions (in order) and the provider's reason for each
    invalid: tuple[tuple[int, str], ...] = ()
    #: the positions to send again, one part each, in the order they are to be sent
    resend: tuple[Sequence[int], ...] = ()
    cost: int = 0  # the extra requests this spends of the budget


_ALL = Isolation(How.ALL)


def isolate(size: int, named: Mapping[int, str] | None, budget: int) -> Isolation:
    """What to do with a refused part (see the table in the module docstring)."""
    named = named or {}
    invalid = tuple((i, named[i]) for i in range(size) if i in named)
    if invalid and (len(invalid) == size or budget >= 1):
        if len(invalid) == size:
            return Isolation(How.NAMED, invalid)
        rest = [i for i in range(size) if i not in named]
        return Isolation(How.NAMED, invalid, (rest,), cost=1)
    if size > 1 and budget >= 2:
        mid = size // 2
        return Isolation(How.BISECT, resend=(range(mid), range(mid, size)), cost=2)
    return _ALL
