"""What every provider module supplies. Providers are pure: they never touch a session or a clock.

A provider turns recipients into requests (``batcher`` + ``encode``) and responses into verdicts
(``classify``). The engine owns all I/O; the scheduler owns all timing.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from bulksend.models import Batch, HttpRequest, HttpResponse, Recipient, Rejected
from bulksend.recipients import Recipients
from bulksend.sources.spec import Chunk


@dataclass(frozen=True, slots=True)
class Limit:
    """A request quota: ``requests`` per ``window`` seconds (a fixed window unless stated)."""

    requests: int
    window: float = 60.0

    @property
    def per_second(self) -> float:
        return self.requests / self.window


class Verdict(enum.Enum):
    """What a response means for the batch that got it."""

    DELIVERED = "delivered"  # the provider accepted the batch
    #: 429, or a 403 with rate-limit evidence (a spent quota): wait, retry through the bucket
    THROTTLED = "throttled"
    RETRY = "retry"  # 5xx and similar transient failures: back off, then retry
    INVALID = "invalid"  # the provider refused these recipients (422, 400, an error envelope)
    AUTH = "auth"  # 401, 403 without rate-limit evidence: the whole send stops at once
    #: the request can never succeed (404 on the endpoint, 405, 406, a redirect): stop
    FATAL = "fatal"
    #: a 2xx that is not the provider's documented success answer (a load balancer's page, a
    #: captive portal, a wrong path, JSON of another shape): never delivered
    UNEXPECTED = "unexpected"


@dataclass(frozen=True, slots=True)
class Classification:
    verdict: Verdict
    message: str = ""
    retry_after: float | None = None  # seconds, when the response said so
    #: with INVALID: the positions (in the batch's recipients) the provider named as bad, with
    #: their reasons; the engine reports those invalid and resends the rest at once
    rejected: Mapping[int, str] | None = None
    #: a warning the provider attached (e.g. a deprecation), logged once and shown in the summary
    warning: str | None = None
    #: with UNEXPECTED: the answer in short for the stop line, e.g. ``200 text/html, not
    #: MaxTraffic's JSON answer`` (``bulksend.providers.answers.unexpected`` fills it in)
    unexpected: str | None = None
    #: with UNEXPECTED: the answer was JSON, only not of the documented shape, so it may be the
    #: provider's own answer in a form it changed: whether it acted is ``unknown``. A page or
    #: any other non-JSON answer is not the provider's API: its recipients ``failed``.
    maybe_provider: bool = False
    #: with FATAL: the likely fix, a question for the stop line (``is --base-url right?``);
    #: ``bulksend.providers.answers.fatal`` fills it in, its ``message`` names the answer
    hint: str | None = None


@runtime_checkable
class Batcher(Protocol):
    """Packs recipients into batches; pure and incremental, so any file size streams through.

    A batcher may also be a ``BatchAdder`` (the engine prefers ``add_many`` then).
    """

    def add(self, recipient: Recipient) -> Batch | None:
        """Take one recipient; return a batch when one is full."""

    def flush(self) -> Iterable[Batch]:
        """Return what is left as final batches (never an empty one)."""


@runtime_checkable
class BatchAdder(Protocol):
    """An optional hook of a ``Batcher``: many recipients at once (columns, not objects)."""

    def add_many(self, recipients: Sequence[Recipient]) -> list[Batch]: ...


def add_all(batcher: Batcher, recipients: Sequence[Recipient]) -> list[Batch]:
    """The batches ``recipients`` fill: through ``add_many`` when the batcher has it."""
    return adder(batcher)(recipients)


def adder(batcher: Batcher) -> Callable[[Sequence[Recipient]], list[Batch]]:
    """``add_all`` for ``batcher``, its kind looked up once (the ``BatchAdder`` check walks
    the protocol's members: about 12 µs, too much once a chunk)."""
    if isinstance(batcher, BatchAdder):
        return batcher.add_many

    def one_by_one(recipients: Sequence[Recipient]) -> list[Batch]:
        full = (batcher.add(r) for r in recipients)
        return [batch for batch in full if batch is not None]

    return one_by_one


@dataclass(slots=True)
class CountBatcher:
    """Batches of at most ``size`` recipients for ``group``, numbered from 1, in order.

    Batches are slices of the columns handed in (no recipient object is made).
    """

    size: int
    group: str
    _number: int = 0
    _pending: list[Recipients] = field(default_factory=list)
    _count: int = 0

    def add(self, recipient: Recipient) -> Batch | None:
        batches = self.add_many(Recipients.of([recipient]))
        return batches[0] if batches else None

    def add_many(self, recipients: Sequence[Recipient]) -> list[Batch]:
        rows = Recipients.of(recipients)
        if self._count + len(rows) < self.size:
            if len(rows):
                self._pending.append(rows)
                self._count += len(rows)
            return []
        rows = Recipients.join([*self._pending, rows])
        size = self.size
        full = len(rows) - len(rows) % size
        out = [self._take(rows[i : i + size]) for i in range(0, full, size)]
        rest = rows[full:]
        self._pending = [rest] if len(rest) else []
        self._count = len(rest)
        return out

    def _take(self, rows: Sequence[Recipient]) -> Batch:
        self._number += 1
        return Batch(self._number, self.group, rows)

    def flush(self) -> Iterable[Batch]:
        if not self._count:
            return []
        rows = Recipients.join(self._pending)
        self._pending, self._count = [], 0
        return [self._take(rows)]


@runtime_checkable
class Provider(Protocol):
    """The contract between the engine and one provider API."""

    name: str
    #: endpoint groups with their documented default limits, e.g. {"notifications": Limit(600)}
    groups: Mapping[str, Limit]
    #: does the provider send X-RateLimit headers? (False: the scheduler adapts on its own)
    sends_rate_headers: bool
    #: the recipient fields deduplicated (each separately) over the whole campaign
    dedup_keys: tuple[str, ...]

    def batcher(self, batch_size: int) -> Batcher: ...

    def encode(self, batch: Batch) -> HttpRequest: ...

    def classify(self, response: HttpResponse) -> Classification: ...

    def describe(self) -> Mapping[str, Any]:
        """Facts for the summary and the dry run (operation, group, path); never secrets."""
        ...


# Optional hooks of a ``Provider`` (found with ``isinstance``; ``tests/test_provider_contract``
# checks every provider against them).


@runtime_checkable
class ClassifiesSent(Protocol):
    """The verdict knowing the request it answers (Traitly checks that its answer names the
    record sent); the engine prefers it to ``classify``."""

    def classify_sent(self, request: HttpRequest, response: HttpResponse) -> Classification: ...


@runtime_checkable
class Screening(Protocol):
    """Rows the provider can refuse before any request, moved to ``rejected`` (``screen_with``)."""

    def screen(self, chunks: Iterable[Chunk]) -> Iterable[Chunk]: ...


class ProviderModule(Protocol):
    """What a provider module (``bulksend.providers.NAME``) supplies: the registry's contract."""

    NAME: str
    DEFAULT_BASE_URL: str
    DEFAULT_BATCH_SIZE: int
    #: the operations a campaign may name; the first is the default
    OPERATIONS: tuple[str, ...]
    #: secret name -> the environment variable it is read from by default
    SECRETS: Mapping[str, str]

    def build(self, options: Mapping[str, Any], secrets: Mapping[str, str]) -> Provider: ...


@runtime_checkable
class SecretsFor(Protocol):
    """An optional hook of a provider module: the secrets a campaign needs depend on its
    ``[api]`` table (NotifyVisitors' auth mode); else ``SECRETS``."""

    def secrets_for(self, api: Mapping[str, Any]) -> Mapping[str, str]: ...


def screen_with(
    check: Callable[[Recipient], str | None], chunks: Iterable[Chunk]
) -> Iterator[Chunk]:
    """Chunks with the rows ``check`` refuses (it returns a reason) moved to ``rejected``.

    Providers use it for their ``screen(chunks)``: rows they can tell are unsendable before any
    request (a missing required column, an unreadable timestamp) are reported ``invalid`` with
    ``file:line`` and never cost a request.
    """
    for recipients, rejected in chunks:
        rows = Recipients.of(recipients)
        reasons = list(map(check, rows))
        if reasons.count(None) == len(reasons):
            yield Chunk(rows, rejected)
            continue
        refused = [
            Rejected(r.line, reason, r.id, r.uid)
            for r, reason in zip(rows, reasons, strict=True)
            if reason is not None
        ]
        kept = rows.select([reason is None for reason in reasons])
        yield Chunk(kept, rejected + refused if rejected else refused)


#: option keys bulksend itself passes to ``build`` beside the campaign's ``[api]`` table
PASSED_OPTIONS = frozenset({"operation", "message", "campaign_name", "columns"})


def checked_options(
    provider: str,
    options: Mapping[str, Any],
    *,
    operations: Iterable[str],
    api_keys: Iterable[str],
    message_fields: Iterable[str] | Mapping[str, Iterable[str]],
) -> tuple[str, Mapping[str, Any]]:
    """The operation and the ``[message]`` table, once the operation, the ``[api]`` keys and
    the ``[message]`` fields are known to the provider (else a one-line ``ConfigError``)."""
    from bulksend.errors import ConfigError

    known = list(operations)
    operation = options.get("operation", known[0])
    if operation not in known:
        raise ConfigError(
            f"{provider}: unknown operation {operation!r} (known: {', '.join(known)})"
        )
    allowed = sorted(api_keys)
    extra = sorted(set(options) - PASSED_OPTIONS - set(allowed))
    if extra:
        raise ConfigError(
            f"[api]: unknown key(s) {', '.join(extra)} for {provider} "
            f"(allowed: {', '.join(allowed) or 'none'})"
        )
    message = options.get("message", {})
    if not isinstance(message, Mapping):
        raise ConfigError("[message] must be a table")
    per_operation = isinstance(message_fields, Mapping)
    if isinstance(message_fields, Mapping):
        fields = sorted(message_fields[operation])
    else:
        fields = list(message_fields)
    unknown = sorted(set(message) - set(fields))
    if unknown:
        which = f"{provider} operation {operation!r}" if per_operation else provider
        raise ConfigError(
            f"[message]: unknown field(s) {', '.join(unknown)} for {which} "
            f"(allowed: {', '.join(fields)})"
        )
    return operation, message


def checked_paths(options: Mapping[str, Any], defaults: Mapping[str, str]) -> dict[str, str]:
    """The provider's endpoint paths with the campaign's ``[api].paths`` overrides (checked)."""
    from bulksend.errors import ConfigError

    paths = options.get("paths", {})
    if not isinstance(paths, Mapping) or not all(
        isinstance(v, str) and v.startswith("/") for v in paths.values()
    ):
        raise ConfigError("[api].paths: a table of paths starting with '/'")
    unknown = sorted(set(paths) - set(defaults))
    if unknown:
        raise ConfigError(
            f"[api].paths: unknown endpoint(s) {', '.join(unknown)} "
            f"(known: {', '.join(sorted(defaults))})"
        )
    return {**defaults, **paths}
