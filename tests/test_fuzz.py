"""Fuzzing what bulksend reads from outside (issue 19), with Hypothesis.

Targets: the rate-limit header parsers, each provider's response classifier (and the audience,
leads and webhook readers beside them), the campaign-file loader and the recipient readers.
Each gets arbitrary bytes (and, to get past the first check, inputs shaped like the real thing)
and must

- raise nothing but bulksend's own errors (``BulksendError``: a one-line message, never a
  traceback);
- never hang: every input is done within ``HANG`` seconds (a ``SIGALRM`` stops it otherwise);
- never lose a row: every non-empty line of a JSON Lines or plain list is one row, kept or
  rejected with its line number, and the rows the reader counts are the rows it handed out.

Budget: the ``ci`` profile (the default; ``tests/hypothesis_profiles.py``) draws the same
examples on every run, ``examples(n)`` per target, the whole file in about 10 s;
``BULKSEND_HYPOTHESIS=explore`` draws 20 times as many, fresh each run (minutes). The counts
are in docs/security.md; ``pytest tests/test_fuzz.py --hypothesis-show-statistics`` shows them.
"""

from __future__ import annotations

import codecs
import gzip
import math
import re
import signal
import string
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from types import FrameType
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from bulksend.campaign import build_provider
from bulksend.config import load_settings
from bulksend.errors import BulksendError, PayloadError
from bulksend.models import HttpResponse, Recipient
from bulksend.providers import maxtraffic_audience, maxtraffic_leads, status
from bulksend.providers.base import Classification, ClassifiesSent, Provider, Verdict
from bulksend.providers.traitly_webhooks import parse_payload
from bulksend.ratelimit import headers as rl
from bulksend.sources import SourceSpec, open_source
from tests.conftest import ROOT
from tests.hypothesis_profiles import examples

#: seconds one input may take before it counts as a hang
HANG = 5.0
SAMPLES = sorted((ROOT / "samples").glob("*/*.toml"))
FIXTURES = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]


class Hung(BaseException):
    """Raised by the alarm: not an ``Exception``, so no ``except`` in bulksend can eat it."""


@contextmanager
def within(seconds: float = HANG) -> Iterator[None]:
    def ring(signum: int, frame: FrameType | None) -> None:
        raise Hung(f"an input took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# ---------------------------------------------------------------------------- strategies

#: header values servers send, and the edges of the formats
SEEN_VALUES = [
    "0", "1", "60", "1.5", ".5", "-1", "1e3", "nan", "inf", "99999999999999999999",
    "1700000000", "1700000000000", "Wed, 21 Oct 2015 07:28:00 GMT", "Sunday, 06-Nov-94",
    '"burst";q=100;w=1, "day";q=5000;w=86400', 'limit=10, remaining=0, reset=5',
    '"default";r=0;t=30', "100, 100;w=60", '"a";q=;w=x', ";;;", '"', "core", "",
]  # fmt: skip
HEADER_NAMES = [
    "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset",
    "X-RateLimit-Reset-After", "x-ratelimit-used", "x-ratelimit-resource", "RateLimit-Limit",
    "RateLimit-Remaining", "RateLimit-Reset", "RateLimit-Policy", "RateLimit", "Retry-After",
    "Date", "Content-Type", "Location", "x-ratelimit-reason", "stripe-rate-limited-reason",
    "x-sib-ratelimit-remaining",
]  # fmt: skip


def _decoded(raw: bytes) -> str:
    """Header bytes as aiohttp hands them over (UTF-8, undecodable bytes as surrogates)."""
    return raw.decode("utf-8", "surrogateescape")


header_values = st.one_of(
    st.sampled_from(SEEN_VALUES),
    st.binary(max_size=60).map(_decoded),
    st.text(alphabet=string.digits + ' .,;=-"abcdeqrtw', max_size=40),
)
header_maps = st.dictionaries(
    st.one_of(st.sampled_from(HEADER_NAMES), st.text(min_size=1, max_size=12)),
    header_values,
    max_size=6,
)
statuses = st.one_of(
    st.sampled_from([200, 201, 202, 204, 301, 302, 400, 401, 403, 404, 409, 422, 429, 500, 503]),
    st.integers(100, 599),
)
#: the keys the providers' answers use, so shaped bodies get past "is it JSON"
BODY_KEYS = [
    "success", "msg", "message", "code", "status", "error", "errors", "data", "result",
    "results", "id", "ids", "customer_id", "visitor", "leads", "email", "timestamp",
    "campaign", "web_push_subscriber", "Status", "Message", "records", "invalid",
]  # fmt: skip


def _json_containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    keys = st.sampled_from(BODY_KEYS) | st.text(max_size=8)
    return st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=5)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)  # what JSON numbers orjson reads as integers
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    _json_containers,
    max_leaves=12,
)
bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(orjson.dumps),
    st.sampled_from([b"", b"true", b"null", b'{"success": true}', b"<html></html>", b"\x00"]),
)
responses = st.builds(
    HttpResponse,
    status=statuses,
    headers=st.one_of(header_maps, header_maps.map(lambda h: CIMultiDict(h))),
    body=bodies,
)


