"""Types of the C extension bulksend/sources/_split.c (see bulksend.sources.delimited)."""

from collections.abc import Sequence

def split(
    block: str, delimiter: str, width: int, wanted: Sequence[int], limit: int, /
) -> tuple[list[list[str]], int, int, list[int] | None] | None: ...
