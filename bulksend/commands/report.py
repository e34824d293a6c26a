"""``bulksend report merge``: one summary (and one report) from the shards of a send."""

from __future__ import annotations

import argparse
import csv
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import IO, Any, TextIO

import orjson

from bulksend.commands.common import Context, ExitStatus, HelpFormatter, add_max_failure_rate
from bulksend.errors import ConfigError, InputError
from bulksend.output.outputs import Output, check
from bulksend.output.printable import for_people
from bulksend.output.private import open_private, write_private
from bulksend.output.report import COLUMNS, POSSIBLY_TWICE, Summary

HELP = "work with reports (merge the shards of a send)"
DESCRIPTION = "Work with the summaries and per-recipient reports that bulksend send writes."
EPILOG = """\
examples:
  bulksend report merge out/shard-*.summary.json --summary-json out/total.json
  bulksend report merge out/shard-*.summary.json out/shard-*.csv --report out/all.csv
"""

MERGE_DESCRIPTION = """\
Combine the per-shard summaries (written by bulksend send --summary-json) and/or per-recipient
reports (--report, CSV or JSON Lines) into one summary: counters are summed, elapsed is the
longest shard's, rates are recomputed. With --report the per-recipient reports are concatenated.
When both summaries and reports are given, their per-status counts (and possible duplicates) must
agree. Possible duplicates are the delivered rows whose reason starts "may have arrived twice"
(each send's summary counts its whole campaign, earlier runs included). No id or uid the provider
deduplicates on (the summaries name them; without summaries both) may be delivered by two report
rows: one shard delivering what another did fails the merge. Exit status: 0 when every valid
recipient was delivered (or within --max-failure-rate), 1 otherwise (also when the reports
disagree with the summaries or deliver an identifier twice), 2 for unreadable inputs."""

