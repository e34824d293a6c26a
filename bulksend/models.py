"""Value objects that flow through the pipeline: frozen and slotted, no behaviour of their own."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


class Status(enum.StrEnum):
    """The one final state every recipient ends in (see docs/operations.md)."""

    DELIVERED = "delivered"
    DUPLICATE = "duplicate"
    INVALID = "invalid"
    FAILED = "failed"
    UNKNOWN = "unknown"
    SKIPPED = "skipped"
    #: listed in a suppression list (``--exclude``): dropped before anything was sent
    SUPPRESSED = "suppressed"


@dataclass(frozen=True, slots=True)
class Recipient:
    """One row of a recipient file.

    ``id`` and ``uid`` are the provider's identifiers (MaxTraffic: visitor id and user id; other
    providers use ``id`` as their primary key and keep the rest in ``attrs``). ``line`` is the
    1-based line where the record starts, for error messages and the report.
    """

    line: int
    id: str | None
    uid: str | None = None
    attrs: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Rejected:
    """A row that could not become a recipient, with the reason (reported as ``invalid``)."""

    line: int
    reason: str
    id: str | None = None
    uid: str | None = None


#: why a row whose identifiers were all seen earlier in the file is not sent
DUPLICATE_REASON = "already in this campaign"


@dataclass(frozen=True, slots=True)
class Duplicate(Rejected):
    """A row deduplicated before the engine saw it (a shard deduplicates the whole file, see
    ``bulksend.state.shard``): reported ``duplicate`` with its reason, not ``invalid``."""


@dataclass(frozen=True, slots=True)
class Suppressed(Rejected):
    """A row whose id or uid a suppression list holds (``bulksend.dedup.suppress``), dropped
    before deduplication: reported ``suppressed`` with its reason (``uid listed in FILE:LINE``);
    ``source`` is the list's name, for counts by list."""

    source: str = ""


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """An encoded request, ready for the transport. ``path`` is joined to the base URL."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes | None = None


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """What the transport hands back: status, headers (case-insensitive lookups) and body."""

    status: int
    headers: Mapping[str, str]
    body: bytes


@dataclass(slots=True)
class Batch:
    """Recipients packed into one request for one endpoint group."""

    number: int
    group: str
    #: a ``Recipients`` (columns) from the batchers; any sequence of recipients will do
    recipients: Sequence[Recipient]
    attempts: int = 0
    #: an earlier run may have sent it (it was in flight when that run died)
    possibly_sent: bool = False
    #: why it may have been sent ("resent after run 2 was interrupted ..."), for the report
    doubt: str = ""
    #: the rest of a batch an earlier run had split (422): its outcome is kept as parts
    resumed_split: bool = False

    def __len__(self) -> int:
        return len(self.recipients)


@dataclass(frozen=True, slots=True)
class Outcome:
    """The final state of one recipient, as written to the report."""

    recipient: Recipient
    status: Status
    reason: str = ""
    http_status: int | None = None
    attempts: int = 0
    batch: int | None = None
