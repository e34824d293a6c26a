"""``bulksend sandbox NAME``: run a local server that behaves like a provider's API."""

from __future__ import annotations

import argparse

from bulksend.commands.common import Context

HELP = "run a local server that behaves like a provider"
DESCRIPTION = (
    "Run a sandbox server faithful to a provider's API documentation: auth, status codes, "
    "rate-limit headers and 429s, injected faults, and a ledger of what it accepted. "
    "--profile puts a real limiter family in front instead of the provider's own "
    "(docs/providers.md, 'The sandboxes')."
)
EPILOG = """\
examples:
  bulksend sandbox maxtraffic --port 8765 --api-key test --ledger ledger.jsonl
  bulksend sandbox maxtraffic --limit 50 --window 1 --fail-rate 0.1 --seed 7
  bulksend sandbox maxtraffic --profile leaky --limit 20 --window 1 --burst 5
  bulksend sandbox maxtraffic --profile ietf --limit 20 --window 1
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from bulksend.sandbox import cli

    cli.add_arguments(parser)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from bulksend.sandbox import cli

    return cli.run(args)
