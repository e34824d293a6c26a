"""MaxTraffic leads export: ``GET /v1/leads`` or ``GET /v1/campaigns/{id}/leads`` between two
instants, written to CSV or JSON Lines.

::

    query = make_query("2024-05-01", "2024-06-01", campaign_id="2")     # ConfigError if bad
    leads = await fetch_leads(transport, scheduler, query, headers=provider.headers())
    count = write_leads(leads, Path("leads.csv"))

Readings (docs/providers.md): ``from``/``to`` are sent as UTC ISO 8601 with milliseconds and a
``Z`` (the form of the doc's own timestamps); a date alone means midnight UTC and a time without
an offset is UTC. The answer is a JSON array of leads (a single lead object is read as a list of
one); a lead is an object with the doc's ``email`` (``timestamp``, ``campaign`` and any other
field are kept when present). Any other 2xx (a page, an empty 204, JSON such as
``{"status": "ok", "data": []}``) is an unexpected answer -> ``UnavailableError`` naming the URL.
The doc mentions no paging, so one request returns everything. 401 -> ``AuthError``; a 404 with
a JSON body on a campaign -> ``ConfigError`` (no such campaign); any other 404, 405, 410, a
redirect -> ``UnavailableError`` naming the URL (wrong base URL); 422 -> ``ConfigError`` with
the server's message; 429, 5xx and lost connections are retried through the scheduler.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote, urlencode

import orjson

from bulksend.errors import AuthError, ConfigError, TransientError, UnavailableError
from bulksend.models import HttpRequest, HttpResponse
from bulksend.net.fetch import Fetcher, Retry, Sender
from bulksend.output import private
from bulksend.providers import maxtraffic
from bulksend.providers.answers import (
    BASE_URL_HINT,
    NOT_JSON,
    answered,
    likely_fix,
    read_json,
    stop_line,
    unexpected_answer,
)
from bulksend.providers.base import Limit
from bulksend.providers.status import throttled
from bulksend.ratelimit.scheduler import FeedbackKind, GroupPolicy, Scheduler

#: the documented fields of a lead, first in the CSV header; any others follow
FIELDS = ("email", "timestamp", "campaign")
#: the field every lead has (the doc's lead object; ``timestamp`` and ``campaign`` are kept
#: when present, and may be left out)
REQUIRED = ("email",)
#: how messages name the documented answer
ANSWER = "MaxTraffic's leads"
_SHAPE = 'a JSON array of leads: [{"email", "timestamp", "campaign"}, ...]'
FORMATS = ("csv", "jsonl")
_JSONL = {".jsonl", ".ndjson", ".json"}

Lead = dict[str, Any]


# ---------------------------------------------------------------------------- pure parts


def parse_instant(text: str, flag: str = "--from") -> datetime:
    """An ISO 8601 date or date-time as an aware UTC datetime (naive means UTC)."""
    value = text.strip()
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(
            f"{flag}: {text!r} is not an ISO 8601 date or date-time "
            "(e.g. 2024-05-01 or 2024-05-01T12:00:00Z)"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def format_instant(value: datetime) -> str:
    """``2021-11-05T11:20:03.000Z``: UTC with milliseconds, the doc's own form."""
    utc = value.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


@dataclass(frozen=True, slots=True)
class LeadsQuery:
    start: datetime | None = None
    end: datetime | None = None
    campaign_id: str | None = None

    def describe(self) -> str:
        what = f"campaign {self.campaign_id}" if self.campaign_id else "all campaigns"
        start = format_instant(self.start) if self.start else "the beginning"
        end = format_instant(self.end) if self.end else "now"
        return f"{what}, from {start} to {end}"


def make_query(start: str | None, end: str | None, *, campaign_id: str | None = None) -> LeadsQuery:
    """The query for the flags, validated: ConfigError (one line) for a bad date or range."""
    a = parse_instant(start, "--from") if start is not None else None
    b = parse_instant(end, "--to") if end is not None else None
    if a is not None and b is not None and a > b:
        raise ConfigError(f"--from ({start}) is after --to ({end})")
    if campaign_id is not None and not campaign_id.strip():
        raise ConfigError("--campaign-id: must not be empty")
    return LeadsQuery(a, b, campaign_id.strip() if campaign_id else None)


def leads_request(
    query: LeadsQuery,
    headers: Mapping[str, str],
    paths: Mapping[str, str] = maxtraffic.PATHS,
) -> HttpRequest:
    """The GET request for ``query`` (``from``/``to`` in the query string when set)."""
    if query.campaign_id is not None:
        path = paths["campaign_leads"].replace("{id}", quote(query.campaign_id, safe=""))
    else:
        path = paths["leads"]
    params = []
    if query.start is not None:
        params.append(("from", format_instant(query.start)))
    if query.end is not None:
        params.append(("to", format_instant(query.end)))
    if params:
        path += ("&" if "?" in path else "?") + urlencode(params)
    get_headers = {k: v for k, v in headers.items() if k.lower() != "content-type"}
    return HttpRequest("GET", path, get_headers)


@dataclass(frozen=True, slots=True)
class Reading:
    """What one response means: leads, or a retry, or an error to raise."""

    leads: list[Lead] | None = None
    retry: FeedbackKind | None = None
    error: Exception | None = None
    message: str = ""


