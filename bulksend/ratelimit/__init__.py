"""Admission per endpoint group: the schedule stage of a send.

``headers`` reads rate-limit headers; ``bucket`` is one group's pure admission math, fed by
``window`` (windows inferred from our own sends) and ``discovery`` (a rate found without
headers); ``backoff`` times retries; ``circuit`` pauses a group that keeps failing; ``scheduler``
drives them for the engine.
"""
