"""``bulksend worker redis://... [--campaign NAME]``: send batches a planner queued."""

from __future__ import annotations

import argparse
from typing import Any

from bulksend.commands.argtypes import non_negative, positive
from bulksend.commands.common import Context, ExitStatus
from bulksend.errors import AuthError, ProviderError

HELP = "send the batches a planner (`bulksend send ... --workers URL`) queued in Redis"
DESCRIPTION = (
    "Take batches of a campaign planned with `bulksend send CAMPAIGN --workers URL` from the "
    "Redis at URL and send them, sharing the provider's quota and pause with every other "
    "worker; exit once the campaign is complete. Any number of workers, on any machine, can "
    "be started and stopped at any time; what a worker that dies held is taken over by the "
    "others after --idle seconds and resent as possible duplicates. The provider's key must "
    "be the planner's: from the environment, as for `bulksend send`, or from the file the "
    "campaign names ([auth] api_key_file; a relative path is looked for beside the planner's "
    "campaign file, then in the current directory, else MAXTRAFFIC_API_KEY is used). "
    "docs/scaling.md."
)
EPILOG = """\
examples:
  bulksend worker redis://localhost:6379/0 --wait 1
  bulksend worker redis://localhost:6379/0 --campaign "Summer sale" --wait 1
  bulksend status redis://localhost:6379/0 "Summer sale"     # progress, from anywhere

The provider's key comes from the environment (MAXTRAFFIC_API_KEY=..., as for send) or
the file the campaign names ([auth] api_key_file), which must then be on this machine.
rediss:// (TLS; a CA of your own: rediss://HOST:PORT/0?ssl_ca_certs=/path/ca.pem) and
redis://USER:PASSWORD@HOST/DB (ACL users) work; no password is shown.

exit statuses: 0 the campaign is complete (or there was none to serve), 2 a bad URL, or no
key on this machine (nothing sent), 3 credentials rejected, 4 provider or Redis unavailable,
130/143 interrupted (what was not started goes back to the other workers)
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", metavar="redis://...", help="the Redis the planner queues in")
    parser.add_argument(
        "--campaign",
        metavar="NAME",
        help="the campaign to serve (default: the only one being sent)",
    )
    parser.add_argument(
        "--name",
        metavar="NAME",
        help="this worker's name in `bulksend status` and the consumer group (default: "
        "HOST-PID; a worker restarted under its name first takes back what it held)",
    )
    parser.add_argument(
        "--idle",
        type=positive,
        default=30.0,
        metavar="SECONDS",
        help="take over batches another worker held this long without a sign of life (30)",
    )
    parser.add_argument(
        "--wait",
        type=non_negative,
        default=60.0,
        metavar="SECONDS",
        help="wait this long for a campaign to be planned before exiting (60)",
    )
    parser.add_argument("--quiet", "-q", action="store_true", help="no line on stderr")


async def run(args: argparse.Namespace, ctx: Context) -> int:
    from bulksend.commands.send import _Interrupts
    from bulksend.workers.worker import default_name, exit_counts, run_worker

    def say(line: str) -> None:
        if not args.quiet:
            print(f"bulksend: {line}", file=ctx.err)

    name = args.name or default_name()
    interrupts = _Interrupts(ctx)
    with interrupts.installed():
        engine: Any = await run_worker(
            args.url,
            campaign=args.campaign,
            name=name,
            env=ctx.env,
            idle=args.idle,
            wait=args.wait,
            say=say,
            on_start=interrupts.attach,
        )
    if engine is None:
        say("no campaign to serve: nothing was sent")
        return ExitStatus.OK
    say(f"worker {name}: {exit_counts(engine)}")
    if interrupts.name:
        return interrupts.status
    stopped = engine.stopped_by
    if stopped is not None:
        from bulksend.output import logs

        say(logs.redactor.scrub(str(stopped)))
    if isinstance(stopped, AuthError):
        return ExitStatus.AUTH
    if isinstance(stopped, ProviderError):
        return ExitStatus.UNAVAILABLE
    return ExitStatus.OK
