"""The status ladder the providers share (``bulksend.providers.status``), and each provider's use
of it: a 403 that shows a spent quota is a throttle, not a rejected key."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from bulksend.errors import AuthError, ProviderError, TransientError
from bulksend.models import HttpResponse
from bulksend.providers import maxemail, maxtraffic, notifyvisitors, status, traitly
from bulksend.providers.base import Classification, Verdict
from bulksend.providers.maxtraffic_audience import LookupVerdict, read_lookup
from bulksend.providers.maxtraffic_leads import LeadsQuery, read_leads
from bulksend.ratelimit.headers import MAX_DELAY
from bulksend.ratelimit.scheduler import FeedbackKind

SPENT = {"x-ratelimit-limit": "60", "x-ratelimit-remaining": "0", "retry-after": "2"}
DATE = {"Retry-After": "Wed, 21 Oct 2037 07:28:00 GMT"}


# ---------------------------------------------------------------------------- the ladder


@pytest.mark.parametrize(
    ("code", "headers", "verdict", "retry_after"),
    [
        (200, {}, None, None),
        (204, SPENT, None, None),  # a 2xx is the provider's to read, whatever its headers
        (400, {}, None, None),
        (404, {"Retry-After": "3"}, None, None),
        (409, {}, None, None),
        (422, {}, None, None),
        (429, {}, Verdict.THROTTLED, None),
        (429, {"Retry-After": "7"}, Verdict.THROTTLED, 7.0),
        (429, {"retry-after": "1.5"}, Verdict.THROTTLED, 1.5),
        (429, DATE, Verdict.THROTTLED, None),  # a date: the scheduler reads it with its clock
        (401, {}, Verdict.AUTH, None),
        (401, SPENT, Verdict.AUTH, None),  # 401 is a rejected key, whatever the headers say
        (403, {}, Verdict.AUTH, None),
        (403, {"x-ratelimit-remaining": "5"}, Verdict.AUTH, None),
        (403, {"x-ratelimit-remaining": "0"}, Verdict.THROTTLED, None),
        (403, SPENT, Verdict.THROTTLED, 2.0),
        (403, {"X-RateLimit-Remaining": "0", "Retry-After": "2"}, Verdict.THROTTLED, 2.0),
        (403, DATE, Verdict.THROTTLED, None),
        (403, {"ratelimit": '"burst";r=0;t=30'}, Verdict.THROTTLED, None),
        (403, {"Stripe-Rate-Limited-Reason": "global-rate"}, Verdict.THROTTLED, None),
        (403, {"retry-after": "soon"}, Verdict.AUTH, None),  # unreadable: no evidence
        (408, {}, Verdict.RETRY, None),
        (500, {}, Verdict.RETRY, None),
        (502, {}, Verdict.RETRY, None),
        (503, {"Retry-After": "2"}, Verdict.RETRY, 2.0),
        (503, DATE, Verdict.RETRY, None),
        (599, {}, Verdict.RETRY, None),
        (301, {}, None, None),
    ],
)
def test_common_verdict(
    code: int, headers: dict[str, str], verdict: Verdict | None, retry_after: float | None
) -> None:
    c = status.common_verdict(code, headers, "the server's words")
    if verdict is None:
        assert c is None
        return
    assert c is not None
    assert (c.verdict, c.retry_after) == (verdict, retry_after)
    assert "the server's words" in c.message


def test_forbidden_without_evidence_is_the_providers_to_name() -> None:
    hidden = status.common_verdict(403, {}, "hidden", forbidden=Verdict.INVALID)
    assert hidden == Classification(Verdict.INVALID, "hidden")
    spent = status.common_verdict(403, SPENT, "hidden", forbidden=Verdict.INVALID)
    assert spent is not None
    assert spent.verdict is Verdict.THROTTLED


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (429, "429 Too Many Requests"),
        (401, "401 Unauthorized"),
        (403, "403 Forbidden"),
        (408, "408 Request Timeout"),
        (503, "503 Service Unavailable"),
        (599, "599 server error"),
    ],
)
def test_an_empty_message_is_the_reason_phrase(code: int, message: str) -> None:
    c = status.common_verdict(code, {}, "")
    assert c is not None
    assert c.message == message


def test_a_throttled_403_says_what_it_saw() -> None:
    c = status.common_verdict(403, SPENT, "403 API rate limit exceeded")
    assert c is not None
    assert c.message == (
        "403 rate limited (x-ratelimit-remaining: 0, retry-after: 2): API rate limit exceeded"
    )
    bare = status.common_verdict(403, {"x-ratelimit-remaining": "0"}, "")
    assert bare is not None
    assert bare.message == "403 rate limited (x-ratelimit-remaining: 0)"
    ietf = status.common_verdict(403, {"RateLimit": '"burst";r=0;t=30'}, "no")
    assert ietf is not None
    assert ietf.message == '403 rate limited (ratelimit: "burst";r=0;t=30): no'
    long = status.rate_limit_evidence({"x-ratelimit-reason": "x" * 500})
    assert long is not None
    assert len(long) < 70


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({}, None),
        ({"Retry-After": "2"}, 2.0),
        ({"retry-after": " 0.25 "}, 0.25),
        ({"RETRY-AFTER": "0"}, 0.0),
        ({"Retry-After": "99999999"}, MAX_DELAY),  # capped, as for every provider
        ({"Retry-After": "-1"}, None),
        ({"Retry-After": "1e3"}, None),
        ({"Retry-After": "nan"}, None),
        (DATE, None),  # HTTP-date: left to the scheduler
    ],
)
def test_retry_after(headers: dict[str, str], seconds: float | None) -> None:
    assert status.retry_after(headers) == seconds


def test_aiohttp_headers_are_read_too() -> None:
    headers = CIMultiDictProxy(CIMultiDict([("X-RateLimit-Remaining", "0"), ("Retry-After", "2")]))
    c = status.common_verdict(403, headers, "")
    assert c is not None
    assert (c.verdict, c.retry_after) == (Verdict.THROTTLED, 2.0)
    assert status.retry_after(headers) == 2.0


# ---------------------------------------------------------------------------- each provider

Classify = Callable[[HttpResponse], Classification]
BODY = orjson.dumps({"message": "API rate limit exceeded"})
PROVIDERS: dict[str, tuple[Classify, bytes]] = {
    "maxtraffic": (maxtraffic.classify, BODY),
    "notifyvisitors": (
        notifyvisitors.classify,
        orjson.dumps({"response": {"status": "error", "message": "rate limit", "data": {}}}),
    ),
    "maxemail": (maxemail.classify, orjson.dumps({"success": False, "msg": "Forbidden"})),
    "traitly": (
        traitly.classify,
        orjson.dumps({"error": {"type": "api_error", "message": "Forbidden"}}),
    ),
}
#: what a 403 without rate-limit evidence means, per provider documentation
BARE_403 = {
    "maxtraffic": Verdict.AUTH,
    "notifyvisitors": Verdict.AUTH,
    "maxemail": Verdict.AUTH,
    "traitly": Verdict.INVALID,  # "Forbidden – The requested resource is hidden"
}


@pytest.fixture(params=sorted(PROVIDERS))
def provider(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def answer(name: str, code: int, headers: dict[str, str]) -> Classification:
    classify, body = PROVIDERS[name]
    return classify(HttpResponse(code, headers, body))


def test_a_403_with_remaining_0_and_retry_after_is_throttled(provider: str) -> None:
    c = answer(provider, 403, SPENT)
    assert (c.verdict, c.retry_after) == (Verdict.THROTTLED, 2.0)
    assert c.message.startswith("403 rate limited (x-ratelimit-remaining: 0, retry-after: 2)")


def test_a_403_with_an_http_date_retry_after_is_throttled(provider: str) -> None:
    c = answer(provider, 403, DATE)
    assert (c.verdict, c.retry_after) == (Verdict.THROTTLED, None)
    assert "retry-after: Wed, 21 Oct 2037" in c.message


def test_a_bare_403_is_what_the_doc_says(provider: str) -> None:
    c = answer(provider, 403, {})
    assert c.verdict is BARE_403[provider]
    assert "rate limited" not in c.message


def test_a_401_stays_auth_and_a_429_is_throttled(provider: str) -> None:
    assert answer(provider, 401, SPENT).verdict is Verdict.AUTH
    c = answer(provider, 429, {"Retry-After": "4"})
    assert (c.verdict, c.retry_after) == (Verdict.THROTTLED, 4.0)
    assert answer(provider, 429, {}).verdict is Verdict.THROTTLED


def test_5xx_keep_their_retry_after(provider: str) -> None:
    c = answer(provider, 503, {"Retry-After": "1.5"})
    assert (c.verdict, c.retry_after) == (Verdict.RETRY, 1.5)
    assert answer(provider, 500, {"Retry-After": "99999999"}).retry_after == MAX_DELAY


# ---------------------------------------------------------------------------- reads


def test_reads_treat_a_throttling_403_as_transient() -> None:
    with pytest.raises(TransientError, match="rate limited"):
        notifyvisitors.read_report(HttpResponse(403, SPENT, b""))
    with pytest.raises(AuthError):
        notifyvisitors.read_report(HttpResponse(403, {}, b""))
    error: dict[str, Any] = {"error": {"type": "api_error", "message": "slow down"}}
    with pytest.raises(TransientError, match=r"403 rate limited .*slow down"):
        traitly.read_list(HttpResponse(403, SPENT, orjson.dumps(error)))
    with pytest.raises(ProviderError) as hidden:
        traitly.read_list(HttpResponse(403, {}, orjson.dumps(error)))
    assert not isinstance(hidden.value, TransientError)


def test_maxtraffic_lookups_and_leads_pause_on_a_throttling_403() -> None:
    spent = read_lookup(HttpResponse(403, SPENT, BODY))
    assert spent.verdict is LookupVerdict.THROTTLED
    assert "x-ratelimit-remaining: 0" in spent.message
    assert read_lookup(HttpResponse(403, {}, BODY)).verdict is LookupVerdict.AUTH
    assert read_lookup(HttpResponse(429, {}, b"")).message == "429 Too Many Requests"
    reading = read_leads(HttpResponse(403, SPENT, BODY), LeadsQuery())
    assert reading.retry is FeedbackKind.THROTTLED
    assert reading.error is None
    assert isinstance(read_leads(HttpResponse(403, {}, BODY), LeadsQuery()).error, AuthError)
    assert read_leads(HttpResponse(429, {}, b""), LeadsQuery()).retry is FeedbackKind.THROTTLED
