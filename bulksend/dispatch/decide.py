"""What the engine does with one answer to a batch (or a part of one): a pure decision.

``decide(verdict, attempts, max_attempts, ...)`` maps the provider's verdict (``None``: the
request got no answer) and where the part stands to an ``Action``; the engine performs it (the
sends, the waits, the journal and the stop lines stay there). ``attempts`` counts the request
just answered.

=============  =================================  ==============================================
verdict        condition                          action
=============  =================================  ==============================================
DELIVERED      none earlier went unanswered       DELIVER
DELIVERED      an earlier request got no answer   DELIVER, ``twice`` (may have arrived twice)
INVALID        (any)                              ISOLATE (see ``bulksend.dispatch.isolate``)
AUTH           (any)                              STOP AUTH, the part ``failed``
FATAL          (any)                              STOP FATAL, the part ``failed``
UNEXPECTED     fewer than ``max_unexpected`` in   SETTLE ``unknown`` if the answer may be the
               a row                              provider's (``maybe_provider``), else ``failed``
UNEXPECTED     ``max_unexpected`` in a row        STOP UNEXPECTED, the part settled as above
THROTTLED      attempts < max_attempts            RETRY (at once: the scheduler paces it)
RETRY          attempts < max_attempts            BACKOFF, at least ``retry_after`` (else 0)
THROTTLED,     attempts >= max_attempts           SETTLE ``failed``, ``gave_up``
RETRY
None           attempts < max_attempts            BACKOFF (no floor)
None           attempts >= max_attempts           SETTLE ``unknown`` if a request may have
                                                  reached the provider (``unknown_sent``), else
                                                  ``failed``
=============  =================================  ==============================================
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from bulksend.models import Status
from bulksend.providers.base import Verdict

__all__ = ["Action", "Do", "Stop", "decide"]


class Do(enum.Enum):
    """The kinds of action."""

    DELIVER = "deliver"  # the part is delivered
    ISOLATE = "isolate"  # a 422: isolate the invalid recipients, resend the rest
    SETTLE = "settle"  # the part ends in ``status``
    STOP = "stop"  # the part ends in ``status`` and the send stops (``stop`` says why)
    RETRY = "retry"  # send again as soon as the scheduler lets it
    BACKOFF = "backoff"  # send again after the scheduler's backoff (at least ``floor``)


class Stop(enum.Enum):
    """Why a STOP stops the send."""

    AUTH = "auth"  # the provider rejected the credentials
    FATAL = "fatal"  # the request can never succeed
    UNEXPECTED = "unexpected"  # too many answers in a row that are not the provider's


@dataclass(frozen=True, slots=True)
class Action:
    do: Do
    status: Status | None = None  # with DELIVER, SETTLE and STOP: the part's final status
    stop: Stop | None = None  # with STOP
    #: with BACKOFF: the least delay (the answer's Retry-After); None: the backoff as it is
    floor: float | None = None
    gave_up: bool = False  # with SETTLE: the attempts ran out (the reason says after how many)
    twice: bool = False  # with DELIVER: an earlier request may have delivered it already


DELIVER = Action(Do.DELIVER, Status.DELIVERED)
DELIVER_TWICE = Action(Do.DELIVER, Status.DELIVERED, twice=True)
ISOLATE = Action(Do.ISOLATE)
RETRY = Action(Do.RETRY)
_STOP_AUTH = Action(Do.STOP, Status.FAILED, Stop.AUTH)
_STOP_FATAL = Action(Do.STOP, Status.FAILED, Stop.FATAL)
_GAVE_UP = Action(Do.SETTLE, Status.FAILED, gave_up=True)
_BACKOFF = Action(Do.BACKOFF)
_NO_ANSWER_UNKNOWN = Action(Do.SETTLE, Status.UNKNOWN)
_NO_ANSWER_FAILED = Action(Do.SETTLE, Status.FAILED)
_DELIVERED = Verdict.DELIVERED  # looked up once: decide runs for every answer


def decide(
    verdict: Verdict | None,
    attempts: int,
    max_attempts: int,
    *,
    unknown_sent: bool = False,
    retry_after: float | None = None,
    maybe_provider: bool = False,
    unexpected_streak: int = 0,
    max_unexpected: int = 5,
) -> Action:
    """The action for ``verdict`` (None: no answer), per the table in the module docstring.

    ``unknown_sent``: a request for the part got no answer, so the provider may have it;
    ``retry_after``: seconds the answer asked to wait; ``maybe_provider``: an unexpected answer
    was JSON (perhaps the provider's in a changed form); ``unexpected_streak``: unexpected answers
    in a row, this one included.
    """
    if verdict is _DELIVERED:
        return DELIVER_TWICE if unknown_sent else DELIVER
    if verdict is None:
        if attempts < max_attempts:
            return _BACKOFF
        return _NO_ANSWER_UNKNOWN if unknown_sent else _NO_ANSWER_FAILED
    match verdict:
        case Verdict.INVALID:
            return ISOLATE
        case Verdict.AUTH:
            return _STOP_AUTH
        case Verdict.FATAL:
            return _STOP_FATAL
        case Verdict.UNEXPECTED:
            status = Status.UNKNOWN if maybe_provider else Status.FAILED
            if unexpected_streak >= max_unexpected:
                return Action(Do.STOP, status, Stop.UNEXPECTED)
            return Action(Do.SETTLE, status)
    if attempts >= max_attempts:
        return _GAVE_UP
    if verdict is Verdict.THROTTLED:
        return RETRY
    return Action(Do.BACKOFF, floor=retry_after or 0.0)
