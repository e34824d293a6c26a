"""``bulksend status redis://... CAMPAIGN``: the progress of a campaign sent by workers."""

from __future__ import annotations

import argparse
from typing import Any

from bulksend.commands.common import Context, ExitStatus

HELP = "show the progress of a campaign sent by workers"
DESCRIPTION = (
    "Show the progress of a campaign planned with `bulksend send CAMPAIGN --workers URL`: "
    "rows settled, batches in flight and waiting, each worker's counts, the rate and an ETA. "
    "A campaign that is not being sent (finished, or never planned) is said in one line, exit 0."
)
EPILOG = """\
examples:
  bulksend status redis://localhost:6379/0 "Summer sale"
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", metavar="redis://...", help="the Redis the campaign is queued in")
    parser.add_argument("campaign", metavar="CAMPAIGN", help="the campaign's name")


async def run(args: argparse.Namespace, ctx: Context) -> int:
    from bulksend.distributed.gate import client_from_url, reached
    from bulksend.distributed.keys import redact_url

    shown = redact_url(args.url)
    client = client_from_url(args.url, flag="bulksend status")
    try:
        text = await reached(
            _read(client, args.campaign),
            shown,
            down="is unreachable",
            otherwise="start Redis or check the URL",
            refused="refused it ({}); check the URL (its database number) and the user's rights",
        )
    finally:
        await client.aclose()
    if text is None:
        text = (
            f"no campaign {args.campaign!r} is being sent through {shown} "
            "(finished, or not planned with --workers)"
        )
    print(text, file=ctx.out)
    return ExitStatus.OK


async def _read(client: Any, campaign: str) -> str | None:
    """The campaign's progress as ``bulksend status`` shows it, or None when no campaign of
    that name is being sent."""
    import orjson

    from bulksend.workers.queue import REGISTRY
    from bulksend.workers.status import read_status, render
    from bulksend.workers.worker import Found, state_keys_of

    entry = await client.hget(REGISTRY, campaign)
    if entry is None:
        return None
    data = orjson.loads(entry)
    keys = state_keys_of(Found(campaign, data["provider"], data["state"]))
    return render(campaign, await read_status(client, keys))
