"""``bulksend pause TARGET`` and ``bulksend resume TARGET``: from another shell, stop a running
send taking new batches, and let it go on (``bulksend.control.pause`` says how)."""

from __future__ import annotations

import argparse
import shlex
import time
from pathlib import Path
from typing import Any

from bulksend.commands.common import Context, ExitStatus
from bulksend.errors import BulksendError, ConfigError, UnavailableError

HELP = "pause a running send (no new batch starts; it goes on with `bulksend resume`)"
DESCRIPTION = (
    "Pause the send that keeps JOURNAL (or, with a redis:// URL and --campaign, every send of "
    "the campaign sharing its quota through that Redis): it takes no new batch within a "
    "second, lets the requests in flight finish and keeps its quota state; the process goes "
    "on running. The pause is kept in the journal (or Redis): a send started on it later "
    "waits too, until `bulksend resume`. SIGUSR1 does the same for one process."
)
EPILOG = """\
examples:
  bulksend pause .bulksend/campaign.journal
  bulksend pause redis://localhost:6379/0 --campaign "Summer sale"

`bulksend resume TARGET` (or SIGUSR2) lets the send go on.
"""
RESUME_HELP = "let a paused send go on"
RESUME_DESCRIPTION = (
    "Resume the send that keeps JOURNAL (or the sends of --campaign sharing the Redis at a "
    "redis:// URL), paused by `bulksend pause` or SIGUSR1: it takes batches again within a "
    "second. A send outside its send window stays paused until the window opens. (To go on "
    "with a send that stopped, run it again or use `bulksend retry JOURNAL`.)"
)
RESUME_EPILOG = """\
examples:
  bulksend resume .bulksend/campaign.journal
  bulksend resume redis://localhost:6379/0 --campaign "Summer sale"
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "target",
        metavar="JOURNAL|redis://...",
        help="the journal of the send, or the Redis its workers share the quota through",
    )
    parser.add_argument(
        "--campaign",
        metavar="NAME",
        help="with a redis:// URL: the campaign's name (its `name`, else the campaign file's "
        "name without .toml)",
    )


def _switch(args: argparse.Namespace) -> Any:
    from bulksend.control.pause import JournalSwitch, RedisSwitch
    from bulksend.distributed.keys import SCHEMES

    target: str = args.target
    if target.partition("://")[0].lower() in SCHEMES and "://" in target:
        if not args.campaign:
            raise ConfigError(
                f"{args.command} with a Redis URL needs --campaign NAME (the campaign's name)"
            )
        return RedisSwitch(target, args.campaign, flag=f"bulksend {args.command}")
    if args.campaign:
        raise ConfigError("--campaign goes with a redis:// URL, not with a journal")
    path = Path(target)
    if not path.is_file():
        raise ConfigError(f"{target}: no such journal (give the send's journal, by default "
                          ".bulksend/CAMPAIGN.journal beside the campaign file)")  # fmt: skip
    return JournalSwitch(path)


async def _set(args: argparse.Namespace, ctx: Context, *, paused: bool) -> int:
    from bulksend.control.pause import RedisSwitch

    switch = _switch(args)
    try:
        if isinstance(switch, RedisSwitch):
            from bulksend.distributed.gate import reached

            was = await reached(
                _flip(switch, paused),
                f"{switch.name}: cannot {args.command}: Redis",
                down="is unreachable",
                otherwise="start Redis or check the URL",
                refused="refused it ({}); check the URL (its database number) and the user's "
                "rights",
            )
        else:
            was = await _flip(switch, paused)
    except BulksendError:  # a URL or CA file refused, Redis refusing or out of reach
        raise
    except Exception as exc:  # a journal locked for too long
        raise UnavailableError(f"{switch.name}: cannot {args.command}: {exc}") from None
    finally:
        await switch.aclose()
    target = shlex.quote(args.target) if not isinstance(switch, RedisSwitch) else switch.name
    print(f"bulksend: {_said(paused, was, target)}", file=ctx.err)
    return ExitStatus.OK


async def _flip(switch: Any, paused: bool) -> bool:
    """Pause (or resume) through ``switch``; whether it was paused before."""
    from bulksend.control.pause import Pause

    before = await switch.read()
    if paused and before is None:
        await switch.write(Pause("bulksend pause", time.time()))
    elif not paused and before is not None:
        await switch.write(None)
    return before is not None


def _said(paused: bool, was: bool, target: str) -> str:
    if paused and was:
        return f"{target} was paused already"
    if paused:
        return (
            f"paused {target}: a send on it starts no new batch (within a second) and one "
            "started later waits too, until `bulksend resume`"
        )
    if not was:
        return f"{target} was not paused (a send outside its send window waits for it)"
    return f"resumed {target}: a send on it takes batches again within a second"


async def run(args: argparse.Namespace, ctx: Context) -> int:
    return await _set(args, ctx, paused=True)


async def run_resume(args: argparse.Namespace, ctx: Context) -> int:
    return await _set(args, ctx, paused=False)
