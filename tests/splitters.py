"""The two ways a CSV block is split, for tests to run each: the C splitter
(bulksend/sources/_split.c) when it was built, and the str methods and ``csv.reader`` without it.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from bulksend.sources import delimited
from tests.keysets import c_compiler

try:
    from bulksend.sources import _split
except ImportError:
    _split = None  # type: ignore[assignment]

#: the C splitter, when it was built (whatever BULKSEND_NO_EXTENSIONS says)
SPLIT = _split.split if _split is not None else None

C_MISSING = (
    "C EXTENSION NOT BUILT -- the tests of the C block splitter did NOT run: "
    + (c_compiler() or "a compiler is here, so reinstall: pip install -e .")
    if SPLIT is None
    else ""
)

needs_split = pytest.mark.skipif(SPLIT is None, reason=C_MISSING)

#: parameters for a fixture that runs a test with each way of splitting
SPLITTERS = [pytest.param("c", marks=needs_split), "python"]


class Splits(list[bool]):
    """One bool per block handed to the C splitter: whether it read it (or declined)."""

    def __init__(self, c: bool) -> None:
        super().__init__()
        self.c = c  # whether the C splitter is in use


def use_splitter(monkeypatch: pytest.MonkeyPatch, name: str) -> Splits:
    """Make readers made from now on split blocks the ``name`` way ("c" or "python")."""
    taken = Splits(name == "c")
    if name == "python":
        monkeypatch.setattr(delimited, "SPLIT", None)
        return taken
    assert SPLIT is not None
    split = SPLIT

    def counted(
        block: str, delimiter: str, width: int, wanted: Sequence[int], limit: int
    ) -> tuple[list[list[str]], int, int, list[int] | None] | None:
        got = split(block, delimiter, width, wanted, limit)
        taken.append(got is not None)
        return got

    monkeypatch.setattr(delimited, "SPLIT", counted)
    return taken