# ---------------------------------------------------------------------------- headers


def _sane_delay(value: float | None) -> bool:
    return value is None or (math.isfinite(value) and 0.0 <= value <= rl.MAX_DELAY)


@settings(max_examples=examples(400))
@given(headers=header_maps, wall=st.floats(0, 4e9), window=st.floats(0.001, 86_400))
def test_rate_limit_header_parsers(headers: dict[str, str], wall: float, window: float) -> None:
    with within():
        info = rl.parse_headers(headers, wall_now=wall, window=window)
        assert info == rl.parse_all(headers, wall_now=wall, window=window)  # the shortcut agrees
        assert info.limit is None or 0 <= info.limit <= rl.MAX_LIMIT
        assert info.remaining is None or info.remaining >= 0
        assert info.window is None or (math.isfinite(info.window) and info.window > 0)
        assert _sane_delay(info.reset)
        assert _sane_delay(info.retry_after)
        for policy in info.policies:
            assert policy.quota >= 0
            assert policy.window is None or (math.isfinite(policy.window) and policy.window > 0)
        counts = rl.plain_counts(headers)
        assert counts is None or all(c is None or c >= 0 for c in counts)
        rl.throttle_evidence(headers, wall_now=wall)
        for value in headers.values():
            assert _sane_delay(rl.parse_retry_after(value, wall_now=wall))
            assert _sane_delay(rl.parse_reset(value, wall_now=wall, window=window))
            seconds = rl.parse_seconds(value)
            assert seconds is None or (math.isfinite(seconds) and seconds >= 0)
            rl.parse_http_date(value)
        rl.lower_headers(CIMultiDict(headers))


@settings(max_examples=examples(200))
@given(code=statuses, headers=header_maps, message=st.text(max_size=40))
def test_the_shared_status_ladder(code: int, headers: dict[str, str], message: str) -> None:
    with within():
        verdict = status.common_verdict(code, headers, message)
        assert verdict is None or isinstance(verdict.verdict, Verdict)
        assert _sane_delay(status.retry_after(headers))
        status.rate_limit_evidence(headers)


# ---------------------------------------------------------------------------- classifiers


def _providers() -> list[tuple[str, Provider]]:
    built = []
    for path in SAMPLES:
        settings_ = load_settings(path, env={})
        secrets = {name: "fuzz-secret-123456" for name in settings_.secret_sources}
        if settings_.provider == "notifyvisitors":
            secrets = {**secrets, "brand_id": "fuzz-brand"}
        built.append((path.relative_to(ROOT).as_posix(), build_provider(settings_, secrets)))
    return built


PROVIDERS = _providers()


def _request(provider: Provider) -> Any:
    """A real request of ``provider`` (its batcher over two recipients), for ``classify_sent``."""
    batcher = provider.batcher(10)
    made = [
        batcher.add(Recipient(line, name, f"u-{name}", {"email": f"{name}@example.com"}))
        for line, name in ((2, "a1"), (3, "a2"))
    ]
    batches = [b for b in made if b is not None] + list(batcher.flush())
    return provider.encode(batches[0])


