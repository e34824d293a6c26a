"""``bulksend leads [CAMPAIGN.toml] --from ISO --to ISO --out PATH``: export MaxTraffic leads.

Writes every lead collected between ``--from`` (inclusive) and ``--to`` (exclusive) — of one
campaign with ``--campaign-id`` — to a CSV or JSON Lines file (chosen by the extension, or
``--format``). The API key comes from ``$MAXTRAFFIC_API_KEY``, or from what the campaign file's
``[auth]`` table names; the base URL from ``--base-url``, the campaign file, ``$BULKSEND_BASE_URL``
or the default.
"""

from __future__ import annotations

import argparse
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bulksend.commands.common import Context, ExitStatus, add_output_flags
from bulksend.config import check_base_url, load_settings, resolve_secrets
from bulksend.errors import ConfigError, MissingSecretError
from bulksend.net.transport import Transport
from bulksend.output.logs import redactor
from bulksend.output.outputs import Output, check
from bulksend.output.printable import for_people
from bulksend.providers import maxtraffic
from bulksend.providers.maxtraffic_leads import (
    LeadsQuery,
    default_scheduler,
    dump_leads,
    fetch_leads,
    make_query,
    output_format,
    write_leads,
)

HELP = "export MaxTraffic leads to CSV or JSON Lines"
DESCRIPTION = (
    "Write every MaxTraffic lead collected between --from (inclusive) and --to (exclusive), "
    "or one campaign's with --campaign-id, to a CSV or JSON Lines file. The API key comes "
    "from $MAXTRAFFIC_API_KEY or the campaign file's [auth]; the base URL from --base-url, "
    "the campaign file, $BULKSEND_BASE_URL or the default."
)
EPILOG = """\
examples:
  bulksend leads --from 2024-05-01 --to 2024-06-01 --out may.csv
  bulksend leads campaign.toml --campaign-id 2 --from 2024-05-01T00:00:00Z \\
      --to 2024-05-08T00:00:00Z --out week.jsonl
  bulksend leads --sandbox --from 2020-01-01 --to 2100-01-01 --out sample.csv

dates: ISO 8601; a date alone is midnight UTC, a time without an offset is UTC.
exit statuses: 0 written, 2 bad flag/date/campaign id, 3 key rejected, 4 provider unavailable.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "campaign",
        type=Path,
        nargs="?",
        metavar="CAMPAIGN.toml",
        help="a MaxTraffic campaign file: its base URL, [auth] and [api].paths are used",
    )
    query = parser.add_argument_group("what to export")
    query.add_argument("--from", dest="start", required=True, metavar="ISO", help="inclusive")
    query.add_argument("--to", dest="end", required=True, metavar="ISO", help="exclusive")
    query.add_argument("--campaign-id", metavar="ID", help="only this campaign's leads")
    out = parser.add_argument_group("output")
    out.add_argument(
        "--out", required=True, metavar="PATH", help="file to write (.csv or .jsonl; '-': stdout)"
    )
    out.add_argument("--format", choices=["csv", "jsonl"], help="override the extension")
    api = parser.add_argument_group("provider")
    api.add_argument("--base-url", metavar="URL", help="MaxTraffic API base URL")
    api.add_argument(
        "--sandbox", action="store_true", help="ask the built-in sandbox (synthetic leads)"
    )
    api.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS", help="(60)")
    api.add_argument("--max-attempts", type=int, default=6, metavar="N", help="(6)")
    add_output_flags(parser)


@dataclass(frozen=True, slots=True)
class Target:
    base_url: str
    api_key: str
    paths: Mapping[str, str]


def _target(args: argparse.Namespace, ctx: Context, *, need_key: bool) -> Target:
    env = ctx.env
    paths: dict[str, str] = dict(maxtraffic.PATHS)
    if args.campaign is not None:
        settings = load_settings(args.campaign, env=env, overrides={"recipients": "-"})
        if settings.provider != maxtraffic.NAME:
            raise ConfigError(
                f"{args.campaign}: leads come from MaxTraffic; this campaign's provider is "
                f"{settings.provider!r}"
            )
        paths.update(settings.options.get("paths", {}))
        base_url = args.base_url or settings.base_url
        key = resolve_secrets(settings, env)["api_key"] if need_key else ""
    else:
        base_url = args.base_url or env.get("BULKSEND_BASE_URL") or maxtraffic.DEFAULT_BASE_URL
        var = maxtraffic.SECRETS["api_key"]
        key = env.get(var, "").strip()
        if need_key and not key:
            raise MissingSecretError(
                f"api_key: environment variable {var} is not set (export {var}=... first)"
            )
    if args.base_url:
        base_url = check_base_url(args.base_url, "--base-url")
    elif args.campaign is None and env.get("BULKSEND_BASE_URL"):
        base_url = check_base_url(base_url, "BULKSEND_BASE_URL")
    return Target(base_url.rstrip("/"), key, paths)


async def run(args: argparse.Namespace, ctx: Context) -> int:
    if args.max_attempts < 1:
        raise ConfigError("--max-attempts: must be at least 1")
    if args.timeout <= 0:
        raise ConfigError("--timeout: must be positive")
    query = make_query(args.start, args.end, campaign_id=args.campaign_id)
    out = Output("--out", args.out, "leads.csv", stdout=True, beside=True)  # replaced atomically
    check([out], {"the campaign file": args.campaign})
    to_stdout = args.out == "-"
    fmt = (args.format or "jsonl") if to_stdout else output_format(args.out, args.format)
    target = _target(args, ctx, need_key=not args.sandbox)
    if args.sandbox:
        leads = await _from_sandbox(query, args, ctx)
    else:
        redactor.register([target.api_key])
        leads = await _fetch(target, query, args)
    if to_stdout:
        dump_leads(leads, ctx.out, fmt)
        report = ctx.err
    else:
        write_leads(leads, Path(args.out), fmt)
        report = for_people(ctx.out)
    if not args.quiet:
        where = "stdout" if to_stdout else args.out
        print(f"bulksend: wrote {len(leads):,} leads ({query.describe()}) to {where}", file=report)
    return ExitStatus.OK


async def _fetch(target: Target, query: LeadsQuery, args: argparse.Namespace) -> list[Any]:
    headers = maxtraffic.MaxTraffic(api_key=target.api_key, message={}).headers()
    async with Transport(target.base_url, connections=1, timeout=args.timeout) as transport:
        return await fetch_leads(
            transport,
            default_scheduler(),
            query,
            headers=headers,
            paths=target.paths,
            max_attempts=args.max_attempts,
        )


async def _from_sandbox(query: LeadsQuery, args: argparse.Namespace, ctx: Context) -> list[Any]:
    """Start the MaxTraffic sandbox in this process (its documented paths, a throw-away key)."""
    from bulksend.sandbox import SandboxConfig, running

    key = f"sandbox-{secrets.token_hex(8)}"
    async with running(SandboxConfig(provider=maxtraffic.NAME, api_key=key)) as sandbox:
        if not args.quiet:
            print(f"bulksend: asking the built-in sandbox at {sandbox.base_url}", file=ctx.err)
        return await _fetch(Target(sandbox.base_url, key, maxtraffic.PATHS), query, args)
