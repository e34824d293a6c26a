"""Campaign state kept across runs.

``journal`` (SQLite: resume without sending twice what the provider confirmed), ``shard``
(``--shard I/N``), ``layouts`` (journals of other shard layouts refuse).
"""
