"""Per-recipient outcome report (CSV or JSON Lines, chosen by the file extension) and the summary.

Report columns: line, id, uid, status, reason, http_status, attempts, batch. The summary is a
frozen snapshot of the counters, rendered as text for people and as JSON for machines.
"""

from __future__ import annotations

import contextlib
import csv
import io
import sys
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, TextIO

import orjson

from bulksend.models import Outcome, Status
from bulksend.output.private import open_private
from bulksend.recipients import Recipients

COLUMNS = ("line", "id", "uid", "status", "reason", "http_status", "attempts", "batch")
#: the reason of a delivered row the provider may have received twice starts so (a request for
#: it got no answer and it was sent again); such rows are the ``possible_duplicates``
POSSIBLY_TWICE = "may have arrived twice"
# looked up once: Summary.count runs for every batch
_DELIVERED, _DUPLICATE, _INVALID = Status.DELIVERED, Status.DUPLICATE, Status.INVALID
_FAILED, _UNKNOWN, _SUPPRESSED = Status.FAILED, Status.UNKNOWN, Status.SUPPRESSED


class ReportWriter:
    """Streams outcomes to ``path``; ``.jsonl``/``.json``/``.ndjson`` -> JSON Lines, else CSV.

    ``-`` is ``stdout`` (``sys.stdout`` unless given), written as CSV and left open.
    """

    def __init__(self, path: Path | None, stdout: TextIO | None = None) -> None:
        self.path = path
        self._stdout = stdout
        self._file: IO[str] | None = None
        self._csv: Any = None
        self._json = path is not None and path.suffix.lower() in {".jsonl", ".json", ".ndjson"}

    @property
    def active(self) -> bool:
        """Is a report being written? (when not, nobody needs per-recipient outcomes)"""
        return self.path is not None

    @property
    def to_stdout(self) -> bool:
        return self.path is not None and str(self.path) == "-"

    def __enter__(self) -> ReportWriter:
        if self.to_stdout:
            self._file = self._stdout or sys.stdout
            self._csv = csv.writer(self._file)
            self._csv.writerow(COLUMNS)
        elif self.path is not None:
            self._file = open_private(self.path, "w", newline="")
            if not self._json:
                self._csv = csv.writer(self._file)
                self._csv.writerow(COLUMNS)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        file, self._file = self._file, None
        with self._named():
            if file is not None and not self.to_stdout:
                file.close()
            elif file is not None:
                file.flush()

    @contextlib.contextmanager
    def _named(self) -> Iterator[None]:
        """An error writing the report names it (a write error of a file names none)."""
        try:
            yield
        except OSError as exc:
            if exc.filename is None and not self.to_stdout:
                exc.filename = str(self.path)
            raise

    def write(self, outcomes: Iterable[Outcome]) -> None:
        if self._file is None:
            return
        with self._named():
            self._write(outcomes)

    def write_rows(
        self,
        rows: Recipients,
        status: Status,
        reason: str,
        http_status: int | None,
        attempts: int,
        batch: int | None,
    ) -> None:
        """``write`` for rows that share one outcome, from their columns: the same text,
        without an object per row (a report of millions of rows cost more than the send)."""
        if self._file is None:
            return
        tail = (status.value, reason, http_status, attempts, batch)
        with self._named():
            text = _json_rows(rows, tail) if self._json else _csv_rows(rows, tail)
            if text is None:  # a value that needs quoting or escaping: row by row
                made = rows.made()
                self._write(
                    [Outcome(r, status, reason, http_status, attempts, batch) for r in made]
                )
            else:
                self._file.write(text)

    def _write(self, outcomes: Iterable[Outcome]) -> None:
        assert self._file is not None
        if self._json:
            buf = io.StringIO()
            for o in outcomes:
                r = o.recipient
                row = {
                    "line": r.line,
                    "id": r.id,
                    "uid": r.uid,
                    "status": o.status.value,
                    "reason": o.reason,
                    "http_status": o.http_status,
                    "attempts": o.attempts,
                    "batch": o.batch,
                }
                buf.write(orjson.dumps(row).decode())
                buf.write("\n")
            self._file.write(buf.getvalue())
        else:
            self._csv.writerows(
                (
                    o.recipient.line,
                    o.recipient.id or "",
                    o.recipient.uid or "",
                    o.status.value,
                    o.reason,
                    "" if o.http_status is None else o.http_status,
                    o.attempts,
                    "" if o.batch is None else o.batch,
                )
                for o in outcomes
            )


Tail = tuple[str, str, int | None, int, int | None]  # status, reason, http_status, attempts, batch