def _check(found: Classification) -> None:
    assert isinstance(found.verdict, Verdict)
    assert isinstance(found.message, str)
    assert _sane_delay(found.retry_after)


@pytest.mark.parametrize(("sample", "provider"), PROVIDERS, ids=[s for s, _ in PROVIDERS])
@settings(max_examples=examples(100), suppress_health_check=FIXTURES)
@given(response=responses)
def test_each_provider_classifies_any_answer(
    sample: str, provider: Provider, response: HttpResponse
) -> None:
    with within():
        _check(provider.classify(response))
        if isinstance(provider, ClassifiesSent):
            _check(provider.classify_sent(_request(provider), response))


@settings(max_examples=examples(200))
@given(response=responses)
def test_audience_and_leads_readers_take_any_answer(response: HttpResponse) -> None:
    query = maxtraffic_leads.make_query("2024-01-01", "2024-02-01")
    with within():
        maxtraffic_audience.read_lookup(response, "http://127.0.0.1/v1/visitors/x")
        with suppress(BulksendError):
            maxtraffic_leads.read_leads(response, query, "http://127.0.0.1/v1/leads")


@settings(max_examples=examples(200))
@given(body=st.one_of(st.binary(max_size=200), json_values.map(orjson.dumps)))
def test_the_webhook_payload_reader_takes_any_body(body: bytes) -> None:
    with within():
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            return  # answered 400 before the payload is looked at
        with suppress(PayloadError):  # answered 400 with its message
            parse_payload(data)


# ---------------------------------------------------------------------------- campaign files

CAMPAIGN_KEYS = {
    "": ["provider", "name", "operation"],
    "message": ["campaign", "messages", "title", "body", "channel", "campaign_id", "name"],
    "recipients": ["path", "id", "uid", "format", "delimiter", "encoding"],
    "send": ["base_url", "batch_size", "rate", "limit", "in_flight", "timeout", "max_attempts",
             "max_unexpected", "report", "limiter"],
    "auth": ["api_key_env", "api_key_file", "token_env", "brand_id_env", "username_file"],
    "api": ["path", "paths", "operation", "brand_id", "channel"],
}  # fmt: skip
toml_scalars = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.sampled_from(["maxtraffic", "traitly", "notifyvisitors", "maxemail", "r.csv", "-",
                     "300/min", "0/s", "http://127.0.0.1:9", "utf-16", "jsonl", ","]),
)  # fmt: skip


def _toml_containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    keys = st.text(string.ascii_lowercase, min_size=1, max_size=6)
    return st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3)


toml_values = st.recursive(toml_scalars, _toml_containers, max_leaves=4)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):  # a TOML basic string: JSON's escapes are TOML's
        return orjson.dumps(value).decode()
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    items = (f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items())
    return "{ " + ", ".join(items) + " }"


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else orjson.dumps(key).decode()


@st.composite
def campaign_texts(draw: st.DrawFn) -> bytes:
    """A TOML campaign file of the known tables and keys with values of any type."""
    lines = []
    for table, keys in CAMPAIGN_KEYS.items():
        chosen = draw(st.lists(st.sampled_from(keys), unique=True, max_size=len(keys)))
        if table and (chosen or draw(st.booleans())):
            lines.append(f"[{table}]")
        lines += [f"{key} = {_toml_value(draw(toml_values))}" for key in chosen]
    return "\n".join(lines).encode()


@settings(max_examples=examples(150), suppress_health_check=FIXTURES)
@given(
    text=st.one_of(st.binary(max_size=300), campaign_texts()),
    env=st.dictionaries(
        st.sampled_from(["BULKSEND_BATCH_SIZE", "BULKSEND_RATE", "BULKSEND_BASE_URL",
                         "BULKSEND_TIMEOUT", "BULKSEND_IN_FLIGHT", "BULKSEND_LIMIT"]),
        st.text(max_size=12),
        max_size=2,
    ),
)  # fmt: skip
def test_the_campaign_loader_takes_any_file(
    tmp_path: Path, text: bytes, env: Mapping[str, str]
) -> None:
    path = tmp_path / "c.toml"
    path.write_bytes(text)
    error = ""
    with within():
        try:
            load_settings(path, env=env)
        except BulksendError as exc:
            error = str(exc)
    assert "\n" not in error, error  # one line


