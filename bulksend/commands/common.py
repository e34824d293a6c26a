"""What the subcommands share: the run context, exit statuses, and the campaign flags."""

from __future__ import annotations

import argparse
import enum
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from bulksend.commands.argtypes import fraction
from bulksend.config import FLAG_KEYS, Settings, load_settings
from bulksend.output.outputs import Output


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and epilogs as written (examples keep their lines), except a paragraph
    written as one long line, which is wrapped to the width of the help."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = []
        for paragraph in text.split("\n\n"):
            single = "\n" not in paragraph.strip("\n") and not paragraph.startswith(" ")
            if single and len(indent + paragraph.strip()) > width:
                tail = "\n" if paragraph.endswith("\n") else ""
                wrapped = textwrap.fill(
                    paragraph.strip(),
                    width,
                    initial_indent=indent,
                    subsequent_indent=indent,
                    break_on_hyphens=False,
                )
                paragraphs.append(wrapped + tail)
            else:
                paragraphs.append(super()._fill_text(paragraph, width, indent))
        return "\n\n".join(paragraphs)


class ExitStatus(enum.IntEnum):
    """Exit statuses a CI job can act on (docs/operations.md)."""

    OK = 0  # every valid recipient was delivered
    FAILURES = 1  # some recipients failed, were skipped or have an unknown outcome
    USAGE = 2  # bad flag, campaign file, environment or recipient file; nothing was sent
    AUTH = 3  # the provider rejected the credentials; the send stopped
    UNAVAILABLE = 4  # the provider stayed unavailable or the endpoint is wrong
    INTERRUPTED = 130  # SIGINT
    TERMINATED = 143  # SIGTERM


@dataclass(frozen=True, slots=True)
class Context:
    env: Mapping[str, str]
    out: TextIO
    err: TextIO


REPORT_HELP = "per-recipient report (.csv/.jsonl; '-': stdout, as CSV)"

#: flags that override the campaign file (their Settings keys)
CAMPAIGN_FLAGS = FLAG_KEYS


def add_campaign_flags(parser: argparse.ArgumentParser, *, sending: bool = True) -> None:
    parser.add_argument(
        "campaign", type=Path, metavar="CAMPAIGN.toml", help="the campaign (docs/operations.md)"
    )
    group = parser.add_argument_group("campaign overrides (flags win over BULKSEND_* and the file)")
    group.add_argument("--recipients", metavar="PATH", help="recipient file ('-' for stdin)")
    group.add_argument(
        "--format",
        choices=["auto", "csv", "tsv", "jsonl", "lines"],
        help="recipient file format (auto: from the name, else sniffed)",
    )
    group.add_argument("--delimiter", metavar="CHAR", help="CSV delimiter (default: sniffed)")
    group.add_argument(
        "--encoding",
        metavar="NAME",
        help="recipient file encoding (default utf-8, or UTF-16/UTF-32 when the file starts "
        "with their byte-order mark)",
    )
    group.add_argument(
        "--exclude",
        action="append",
        metavar="FILE",
        help="a suppression list (CSV/TSV/JSONL/plain, gzip ok): recipients whose id or uid it "
        "holds are not sent, but reported suppressed; repeatable, added to [recipients] exclude",
    )
    group.add_argument(
        "--exclude-id-column",
        metavar="NAME",
        help="the suppression lists' id column (default: the campaign's; '' for none)",
    )
    group.add_argument(
        "--exclude-uid-column",
        metavar="NAME",
        help="the suppression lists' uid column (default: the campaign's; '' for none)",
    )
    group.add_argument("--batch-size", type=int, metavar="N", help="recipients per request")
    group.add_argument(
        "--limit",
        metavar="N/UNIT",
        help="a limit you know the provider has, e.g. 600/min: a hard cap (headers may "
        "lower it, never raise it)",
    )
    group.add_argument("--rate", metavar="N/UNIT", help="your own ceiling, e.g. 300/min")
    if sending:
        group.add_argument("--base-url", metavar="URL", help="provider API base URL")
        group.add_argument("--report", metavar="PATH", help=REPORT_HELP)
        group.add_argument("--in-flight", type=int, metavar="N", help="concurrent requests")
        group.add_argument("--timeout", type=float, metavar="SECONDS", help="per request")
        group.add_argument("--max-attempts", type=int, metavar="N", help="per batch")
        group.add_argument(
            "--max-unexpected",
            type=int,
            metavar="N",
            help="stop after N answers in a row that are 2xx but not the provider's answer "
            "(a load balancer's page, a wrong path) (5)",
        )


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {key: getattr(args, key, None) for key in CAMPAIGN_FLAGS}


