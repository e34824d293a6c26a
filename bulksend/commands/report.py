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
from bulksend.outputs import Output, check
from bulksend.report import COLUMNS, Summary

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
When both summaries and reports are given, their per-status counts must agree. Exit status: 0
when every valid recipient was delivered (or within --max-failure-rate), 1 otherwise, 2 for
unreadable inputs."""

_REPORT_SUFFIXES = {".csv", ".tsv", ".txt"}
_JSONL_SUFFIXES = {".jsonl", ".ndjson", ".json"}
_SUMMED = tuple(
    f.name
    for f in fields(Summary)
    if f.name not in {"provider", "campaign", "elapsed", "stopped", "warnings", "limits"}
)
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
    if reports:
        counts = concatenate(reports, args.report, ctx.out)
    problems: list[str] = []
    if not summaries:
        merged = summary_from_counts(counts)
    elif reports:
        problems = compare(merged, counts)
    if args.summary_json:
        data = merged.as_dict()
        data["merged_from"] = [str(p) for p in args.inputs]
        _write_json(args.summary_json, orjson.dumps(data, option=orjson.OPT_INDENT_2), ctx)
    people = ctx.err if any(o.to_stdout for o in outputs) else ctx.out
    if not args.quiet:
        what = f"{len(summaries)} summaries" if summaries else f"{len(reports)} reports"
        print(f"merged {what}", file=people)
        print(merged.render(), file=people)
        if args.report is not None:
            print(f"  report: {args.report} ({sum(counts.values()):,} rows)", file=people)
    for problem in problems:
        print(f"bulksend: summaries and reports disagree: {problem}", file=ctx.err)
    if problems:
        return ExitStatus.FAILURES
    if merged.complete or (not merged.stopped and merged.failure_rate <= args.max_failure_rate):
        return ExitStatus.OK
    return ExitStatus.FAILURES


def _write_json(path: Path, data: bytes, ctx: Context) -> None:
    if str(path) == "-":
        ctx.out.write(data.decode() + "\n")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


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


def summary_from_counts(counts: Counter[str]) -> Summary:
    """A summary of recipients only (no requests, no elapsed time) from report rows."""
    merged = Summary(read=sum(counts.values()))
    for status, name in _STATUS_FIELD.items():
        setattr(merged, name, counts.get(status, 0))
    return merged


def compare(merged: Summary, counts: Counter[str]) -> list[str]:
    """Where the reports' per-status counts differ from the summaries'."""
    out = []
    for status, name in _STATUS_FIELD.items():
        want, got = getattr(merged, name), counts.get(status, 0)
        if want != got:
            out.append(f"{status}: {want:,} in the summaries, {got:,} in the reports")
    unknown = sorted(set(counts) - set(_STATUS_FIELD))
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
    reports: Sequence[Path], out_path: Path | None, stdout: TextIO | None = None
) -> Counter[str]:
    """Count the rows of ``reports`` by status and, with ``out_path``, write them all there
    (``-``: to ``stdout``)."""
    if out_path is not None and any(p.resolve() == out_path.resolve() for p in reports):
        raise ConfigError(f"--report: {out_path} is also an input")
    counts = Counter[str]()
    out = _Out(out_path, stdout)
    out.open()
    try:
        for path in reports:
            for row in read_report(path):
                counts[str(row.get("status"))] += 1
                out.write(row)
    finally:
        out.close()
    return counts