def _plain_column(values: list[str | None] | None, count: int, unsafe: str) -> list[str] | None:
    """A column of the report as text ("" for no value), or None when a value holds a
    character of ``unsafe`` (or is not printable)."""
    if values is None:
        return [""] * count
    if None in values:
        values = [v or "" for v in values]
    joined = "".join(values)  # type: ignore[arg-type]  # no None left
    if any(c in joined for c in unsafe) or not joined.isprintable():
        return None
    return values  # type: ignore[return-value]


def _csv_rows(rows: Recipients, tail: Tail) -> str | None:
    """The CSV lines ``csv.writer`` writes for these rows, or None when an id or uid needs
    quoting."""
    count = len(rows)
    ids = _plain_column(rows.ids, count, _CSV_UNSAFE)
    uids = _plain_column(rows.uids, count, _CSV_UNSAFE)
    if ids is None or uids is None or not count:
        return None if count else ""
    status, reason, http_status, attempts, batch = tail
    buf = io.StringIO()
    csv.writer(buf).writerow(
        (
            "",
            status,
            reason,
            "" if http_status is None else http_status,
            attempts,
            "" if batch is None else batch,
        )
    )
    between = buf.getvalue()  # ",delivered,,200,1,17\r\n": after a row's uid
    return between.join(map(",".join, zip(map(str, rows.lines), ids, uids, strict=True))) + between


def _json_rows(rows: Recipients, tail: Tail) -> str | None:
    """The JSON Lines ``orjson`` writes for these rows, or None when an id or uid needs
    escaping or is missing in some rows only."""
    count = len(rows)
    if not count:
        return ""
    template = '{{"line":{}'
    columns = []
    for key, values in (("id", rows.ids), ("uid", rows.uids)):
        if values is None:  # the column is missing everywhere
            template += f',"{key}":null'
            continue
        plain = None if None in values else _plain_column(values, count, _JSON_UNSAFE)
        if plain is None:
            return None
        template += f',"{key}":"{{}}"'
        columns.append(plain)
    status, reason, http_status, attempts, batch = tail
    rest = orjson.dumps(
        {
            "status": status,
            "reason": reason,
            "http_status": http_status,
            "attempts": attempts,
            "batch": batch,
        }
    ).decode()
    template += "," + rest[1:].replace("{", "{{").replace("}", "}}") + "\n"
    return "".join(map(template.format, rows.lines, *columns))


_CSV_UNSAFE = ',"\r\n'
_JSON_UNSAFE = '"\\'