# ---------------------------------------------------------------------------- recipient files

_LINE_ENDINGS = re.compile(rb"\r\n|\r|\n")


#: starts of a file that is not read as UTF-8 text: gzip's magic, UTF-16/32 byte-order marks
NOT_UTF8 = (b"\x1f\x8b", codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


def _non_empty_lines(data: bytes) -> list[int]:
    """The numbers of the lines with anything on them (a leading byte-order mark is not)."""
    data = data.removeprefix(b"\xef\xbb\xbf")
    lines = _LINE_ENDINGS.split(data)
    if lines and lines[-1] == b"":
        lines.pop()  # the last line's ending
    return [n for n, line in enumerate(lines, 1) if line]


def _read(path: Path, spec: SourceSpec) -> tuple[list[int], int] | None:
    """The line of every row handed out, and how many the reader counted; None when the whole
    file is refused (a ``BulksendError``, as the CLI's one line)."""
    try:
        with open_source(spec) as rows:
            lines = [item.line for item in rows]
            return lines, rows.recipients + rows.rejected
    except BulksendError:
        return None


text_lines = st.lists(  # no NUL: a file with one is refused whole, as a binary file
    st.one_of(
        st.binary(max_size=30),
        st.text(max_size=20).map(str.encode),
        st.sampled_from([b"", b" ", b"{}", b'{"id": "a"}', b'{"id": 7, "uid": null}', b'"',
                         b"id,uid", b"a,b,c", b"\xef\xbb\xbf", b"\xff", b"[1]"]),
    ),
    max_size=12,
).map(lambda lines: [line.replace(b"\x00", b"") for line in lines])  # fmt: skip
line_endings = st.sampled_from([b"\n", b"\r\n", b"\r"])


@settings(max_examples=examples(250), suppress_health_check=FIXTURES)
@given(lines=text_lines, ending=line_endings, fmt=st.sampled_from(["jsonl", "lines"]))
def test_every_non_empty_line_is_one_row(
    tmp_path: Path, lines: list[bytes], ending: bytes, fmt: str
) -> None:
    """JSON Lines and plain lists: one row per non-empty line, none lost, none invented."""
    data = ending.join(line.replace(b"\r", b"").replace(b"\n", b"") for line in lines)
    assume(not data.startswith(NOT_UTF8))  # read as gzip or UTF-16/32: another test's job
    path = tmp_path / f"r.{fmt}"
    path.write_bytes(data)
    with within():
        got = _read(path, SourceSpec(path=str(path), format=fmt))  # type: ignore[arg-type]
    expected = _non_empty_lines(data)
    if got is None:  # refused whole: only when it has no row at all
        assert not expected, data
        return
    rows, counted = got
    assert rows == expected
    assert counted == len(rows)


@settings(max_examples=examples(250), suppress_health_check=FIXTURES)
@given(
    data=st.one_of(st.binary(max_size=400), text_lines.map(b"\n".join)),
    name=st.sampled_from(["r.csv", "r.tsv", "r.jsonl", "r.txt", "r", "r.csv.gz"]),
    fmt=st.sampled_from(["auto", "csv", "tsv", "jsonl", "lines"]),
    encoding=st.sampled_from(["utf-8", "latin-1", "utf-16", "utf-16-le", "cp1252"]),
    compress=st.sampled_from([None, "whole", "truncated"]),
)
def test_the_readers_take_any_bytes(
    tmp_path: Path, data: bytes, name: str, fmt: str, encoding: str, compress: str | None
) -> None:
    """Any file in any format: refused in one line, or rows in file order, each counted."""
    if compress is not None:
        data = gzip.compress(data)
        data = data[: len(data) // 2] if compress == "truncated" else data
    path = tmp_path / name
    path.write_bytes(data)
    spec = SourceSpec(path=str(path), format=fmt, encoding=encoding)  # type: ignore[arg-type]
    with within():
        got = _read(path, spec)
    if got is None:
        return
    rows, counted = got
    assert counted == len(rows)
    assert rows == sorted(set(rows))  # file order, one row per line number
    assert all(line >= 1 for line in rows)
