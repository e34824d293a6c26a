"""``bulksend report merge``: one summary (and one report) from the shards of a send."""

from __future__ import annotations

import argparse
import csv
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import IO, Any

import orjson

from bulksend.commands.common import Context, ExitStatus, add_max_failure_rate
from bulksend.errors import ConfigError, InputError
from bulksend.report import COLUMNS, POSSIBLY_TWICE, Summary

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
Possible duplicates are the delivered rows whose reason starts "may have arrived twice" (each
send's summary counts its whole campaign, earlier runs included). When both summaries and
reports are given, their per-status counts (and possible duplicates) must agree. Exit status: 0
when every valid recipient was delivered (or within --max-failure-rate), 1 otherwise, 2 for
unreadable inputs."""

_REPORT_SUFFIXES = {".csv", ".tsv", ".txt"}
_JSONL_SUFFIXES = {".jsonl", ".ndjson", ".json"}
_SUMMED = tuple(
    f.name
    for f in fields(Summary)
    if f.name not in {"provider", "campaign", "elapsed", "stopped", "warnings", "limits"}
)
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
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="report_command", metavar="SUBCOMMAND")
    sub.required = True
    merge = sub.add_parser(
        "merge",
        help="combine per-shard summaries and reports into one",
        description=MERGE_DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    merge.add_argument(
        "inputs",
        nargs="+",
        type=Path,
        metavar="FILE",
        help="summary JSON files (--summary-json) and/or per-recipient reports (.csv/.jsonl)",
    )
    merge.add_argument(
        "--summary-json", type=Path, metavar="PATH", help="write the merged summary as JSON"
    )
    merge.add_argument(
        "--report",
        type=Path,
        metavar="PATH",
        help="concatenate the per-recipient reports into PATH (.csv or .jsonl)",
    )
    add_max_failure_rate(merge)
    merge.add_argument("-q", "--quiet", action="store_true", help="do not print the summary")


def run(args: argparse.Namespace, ctx: Context) -> int:
    if args.report_command != "merge":  # pragma: no cover - argparse requires a subcommand
        raise ConfigError(f"unknown report command {args.report_command!r}")
    summaries, reports = classify(args.inputs)
    merged = merge_summaries([s for _, s in summaries])
    counts = Counter[str]()
    if reports:
        counts = concatenate(reports, args.report)
    elif args.report is not None:
        raise ConfigError("--report: no per-recipient reports among the inputs to concatenate")
    problems: list[str] = []
    if not summaries:
        merged = summary_from_counts(counts)
    elif reports:
        problems = compare(merged, counts)
    if args.summary_json:
        data = merged.as_dict()
        data["merged_from"] = [str(p) for p in args.inputs]
        args.summary_json.parent.mkdir(parents=True, exist_ok=True)
        args.summary_json.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
    if not args.quiet:
        what = f"{len(summaries)} summaries" if summaries else f"{len(reports)} reports"
        print(f"merged {what}", file=ctx.out)
        print(merged.render(), file=ctx.out)
        if args.report is not None:
            print(f"  report: {args.report} ({report_rows(counts):,} rows)", file=ctx.out)
    for problem in problems:
        print(f"bulksend: summaries and reports disagree: {problem}", file=ctx.err)
    if problems:
        return ExitStatus.FAILURES
    if merged.complete or (not merged.stopped and merged.failure_rate <= args.max_failure_rate):
        return ExitStatus.OK
    return ExitStatus.FAILURES


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
    file: IO[str] | None = None
    writer: Any = None
    jsonl: bool = False

    def open(self) -> None:
        if self.path is None:
            return
        self.jsonl = self.path.suffix.lower() in {".jsonl", ".json", ".ndjson"}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = self.path.open("w", encoding="utf-8", newline="")
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
        if self.file is not None:
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


def concatenate(reports: Sequence[Path], out_path: Path | None) -> Counter[str]:
    """Count the rows of ``reports`` by status and, with ``out_path``, write them all there."""
    if out_path is not None and any(p.resolve() == out_path.resolve() for p in reports):
        raise ConfigError(f"--report: {out_path} is also an input")
    counts = Counter[str]()
    out = _Out(out_path)
    out.open()
    try:
        for path in reports:
            for row in read_report(path):
                status = str(row.get("status"))
                counts[status] += 1
                reason = str(row.get("reason") or "")
                if status == "delivered" and reason.startswith(POSSIBLY_TWICE):
                    counts[_TWICE] += 1
                out.write(row)
    finally:
        out.close()
    return counts