def settings_from(args: argparse.Namespace, ctx: Context) -> Settings:
    return load_settings(args.campaign, env=ctx.env, overrides=overrides(args))


def add_output_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("output")
    group.add_argument("-q", "--quiet", action="store_true", help="no summary, warnings only")
    group.add_argument("-v", "--verbose", action="count", default=0, help="-v info, -vv debug")
    group.add_argument(
        "--log-format",
        choices=["auto", "json", "console"],
        default="auto",
        help="logs on stderr: JSON lines or readable (auto: readable on a terminal)",
    )


def add_max_failure_rate(group: argparse._ActionsContainer) -> None:
    group.add_argument(
        "--max-failure-rate",
        type=fraction,
        default=0.0,
        metavar="FRACTION",
        help="exit 0 when at most this fraction of valid recipients was not delivered (0)",
    )


def add_ci_flags(parser: argparse.ArgumentParser) -> None:
    """--summary-json, --max-failure-rate and --progress (send and retry)."""
    ci = parser.add_argument_group("for CI jobs")
    ci.add_argument(
        "--summary-json", type=Path, metavar="PATH", help="write the summary as JSON ('-': stdout)"
    )
    add_max_failure_rate(ci)
    ci.add_argument(
        "--progress",
        choices=["auto", "always", "never"],
        default="auto",
        help="live progress line on stderr (auto: when stderr is a terminal)",
    )


def report_label(args: argparse.Namespace, env: Mapping[str, str]) -> str:
    """How the user named the report: the flag, the variable or the campaign file's key."""
    if getattr(args, "report", None):
        return "--report"
    if env.get("BULKSEND_REPORT"):
        return "$BULKSEND_REPORT"
    return "[send] report"


def send_outputs(
    args: argparse.Namespace,
    settings: Settings,
    env: Mapping[str, str],
    journal: Path | None,
    *,
    retry: bool = False,
) -> list[Output]:
    """What ``bulksend send`` and ``bulksend retry`` will write (checked before they start)."""
    if retry:  # the journal named on the command line, which exists
        journal_label, journal_hint = "journal", ""
    elif args.journal:
        journal_label, journal_hint = "--journal", "or pass --no-journal"
    else:
        journal_label, journal_hint = "journal", "give another with --journal PATH, or --no-journal"
    dead_letter = args.dead_letter
    derived = dead_letter is None and journal is not None
    if dead_letter is None and journal is not None:
        dead_letter = journal.with_suffix(".dead-letter.jsonl")  # as send_campaign names it
    return [
        Output(journal_label, journal, "campaign.journal", beside=True, hint=journal_hint),
        Output(report_label(args, env), settings.report, "report.csv", stdout=True),
        Output("--summary-json", args.summary_json, "summary.json", stdout=True),
        Output(
            "dead-letter file" if derived else "--dead-letter",
            dead_letter,
            "dead-letter.jsonl",
            hint="give another with --dead-letter PATH" if derived else "",
        ),
        Output("$GITHUB_STEP_SUMMARY", env.get("GITHUB_STEP_SUMMARY") or None, "summary.md"),
    ]


def campaign_inputs(settings: Settings) -> dict[str, str | Path | None]:
    """The files a send reads, which no output may overwrite."""
    return {
        "the recipient file": settings.recipients.path,
        "the campaign file": settings.campaign_file,
        **{f"the suppression list {p}": p for p in settings.recipients.exclude},
    }