@dataclass(slots=True)
class Summary:
    """Counters of one send. Recipient counts are rows; ``requests`` counts HTTP attempts."""

    provider: str = ""
    campaign: str = ""
    read: int = 0
    duplicates: int = 0
    invalid: int = 0
    delivered: int = 0
    failed: int = 0
    unknown: int = 0
    skipped: int = 0
    #: rows a suppression list (``--exclude``) holds: never sent
    suppressed: int = 0
    requests: int = 0
    throttled: int = 0
    retries: int = 0
    #: delivered rows that may have arrived twice (the whole campaign, earlier runs included)
    possible_duplicates: int = 0
    #: of ``possible_duplicates``: delivered by an earlier run of a resumed send
    possible_duplicates_earlier: int = 0
    #: of ``delivered``: settled by an earlier run of a resumed send (from its journal)
    delivered_earlier: int = 0
    batches: int = 0
    elapsed: float = 0.0
    stopped: str = ""
    warnings: list[str] = field(default_factory=list)
    #: what the scheduler believed of each endpoint group's quota at the end: ``limit`` requests
    #: per ``window`` seconds, the ``evidence`` it rests on, the ``mode`` (headers, adaptive,
    #: configured) and the group's ``throttled`` answers
    limits: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: the identifiers the provider deduplicates on (``id``, ``uid``): each is delivered at
    #: most once in a campaign, which ``bulksend report merge`` checks across shards
    dedup_keys: list[str] = field(default_factory=list)

    def count(self, status: Status, n: int = 1) -> None:
        if status is _DELIVERED:
            self.delivered += n
        elif status is _DUPLICATE:
            self.duplicates += n
        elif status is _INVALID:
            self.invalid += n
        elif status is _FAILED:
            self.failed += n
        elif status is _UNKNOWN:
            self.unknown += n
        elif status is _SUPPRESSED:
            self.suppressed += n
        else:
            self.skipped += n

    @property
    def accounted(self) -> int:
        """Rows with a final state; equals ``read`` once a send has finished."""
        return (
            self.delivered
            + self.duplicates
            + self.invalid
            + self.failed
            + self.unknown
            + self.skipped
            + self.suppressed
        )

    @property
    def rate(self) -> float:
        """Recipients delivered per second by this run (not those an earlier run delivered)."""
        now = self.delivered - self.delivered_earlier
        return now / self.elapsed if self.elapsed > 0 else 0.0

    def _delivered_text(self) -> str:
        if not self.delivered_earlier:
            return f"{self.delivered:,}"
        return f"{self.delivered:,} ({self.delivered_earlier:,} by an earlier run)"

    def _possible_text(self) -> str:
        if not self.possible_duplicates_earlier:
            return f"{self.possible_duplicates:,}"
        earlier = self.possible_duplicates_earlier
        return f"{self.possible_duplicates:,} ({earlier:,} by an earlier run)"

    def _limit_texts(self) -> list[tuple[str, str]]:
        """``(group, "50/1.01s (X-RateLimit-Limit, window inferred from refills)")``."""
        out = []
        for group, belief in self.limits.items():
            window = float(belief.get("window", 0.0))
            text = f"{belief.get('limit')}/{window:.3g}s"
            if belief.get("evidence"):
                text += f" ({belief['evidence']})"
            out.append((group, text))
        return out

    @property
    def complete(self) -> bool:
        """True when every valid recipient was delivered."""
        return not (self.failed or self.unknown or self.skipped or self.stopped)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["recipients_per_second"] = round(self.rate, 1)
        data["elapsed"] = round(self.elapsed, 3)
        return data

    def to_json(self) -> bytes:
        return orjson.dumps(self.as_dict(), option=orjson.OPT_INDENT_2)

    @property
    def valid(self) -> int:
        """Rows that should have been delivered (not duplicates, not invalid, not suppressed)."""
        return self.delivered + self.failed + self.unknown + self.skipped

    @property
    def failure_rate(self) -> float:
        return (self.valid - self.delivered) / self.valid if self.valid else 0.0

    def markdown(self) -> str:
        """A Markdown table, e.g. for ``$GITHUB_STEP_SUMMARY``."""
        status = (
            "stopped: " + self.stopped
            if self.stopped
            else ("complete" if self.complete else "incomplete")
        )
        rows = [
            ("rows read", f"{self.read:,}"),
            ("delivered", self._delivered_text()),
            ("duplicates", f"{self.duplicates:,}"),
            ("invalid", f"{self.invalid:,}"),
            ("suppressed", f"{self.suppressed:,}"),
            ("failed", f"{self.failed:,}"),
            ("unknown", f"{self.unknown:,}"),
            ("skipped", f"{self.skipped:,}"),
            ("possible duplicates", self._possible_text()),
            ("requests", f"{self.requests:,}"),
            ("429 responses", f"{self.throttled:,}"),
            ("retries", f"{self.retries:,}"),
            ("elapsed", f"{self.elapsed:.2f} s"),
            ("recipients/s", f"{self.rate:,.0f}"),
            *((f"limit: {group}", text) for group, text in self._limit_texts()),
        ]
        out = [
            f"### bulksend: {self.provider} campaign `{self.campaign}` — {status}",
            "",
            "| | |",
            "|---|---:|",
            *(f"| {k} | {v} |" for k, v in rows),
        ]
        out += [f"\n> warning: {w}" for w in self.warnings]
        return "\n".join(out) + "\n"

    def render(self) -> str:
        rows: list[tuple[str, int | str]] = [
            ("read", self.read),
            ("duplicates", self.duplicates),
            ("invalid", self.invalid),
        ]
        if self.suppressed:
            rows.append(("suppressed", self.suppressed))
        rows += [
            ("delivered", self._delivered_text()),
            ("failed", self.failed),
        ]
        if self.unknown:
            rows.append(("unknown", self.unknown))
        if self.skipped:
            rows.append(("skipped", self.skipped))
        rows += [
            ("requests", self.requests),
            ("429s", self.throttled),
            ("retries", self.retries),
        ]
        if self.possible_duplicates:
            rows.append(("possible duplicates", self._possible_text()))
        rows += [("elapsed", f"{self.elapsed:.2f} s"), ("recipients/s", f"{self.rate:,.0f}")]
        rows += [(f"limit {group}", text) for group, text in self._limit_texts()]
        width = max(len(k) for k, _ in rows)
        head = f"bulksend: {self.provider} campaign {self.campaign!r}"
        lines = [head] + [
            f"  {k:<{width}}  {v:,}" if isinstance(v, int) else f"  {k:<{width}}  {v}"
            for k, v in rows
        ]
        if self.stopped:
            lines.append(f"  stopped: {self.stopped}")
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)
