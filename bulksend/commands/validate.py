"""``bulksend validate CAMPAIGN.toml``: check the campaign and read the whole recipient file.

Prints rows, valid, invalid by reason, duplicates, suppressed (by list), batches, requests per
endpoint and the time the send would take under the known limits (and, with send windows, when
it would finish if started now, sending only within them). Sends nothing; needs no API key (it
only says whether the key's variable is set).
"""

from __future__ import annotations

import argparse
import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from bulksend.campaign import (
    build_provider,
    exclusions,
    group_policies,
    screened,
    source_spec,
    suppressed,
)
from bulksend.commands.argtypes import fraction
from bulksend.commands.common import (
    Context,
    ExitStatus,
    add_campaign_flags,
    add_output_flags,
    campaign_inputs,
    settings_from,
)
from bulksend.config import Settings, resolve_secrets
from bulksend.control.windows import DAY_NAMES, SendWindows, moment_text
from bulksend.dedup.deduper import Deduper
from bulksend.dispatch.plan import Plan, plan
from bulksend.errors import MissingSecretError
from bulksend.output.outputs import Output, check
from bulksend.output.printable import for_people, printable
from bulksend.output.private import write_private
from bulksend.providers.base import Limit, Provider
from bulksend.sources import open_source

HELP = "check a campaign and its recipient file without sending"
DESCRIPTION = (
    "Check the campaign and read the whole recipient file: rows, valid, invalid by reason, "
    "duplicates, rows each suppression list (--exclude) suppresses, batches, requests per "
    "endpoint and the time the send would take under the known limits (with [send] window: "
    "when it would finish, sending only within the windows). Sends nothing; needs no API key."
)
EPILOG = """\
examples:
  bulksend validate samples/maxtraffic/campaign.toml
  bulksend validate campaign.toml --recipients export.csv --json plan.json
  bulksend validate campaign.toml --max-invalid-rate 0.01     # a few bad rows are fine

exit statuses: 0 valid (invalid rows within --max-invalid-rate), 1 more invalid rows than
--max-invalid-rate allows, 2 bad flag, campaign or recipient file, or not one valid row
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_campaign_flags(parser, sending=False)
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the counts as JSON")
    parser.add_argument(
        "--max-invalid-rate",
        type=fraction,
        default=0.0,
        metavar="FRACTION",
        help="exit 0 when at most this fraction of the rows read is invalid (0: any invalid "
        "row exits 1)",
    )
    add_output_flags(parser)


def walk(
    settings: Settings,
    provider: Provider,
    *,
    on_request: Callable[[Any, Any], None] | None = None,
) -> Plan:
    with (
        exclusions(settings) as lists,
        open_source(source_spec(settings)) as rows,
        Deduper(keys=provider.dedup_keys, expected=rows.estimated_rows) as dedup,
    ):
        chunks = screened(provider, suppressed(lists, rows.chunks()))
        p = plan(chunks, provider, dedup, settings.batch_size, on_request=on_request)
        if lists is not None:
            p.lists = [(f.name, f.rows, f.keys) for f in lists.files]
        return p


def limits_for(settings: Settings, provider: Provider) -> dict[str, Limit]:
    limits = {}
    for group, limit in provider.groups.items():
        lim = settings.limit or limit
        if settings.rate and settings.rate.per_second < lim.per_second:
            lim = settings.rate
        limits[group] = lim
    return limits


def print_plan(
    settings: Settings,
    provider: Provider,
    p: Plan,
    ctx: Context,
    *,
    title: str,
    now: dt.datetime | None = None,
) -> None:
    limits = limits_for(settings, provider)
    policies = group_policies(settings, provider)
    data = p.as_dict(limits, policies)
    out = for_people(ctx.out)  # names and reasons come from the files: escaped
    print(f"bulksend: {settings.provider} campaign {settings.name!r} — {title}", file=out)
    print(f"  recipients   {settings.recipients.path}", file=out)
    print(f"  rows         {p.rows:,}", file=out)
    print(f"  valid        {p.valid:,}", file=out)
    print(f"  duplicates   {p.duplicates:,}", file=out)
    if p.lists:
        keys = sum(keys for _, _, keys in p.lists)
        count = f"{len(p.lists)} list{'' if len(p.lists) == 1 else 's'}, {keys:,} keys"
        print(f"  suppressed   {p.suppressed:,} ({count})", file=out)
        for name, _, _ in p.lists:
            print(f"    {p.suppressed_by.get(name, 0):>10,}  {name}", file=out)
    print(f"  invalid      {sum(p.invalid.values()):,}", file=out)
    for reason, n in p.invalid.most_common(10):
        print(f"    {n:>10,}  {reason}", file=out)
    if p.examples:
        print(f"  first invalid rows ({len(p.examples)} of {sum(p.invalid.values()):,}):", file=out)
        for line, reason in p.examples:
            print(f"    {settings.recipients.path}:{line}: {reason}", file=out)
    print(f"  batches      {p.batches:,} (up to {settings.batch_size:,} per request)", file=out)
    for group, n in p.requests.items():
        print(f"  requests     {n:,} to {group} (limit {data['limits'][group]})", file=out)
    seconds = p.estimate_seconds(policies)
    print(f"  estimated    {duration(seconds)} at the known limits", file=out)
    windows = settings.windows
    if windows is not None:
        now = now or dt.datetime.now(dt.UTC)
        print(f"  window       {windows.describe()}", file=out)
        print(f"  finishes     {finish_text(windows, now, seconds)}", file=out)


def finish_text(windows: SendWindows, now: dt.datetime, seconds: float) -> str:
    """``about Tue 2026-03-31 11:20 Europe/Berlin if started now (waits for 09:00 ...)``."""
    start = windows.next_opening(now)
    end = windows.finish(now, seconds).astimezone(windows.zone)
    text = (
        f"about {DAY_NAMES[end.weekday()]} {end:%Y-%m-%d %H:%M} {windows.zone.key} if started now"
    )
    if start > now:
        text += f" (it waits for the window to open at {moment_text(start, now, windows.zone)})"
    return text


def estimated_finish(settings: Settings, p: Plan, policies: Any, now: dt.datetime) -> str | None:
    """The finish time across the send windows (ISO 8601, the zone's offset), for --json."""
    if settings.windows is None:
        return None
    end = settings.windows.finish(now, p.estimate_seconds(policies))
    return end.astimezone(settings.windows.zone).isoformat(timespec="seconds")


def duration(seconds: float) -> str:
    """``0:02:05``; under a second as ``under 1 s``."""
    if seconds < 0.5:
        return "under 1 s"
    return str(dt.timedelta(seconds=round(seconds)))


async def run(args: argparse.Namespace, ctx: Context) -> int:
    settings = settings_from(args, ctx)
    check([Output("--json", args.json, "plan.json")], campaign_inputs(settings))
    try:
        resolve_secrets(settings, ctx.env)
        key_note = ""
    except MissingSecretError as exc:
        key_note = f"note: {exc} (needed to send, not to validate)"
    provider = build_provider(settings, {n: "VALIDATE" for n in settings.secret_sources})
    p = walk(settings, provider)
    now = dt.datetime.now(dt.UTC)
    if not args.quiet:
        title = "valid campaign file" if p.valid else "no valid recipient: nothing would be sent"
        if p.suppressed and not p.valid:
            title = "every valid recipient is suppressed: nothing would be sent"
        print_plan(settings, provider, p, ctx, title=title, now=now)
        if key_note:
            print(f"  {printable(key_note)}", file=ctx.out)
    if args.json:
        policies = group_policies(settings, provider)
        data = p.as_dict(limits_for(settings, provider), policies)
        if settings.windows is not None:
            data["window"] = settings.windows.describe()
            data["estimated_finish"] = estimated_finish(settings, p, policies, now)
        write_private(args.json, orjson.dumps(data, option=orjson.OPT_INDENT_2))
    if not p.valid and not p.suppressed:  # (all suppressed: the lists did their job)
        return ExitStatus.USAGE
    invalid = sum(p.invalid.values())
    if invalid_rate(p) > args.max_invalid_rate:
        print(
            f"bulksend: {invalid:,} of {p.rows:,} rows are invalid ({invalid_rate(p):.2%}), "
            f"more than --max-invalid-rate {args.max_invalid_rate:g} allows",
            file=ctx.err,
        )
        return ExitStatus.FAILURES
    return ExitStatus.OK


def invalid_rate(p: Plan) -> float:
    """The fraction of the rows read that are invalid (duplicates are not)."""
    return sum(p.invalid.values()) / p.rows if p.rows else 0.0
