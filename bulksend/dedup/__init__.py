"""Exact deduplication over a whole campaign in bounded RAM: the key sets (``keyset_c`` on the
C extension ``_keyset``, ``keyset_numpy`` without it), the ``Deduper`` that keeps ids and uids
in one of them (``deduper``), and its helper thread one chunk ahead of the reader (``ahead``)."""
