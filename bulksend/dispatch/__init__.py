"""The send loop and its pure decisions.

``engine`` runs a send (workers, parking, the journal, the report); ``decide`` is the table that
says what to do with an answer; ``isolate`` which recipients of a refused batch are invalid;
``plan`` is everything but the network, for ``validate`` and ``--dry-run``.
"""
