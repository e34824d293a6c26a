"""``bulksend status redis://... CAMPAIGN``: the progress of a campaign sent by workers."""

from __future__ import annotations

import argparse

from bulksend.commands.common import Context, ExitStatus
from bulksend.errors import UnavailableError

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
    import orjson
    import redis.exceptions as rex

    from bulksend.distributed.gate import DOWN, client_from_url
    from bulksend.distributed.keys import checked_url, redact_url, remedy
    from bulksend.workers.queue import REGISTRY
    from bulksend.workers.status import read_status, render
    from bulksend.workers.worker import Found, state_keys_of

    checked_url(args.url, "bulksend status")
    client = client_from_url(args.url, flag="bulksend status")
    try:
        entry = await client.hget(REGISTRY, args.campaign)
        if entry is None:
            print(
                f"no campaign {args.campaign!r} is being sent through {redact_url(args.url)} "
                "(finished, or not planned with --workers)",
                file=ctx.out,
            )
            return ExitStatus.OK
        data = orjson.loads(entry)
        keys = state_keys_of(Found(args.campaign, data["provider"], data["state"]))
        status = await read_status(client, keys)
    except rex.ResponseError as exc:  # a database it does not have, a command not allowed
        raise UnavailableError(
            f"{redact_url(args.url)} refused it ({exc}); check the URL (its database number) "
            "and the user's rights"
        ) from None
    except (*DOWN, rex.RedisError) as exc:  # type: ignore[misc]
        reason = f"{type(exc).__name__}: {exc}"
        then = remedy(reason, "check the URL (host, user, password) and that Redis runs")
        raise UnavailableError(f"{redact_url(args.url)}: {reason}; {then}") from None
    finally:
        await client.aclose()
    print(render(args.campaign, status), file=ctx.out)
    return ExitStatus.OK