def is_lead(item: Any) -> bool:
    """Whether ``item`` is the doc's lead object (an object with ``email``, at least)."""
    return isinstance(item, dict) and all(name in item for name in REQUIRED)


def as_leads(data: Any) -> list[Lead] | None:
    """The leads a 2xx's JSON holds (an array of leads, or one lead), else None."""
    if is_lead(data):
        return [data]
    if isinstance(data, list) and all(map(is_lead, data)):
        return data
    return None


def _stopped(url: str, response: HttpResponse, said: str = "") -> UnavailableError:
    """``leads: URL answered 404 no content type, empty body: is --base-url right?``"""
    fix = likely_fix(response.status)
    line = stop_line(url, answered(response, said), fix)
    return UnavailableError(f"leads: {line}", status=response.status)


def read_leads(response: HttpResponse, query: LeadsQuery, url: str = "") -> Reading:
    """Pure: the leads of a 2xx, or what to do about anything else. ``url`` (the request's,
    without credentials or query) is named in the errors."""
    status = response.status
    message = maxtraffic.error_message(response.body) if response.body else ""
    if 200 <= status < 300:
        leads = as_leads(read_json(response))  # read_json: NOT_JSON for a page
        if leads is not None:
            return Reading(leads=leads)
        said = unexpected_answer(response, ANSWER, _SHAPE)
        line = stop_line(url, said, BASE_URL_HINT)
        return Reading(error=UnavailableError(f"leads: {line}", status=status))
    throttle = throttled(status, response.headers, message)  # a 429, or a 403 with evidence
    if throttle is not None:
        return Reading(retry=FeedbackKind.THROTTLED, message=throttle.message)
    if status in (401, 403):
        return Reading(
            error=AuthError(
                f"the provider rejected the API key ({status}): {message}", status=status
            )
        )
    if status == 404 and query.campaign_id is not None and read_json(response) is not NOT_JSON:
        return Reading(
            error=ConfigError(
                f"--campaign-id {query.campaign_id}: no such campaign (404: {message})"
            )
        )
    if status == 422:
        return Reading(error=ConfigError(f"the provider refused the query (422): {message}"))
    if status >= 500 or status == 408:
        return Reading(retry=FeedbackKind.ERROR, message=message or f"{status} server error")
    return Reading(error=_stopped(url, response, message))  # 404, 405, 410, a redirect, ...


# ---------------------------------------------------------------------------- I/O


def default_scheduler(limit: Limit | None = None) -> Scheduler:
    """MaxTraffic's one ``api`` group (the quota is shared with sends on the same key)."""
    policy = GroupPolicy(maxtraffic.DEFAULT_LIMITS[maxtraffic.GROUP], in_flight=1, stated=limit)
    return Scheduler({maxtraffic.GROUP: policy})


async def fetch_leads(
    transport: Sender,
    scheduler: Scheduler,
    query: LeadsQuery,
    *,
    headers: Mapping[str, str],
    paths: Mapping[str, str] = maxtraffic.PATHS,
    group: str = maxtraffic.GROUP,
    max_attempts: int = 6,
) -> list[Lead]:
    """Every lead ``query`` selects; retries 429/5xx/lost connections, raises the rest."""
    request = leads_request(query, headers, paths)
    url = getattr(transport, "base_url", "") + request.path

    def read(response: HttpResponse) -> list[Lead] | Retry:
        reading = read_leads(response, query, url)
        if reading.leads is not None:
            return reading.leads
        if reading.error is not None:
            raise reading.error
        return Retry(reading.retry or FeedbackKind.ERROR, reading.message)

    fetcher = Fetcher(
        transport,
        scheduler,
        group=group,
        what="leads",
        max_attempts=max_attempts,
        gave_up=_gave_up,
    )
    return await fetcher.fetch(request, read)


def _gave_up(attempts: int, last: TransientError) -> UnavailableError:
    return UnavailableError(f"leads: no answer after {attempts} attempts: {last}")


def output_format(path: str, fmt: str | None = None) -> str:
    """``csv`` or ``jsonl``: ``fmt`` if given, else from the extension (ConfigError if unclear)."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise ConfigError(f"--format: {fmt!r} is not one of {', '.join(FORMATS)}")
        return fmt
    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in _JSONL:
        return "jsonl"
    raise ConfigError(
        f"--out {path}: cannot tell the format from {suffix or 'no extension'!r}; "
        "name it .csv or .jsonl, or pass --format"
    )


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


def columns(leads: Sequence[Lead]) -> list[str]:
    """The documented fields, then any others in the order they first appear."""
    names = dict.fromkeys(FIELDS)
    for lead in leads:
        for key in lead:
            names.setdefault(key)
    return list(names)


def dump_leads(leads: Sequence[Lead], out: TextIO, fmt: str) -> None:
    if fmt == "jsonl":
        for lead in leads:
            out.write(orjson.dumps(lead).decode())
            out.write("\n")
        return
    names = columns(leads)
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(names)
    writer.writerows([_cell(lead.get(name)) for name in names] for lead in leads)


def write_leads(leads: Sequence[Lead], path: Path, fmt: str | None = None) -> int:
    """Write ``leads`` to ``path`` atomically (a temporary file renamed into place)."""
    kind = output_format(str(path), fmt)
    with private.replacing(path, newline="") as f:
        dump_leads(leads, f, kind)
    return len(leads)
