"""Streaming readers for recipient files (issue 6).

::

    spec = SourceSpec(path="recipients.csv")          # "-" for stdin; see SourceSpec
    with open_source(spec) as rows:                   # InputError: unusable file, one line
        for chunk in rows.chunks():                   # fast: Chunk(recipients, rejected)
            ...
        # or: for item in rows: ...                   # Recipient | Rejected, in file order

Formats: CSV in any common dialect (sniffed: , ; tab |), TSV, JSON Lines, a plain list of ids;
each may be gzip-compressed (found by its magic bytes). See the modules for the rules.
"""

from bulksend.sources.reader import Rows, collect_problems, open_source, spooled
from bulksend.sources.spec import FORMATS, Chunk, Columns, SourceSpec, describe
from bulksend.sources.synthetic import synthetic, write_synthetic_csv

__all__ = [
    "FORMATS",
    "Chunk",
    "Columns",
    "Rows",
    "SourceSpec",
    "collect_problems",
    "describe",
    "open_source",
    "spooled",
    "synthetic",
    "write_synthetic_csv",
]
