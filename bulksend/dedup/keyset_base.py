"""What both key sets build on (:mod:`~bulksend.dedup.keyset_c`,
:mod:`~bulksend.dedup.keyset_numpy`), without numpy: a send with the compiled key set never
imports numpy (about 0.1 s of its start-up)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    BoolArray = npt.NDArray[np.bool_]
    U64Array = npt.NDArray[np.uint64]

__all__ = ["DEFAULT_KIND", "KeySetBase", "Masks"]

#: the kind byte of keys added without one
DEFAULT_KIND: Final = 1

#: per part of an ``add_kinds_masks`` call: (new, present or None), one byte (0 or 1) per key
Masks = list[tuple[bytes | bytearray, bytes | bytearray | None]]


class KeySetBase(ABC):
    """What both key sets build on ``add_kinds``."""

    @abstractmethod
    def add_kinds(
        self, parts: Sequence[tuple[Sequence[str | None], int]]
    ) -> list[tuple[BoolArray, BoolArray | None]]:
        """``add_many`` for several kinds at once (one pass through the table), in order."""

    def add_kinds_masks(self, parts: Sequence[tuple[Sequence[str | None], int]]) -> Masks:
        """``add_kinds`` with the answers as bytes (1: true) instead of numpy arrays."""
        return [
            (new.tobytes(), None if present is None else present.tobytes())
            for new, present in self.add_kinds(parts)
        ]

    def add_many(self, keys: Sequence[str], kind: int = DEFAULT_KIND) -> BoolArray:
        """Record ``keys`` in order; ``out[i]`` is True when ``keys[i]`` is seen for the first time.

        A key repeated within ``keys`` is new only at its first position, exactly as if the keys
        were added one by one.
        """
        new, _ = self.add_kinds([(keys, kind)])[0]
        return new

    @abstractmethod
    def find_kinds(
        self, parts: Sequence[tuple[Sequence[str | None], int]]
    ) -> list[tuple[BoolArray, U64Array]]:
        """Look keys up without adding any: for each part ``(found, where)``.

        ``found[i]`` is True when ``keys[i]`` (of the part's kind) is in the set, False when
        it is not or is None. ``where[i]`` is then a number that names its stored key: the
        same for every lookup of that key and different for different keys (0 when not
        found). Exact as ``add_kinds`` is.
        """
