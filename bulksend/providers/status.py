"""The status ladder the four providers share (pure: no clock, no I/O).

Each provider's ``classify`` reads its own body (envelope, error message) and then asks
``common_verdict`` about the status; it decides itself only what its documentation says
differently (2xx bodies, 400/404/409/422, and the rest)::

    429                                  THROTTLED (retry_after from Retry-After)
    403 with rate-limit evidence         THROTTLED: a spent quota, not a rejected key
    401; 403 without evidence            AUTH: the send stops (``forbidden`` may say otherwise)
    408, 5xx                             RETRY (retry_after from Retry-After)
    anything else (2xx included)         None: the provider decides

Rate-limit evidence is what ``bulksend.ratelimit.headers.throttle_evidence`` finds: a Retry-After
(delay-seconds or an HTTP-date), a remaining of 0 in any rate-limit field, or a header naming a
rate-limit reason. GitHub-style servers answer a spent quota with ``403`` and
``x-ratelimit-remaining: 0``; stopping the send there would turn a pause into a failure.
"""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus

from bulksend.providers.base import Classification, Verdict
from bulksend.ratelimit.headers import (
    lower_headers,
    parse_retry_after,
    parse_seconds,
    throttle_evidence,
)

__all__ = ["common_verdict", "rate_limit_evidence", "retry_after", "throttled"]

#: rate-limit fields whose 0 is shown in a throttled 403's message
_REMAINING_FIELDS = (
    "x-ratelimit-remaining",
    "ratelimit-remaining",
    "x-rate-limit-remaining",
    "x-sib-ratelimit-remaining",
)
#: headers naming a rate-limit reason, shown as they are
_SHOWN_FIELDS = (
    "stripe-rate-limited-reason",
    "x-ratelimit-reason",
    "x-rate-limit-reason",
)
_SHOWN_CHARS = 40


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Retry-After as delay-seconds (decimals too), capped at ``MAX_DELAY``; else None.

    An HTTP-date gives None: turning it into a delay needs a clock, and the scheduler reads the
    headers itself (with one).
    """
    value = lower_headers(headers).get("retry-after") if headers else None
    if parse_seconds(value) is None:
        return None
    return parse_retry_after(value, wall_now=0.0)


def _short(value: str) -> str:
    text = value.strip()
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 1] + "…"


def rate_limit_evidence(headers: Mapping[str, str]) -> str | None:
    """What in a refusal's headers shows a spent quota, as ``name: value`` pairs; else None."""
    found = throttle_evidence(headers, wall_now=0.0)  # any parseable Retry-After counts
    if found is None:
        return None
    h = lower_headers(headers)
    shown = [f"{name}: 0" for name in _REMAINING_FIELDS if parse_seconds(h.get(name)) == 0]
    if parse_retry_after(h.get("retry-after"), wall_now=0.0) is not None:
        shown.append(f"retry-after: {_short(h['retry-after'])}")
    shown += [f"{name}: {_short(h[name])}" for name in _SHOWN_FIELDS if h.get(name, "").strip()]
    if not shown and "ratelimit" in h:
        shown.append(f"ratelimit: {_short(h['ratelimit'])}")
    return ", ".join(shown) or found


def _default_message(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status} server error" if status >= 500 else f"HTTP {status}"


def throttled(status: int, headers: Mapping[str, str], message: str) -> Classification | None:
    """THROTTLED for a 429, or for a 403 that carries rate-limit evidence; else None.

    ``message`` is the provider's text for the answer (the server's words); a throttled 403 says
    what evidence was seen: ``403 rate limited (x-ratelimit-remaining: 0): <the server's words>``.
    """
    if status == 429:
        return Classification(
            Verdict.THROTTLED, message or _default_message(status), retry_after(headers)
        )
    if status != 403:
        return None
    evidence = rate_limit_evidence(headers)
    if evidence is None:
        return None
    text = message.removeprefix(f"{status} ").strip()
    said = f"{status} rate limited ({evidence})" + (f": {text}" if text else "")
    return Classification(Verdict.THROTTLED, said, retry_after(headers))


def common_verdict(
    status: int,
    headers: Mapping[str, str],
    message: str,
    *,
    forbidden: Verdict = Verdict.AUTH,
) -> Classification | None:
    """The verdict every provider gives ``status``, or None for what the provider decides.

    ``message`` is the provider's text for the answer (an empty one is replaced by the status's
    reason phrase). ``forbidden`` is what a 403 *without* rate-limit evidence means: AUTH (the
    send stops) unless the provider's documentation gives 403 another meaning (Traitly: "the
    requested resource is hidden", INVALID).
    """
    if 200 <= status < 300:
        return None
    throttle = throttled(status, headers, message)
    if throttle is not None:
        return throttle
    text = message or _default_message(status)
    if status == 401:
        return Classification(Verdict.AUTH, text)
    if status == 403:
        return Classification(forbidden, text)
    if status == 408 or status >= 500:
        return Classification(Verdict.RETRY, text, retry_after(headers))
    return None