_REPORT_SUFFIXES = {".csv", ".tsv", ".txt"}
_JSONL_SUFFIXES = {".jsonl", ".ndjson", ".json"}
_SUMMED = tuple(
    f.name
    for f in fields(Summary)
    if f.name
    not in {"provider", "campaign", "elapsed", "stopped", "warnings", "limits", "dedup_keys"}
)
_KEYS = ("id", "uid")
#: a pseudo-status the report counts carry for delivered rows that may have arrived twice
_TWICE = "possible duplicate"
#: report status -> Summary counter
_STATUS_FIELD = {
    "delivered": "delivered",
    "duplicate": "duplicates",
    "invalid": "invalid",
    "failed": "failed",
    "unknown": "unknown",
    "skipped": "skipped",
    "suppressed": "suppressed",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="report_command", metavar="SUBCOMMAND")
    sub.required = True
    merge = sub.add_parser(
        "merge",
        help="combine per-shard summaries and reports into one",
        description=MERGE_DESCRIPTION,
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    merge.add_argument(
        "inputs",
        nargs="+",
        type=Path,
        metavar="FILE",
        help="summary JSON files (--summary-json) and/or per-recipient reports (.csv/.jsonl)",
    )
    merge.add_argument(
        "--summary-json",
        type=Path,
        metavar="PATH",
        help="write the merged summary as JSON ('-': stdout)",
    )
    merge.add_argument(
        "--report",
        type=Path,
        metavar="PATH",
        help="concatenate the per-recipient reports into PATH (.csv or .jsonl; '-': stdout, "
        "as CSV)",
    )
    add_max_failure_rate(merge)
    merge.add_argument("-q", "--quiet", action="store_true", help="do not print the summary")


def run(args: argparse.Namespace, ctx: Context) -> int:
    if args.report_command != "merge":  # pragma: no cover - argparse requires a subcommand
        raise ConfigError(f"unknown report command {args.report_command!r}")
    summaries, reports = classify(args.inputs)
    if args.report is not None and not reports:
        raise ConfigError("--report: no per-recipient reports among the inputs to concatenate")
    outputs = [
        Output("--report", args.report, "all.csv", stdout=True),
        Output("--summary-json", args.summary_json, "total.json", stdout=True),
    ]
    check(outputs, {f"the input {p}": p for p in args.inputs})
    merged = merge_summaries([s for _, s in summaries])
    counts = Counter[str]()
    twice: list[str] = []
    if reports:
        counts, twice = concatenate(reports, args.report, merged.dedup_keys or _KEYS, ctx.out)
    problems: list[str] = []
    if not summaries:
        merged = summary_from_counts(counts)
    elif reports:
        problems = compare(merged, counts)
    problems = [f"summaries and reports disagree: {p}" for p in problems] + twice
    if args.summary_json:
        data = merged.as_dict()
        data["merged_from"] = [str(p) for p in args.inputs]
        _write_json(args.summary_json, orjson.dumps(data, option=orjson.OPT_INDENT_2), ctx)
    people = ctx.err if any(o.to_stdout for o in outputs) else for_people(ctx.out)
    if not args.quiet:
        what = f"{len(summaries)} summaries" if summaries else f"{len(reports)} reports"
        print(f"merged {what}", file=people)
        print(merged.render(), file=people)
        if args.report is not None:
            print(f"  report: {args.report} ({report_rows(counts):,} rows)", file=people)
    for problem in problems:
        print(f"bulksend: {problem}", file=ctx.err)
    if problems:
        return ExitStatus.FAILURES
    if merged.complete or (not merged.stopped and merged.failure_rate <= args.max_failure_rate):
        return ExitStatus.OK
    return ExitStatus.FAILURES


def _write_json(path: Path, data: bytes, ctx: Context) -> None:
    if str(path) == "-":
        ctx.out.write(data.decode() + "\n")
        return
    write_private(path, data)


# ---- summaries ------------------------------------------------------------------------------


def classify(paths: Sequence[Path]) -> tuple[list[tuple[Path, dict[str, Any]]], list[Path]]:
    """Split the inputs into summaries (parsed) and per-recipient reports (paths)."""
    summaries: list[tuple[Path, dict[str, Any]]] = []
    reports: list[Path] = []
    for path in paths:
        if not path.is_file():
            raise InputError(f"{path}: no such file")
        suffix = path.suffix.lower()
        if suffix in _REPORT_SUFFIXES:
            reports.append(path)
            continue
        data = _read_summary(path) if suffix == ".json" or suffix not in _JSONL_SUFFIXES else None
        if data is not None:
            summaries.append((path, data))
        elif suffix in _JSONL_SUFFIXES:
            reports.append(path)
        else:
            raise InputError(f"{path}: neither a summary JSON file nor a report (.csv/.jsonl)")
    return summaries, reports


def _read_summary(path: Path) -> dict[str, Any] | None:
    """The summary in ``path``, or None when it is not one JSON object with a summary's keys."""
    try:
        data = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError:
        return None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None
    if not isinstance(data, dict) or not {"read", "delivered"} <= data.keys():
        return None
    for name in _SUMMED:
        value = data.get(name, 0)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise InputError(f"{path}: summary field {name!r} is not a count: {value!r}")
    if not isinstance(data.get("elapsed", 0.0), int | float):
        raise InputError(f"{path}: summary field 'elapsed' is not a number")
    keys = data.get("dedup_keys", [])
    if not isinstance(keys, list) or not set(keys) <= set(_KEYS):
        raise InputError(f"{path}: summary field 'dedup_keys' is not a list of id, uid")
    return data


def merge_summaries(items: Sequence[dict[str, Any]]) -> Summary:
    """Sum the counters; elapsed is the longest (the shards ran side by side)."""
    merged = Summary()
    for data in items:
        for name in _SUMMED:
            setattr(merged, name, getattr(merged, name) + int(data.get(name, 0)))
        merged.elapsed = max(merged.elapsed, float(data.get("elapsed", 0.0)))
    merged.provider = _joined(str(d.get("provider", "")) for d in items)
    merged.campaign = _joined(str(d.get("campaign", "")) for d in items)
    stops = [str(d["stopped"]) for d in items if d.get("stopped")]
    merged.stopped = "; ".join(dict.fromkeys(stops))
    warnings = (str(w) for d in items for w in d.get("warnings") or [])
    merged.warnings = list(dict.fromkeys(warnings))
    named = {str(key) for d in items for key in d.get("dedup_keys") or []}
    merged.dedup_keys = [key for key in _KEYS if key in named]
    return merged


def _joined(values: Iterator[str] | Sequence[str]) -> str:
    return ", ".join(dict.fromkeys(v for v in values if v))


def report_rows(counts: Counter[str]) -> int:
    return sum(n for status, n in counts.items() if status != _TWICE)


def summary_from_counts(counts: Counter[str]) -> Summary:
    """A summary of recipients only (no requests, no elapsed time) from report rows."""
    merged = Summary(read=report_rows(counts))
    for status, name in _STATUS_FIELD.items():
        setattr(merged, name, counts.get(status, 0))
    merged.possible_duplicates = counts.get(_TWICE, 0)
    return merged


def compare(merged: Summary, counts: Counter[str]) -> list[str]:
    """Where the reports' per-status counts differ from the summaries'."""
    out = []
    checks = [(s, getattr(merged, name), counts.get(s, 0)) for s, name in _STATUS_FIELD.items()]
    checks.append(("possible duplicates", merged.possible_duplicates, counts.get(_TWICE, 0)))
    for what, want, got in checks:
        if want != got:
            out.append(f"{what}: {want:,} in the summaries, {got:,} in the reports")
    unknown = sorted(set(counts) - set(_STATUS_FIELD) - {_TWICE})
    if unknown:
        out.append(f"unknown status(es) in the reports: {', '.join(unknown)}")
    return out


# ---- reports --------------------------------------------------------------------------------


@dataclass(slots=True)
class _Out:
    """The merged report being written (CSV or JSON Lines, by suffix, as ``ReportWriter``)."""

    path: Path | None
    stdout: TextIO | None = None  # takes the report when the path is "-" (CSV)
    file: IO[str] | None = None
    writer: Any = None
    jsonl: bool = False

    def open(self) -> None:
        if self.path is None:
            return
        if str(self.path) == "-":
            self.file = self.stdout or sys.stdout
        else:
            self.jsonl = self.path.suffix.lower() in {".jsonl", ".json", ".ndjson"}
            self.file = open_private(self.path, "w", newline="")
        if not self.jsonl:
            self.writer = csv.writer(self.file)
            self.writer.writerow(COLUMNS)

    def write(self, row: dict[str, Any]) -> None:
        if self.file is None:
            return
        if self.jsonl:
            self.file.write(orjson.dumps(_typed(row)).decode() + "\n")
        else:
            self.writer.writerow(["" if row.get(c) is None else row.get(c) for c in COLUMNS])

    def close(self) -> None:
        if self.file is not None and str(self.path) == "-":
            self.file.flush()
        elif self.file is not None:
            self.file.close()


def _int_or_none(value: Any) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _typed(row: dict[str, Any]) -> dict[str, Any]:
    """A report row with the types ``ReportWriter`` writes to JSON Lines."""
    return {
        "line": _int_or_none(row.get("line")),
        "id": row.get("id") or None,
        "uid": row.get("uid") or None,
        "status": row.get("status"),
        "reason": row.get("reason") or "",
        "http_status": _int_or_none(row.get("http_status")),
        "attempts": _int_or_none(row.get("attempts")) or 0,
        "batch": _int_or_none(row.get("batch")),
    }


def read_report(path: Path) -> Iterator[dict[str, Any]]:
    """The rows of one per-recipient report (CSV with a header, or JSON Lines), streamed."""
    suffix = path.suffix.lower()
    try:
        with path.open("r", encoding="utf-8", newline="") as f:
            if suffix in _JSONL_SUFFIXES:
                for number, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        row = orjson.loads(line)
                    except orjson.JSONDecodeError:
                        raise InputError(f"{path}:{number}: not a JSON object") from None
                    if not isinstance(row, dict) or "status" not in row:
                        raise InputError(f"{path}:{number}: not a report row (no status)")
                    yield row
            else:
                reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
                if reader.fieldnames is None or "status" not in reader.fieldnames:
                    raise InputError(f"{path}: not a bulksend report (no status column)")
                yield from reader
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text") from None


def concatenate(
    reports: Sequence[Path],
    out_path: Path | None,
    keys: Sequence[str] = _KEYS,
    stdout: TextIO | None = None,
) -> tuple[Counter[str], list[str]]:
    """Count the rows of ``reports`` by status and, with ``out_path``, write them all there
    (``-``: to ``stdout``).

    Also returns what went wrong across them: an identifier among ``keys`` that two rows
    delivered (one line naming it, both rows and how many such identifiers there are)."""
    if out_path is not None and any(p.resolve() == out_path.resolve() for p in reports):
        raise ConfigError(f"--report: {out_path} is also an input")
    counts = Counter[str]()
    out = _Out(out_path, stdout)
    out.open()
    delivered = _Delivered(keys)
    try:
        for path in reports:
            for row in read_report(path):
                status = str(row.get("status"))
                counts[status] += 1
                reason = str(row.get("reason") or "")
                if status == "delivered" and reason.startswith(POSSIBLY_TWICE):
                    counts[_TWICE] += 1
                out.write(row)
                if status == "delivered":
                    delivered.add(path, row)
        delivered.flush()
    finally:
        out.close()
        delivered.close()
    return counts, delivered.problems(reports)


class _Delivered:
    """The identifiers delivered so far, in an exact key set (bounded RAM: about 12 bytes a
    key, the text spilled to disk), and the first one delivered twice."""

    BATCH = 4096

    def __init__(self, keys: Sequence[str]) -> None:
        from bulksend.dedup.deduper import KeySet  # numpy and the C extension: only when needed

        self.keys = tuple(keys)
        self._seen = KeySet()
        self._rows: list[tuple[Path, Any, dict[str, str | None]]] = []
        self.repeats = 0
        #: (key, value, the report and line of the second delivery)
        self.first: tuple[str, str, Path, Any] | None = None

    def add(self, path: Path, row: dict[str, Any]) -> None:
        values = {key: _identifier(row.get(key)) for key in self.keys}
        self._rows.append((path, row.get("line"), values))
        if len(self._rows) >= self.BATCH:
            self.flush()

    def flush(self) -> None:
        rows, self._rows = self._rows, []
        for kind, key in enumerate(self.keys, 1):
            values = [values[key] for _, _, values in rows]
            new, present = self._seen.add_kinds([(values, kind)])[0]
            again = ~new if present is None else present & ~new
            where = again.nonzero()[0]
            self.repeats += len(where)
            if len(where) and self.first is None:
                path, line, _ = rows[int(where[0])]
                self.first = (key, str(values[int(where[0])]), path, line)

    def close(self) -> None:
        self._seen.close()

    def problems(self, reports: Sequence[Path]) -> list[str]:
        if self.first is None:
            return []
        key, value, path, line = self.first
        earlier = _first_delivery(reports, key, value)
        more = f"; {self.repeats:,} deliveries of an id or uid delivered before, in all"
        return [
            f"{key} {value!r} was delivered twice: {earlier} and {path} (line {line}); shards "
            f"must not overlap (docs/scaling.md){more if self.repeats > 1 else ''}"
        ]


def _identifier(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def _first_delivery(reports: Sequence[Path], key: str, value: str) -> str:
    """``report (line N)`` of the first row that delivered ``value`` as its ``key``."""
    for path in reports:
        for row in read_report(path):
            if row.get("status") == "delivered" and _identifier(row.get(key)) == value:
                return f"{path} (line {row.get('line')})"
    return "an earlier row"  # pragma: no cover - the key set found one
