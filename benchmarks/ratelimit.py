"""Quota utilisation in real time against sandbox processes with short windows.

    python -m benchmarks.ratelimit [--seconds 20] [--plot out/ratelimit.png]

Scenarios, each for ``--seconds`` of real time:

* ``headers``: MaxTraffic sandbox, 50 requests per 1 s window, honest X-RateLimit headers;
  the full engine (file -> dedup -> batches of 1 -> scheduler -> sandbox).
* ``no-headers``: the same server hiding its headers (and Retry-After); the client starts from
  twice the true limit and must find it.
* ``two-groups``: NotifyVisitors sandbox, groups user 20/s and event 50/s sending at once through
  one scheduler (the doc's groups, windows shortened); only X-RateLimit-Remaining comes back.

For each: utilisation (accepted in whole windows / allowed), 429s and retries, from the
sandbox's ledger and counters. ``--plot`` draws requests per second against the limit
(needs matplotlib: ``pip install 'bulksend[plot]'``). The limiter's own cost is measured by
``python -m benchmarks.limiter_cost``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from benchmarks.common import KEY, cli_logging, machine
from bulksend.campaign import send_campaign
from bulksend.config import load_settings
from bulksend.providers.base import Limit
from bulksend.sandbox.ledger import read_ledger
from bulksend.sandbox.testing import SandboxProcess
from bulksend.scheduler import Feedback, FeedbackKind, GroupPolicy, Scheduler

CAMPAIGN = """
provider = "maxtraffic"
[message]
messages = [{{ title = "t" }}]
[recipients]
path = "{path}"
[send]
batch_size = 1
in_flight = 8
limit = "{limit}/{window:g}s"
"""


@dataclass
class Outcome:
    name: str
    limit: dict[str, int]
    per_second: dict[str, Counter[int]] = field(default_factory=dict)
    throttled: int = 0
    requests: int = 0
    retries: int = 0

    def utilisation(self, seconds: int, window: float) -> float:
        allowed = used = 0
        for group, counts in self.per_second.items():
            busy = sorted(counts)
            whole = busy[1:-1]  # whole windows only: not the first and last (partial) ones
            used += sum(counts.get(w, 0) for w in whole)
            allowed += self.limit[group] * len(whole)
        return used / allowed if allowed else 0.0


def windows(
    ledger: Path, started: float, kinds: dict[str, str], window: float
) -> dict[str, Counter[int]]:
    """Accepted requests per window, per group (from the ledger's request numbers)."""
    seen: dict[str, dict[int, float]] = {g: {} for g in kinds.values()}
    for entry in read_ledger(ledger):
        group = kinds.get(entry.get("kind", ""), "")
        if group:
            seen[group].setdefault(entry["request"], entry["ts"])
    return {
        g: Counter(int((ts - started) // window) for ts in reqs.values())
        for g, reqs in seen.items()
    }


async def engine_scenario(
    name: str, seconds: int, headers: bool, tmp: Path, window: float
) -> Outcome:
    limit = round(50 * window)
    rows = tmp / f"{name}.csv"
    rows.write_text("id\n" + "".join(f"v{i}\n" for i in range(limit * seconds * 3)))
    campaign = tmp / f"{name}.toml"
    campaign.write_text(
        CAMPAIGN.format(path=rows, limit=limit if headers else 2 * limit, window=window)
    )
    ledger, stats = tmp / f"{name}.ledger", tmp / f"{name}.stats.json"
    args = ["--api-key", KEY, "--limit", str(limit), "--window", str(window)]
    args += ["--ledger", str(ledger)]
    args += ["--ledger-format", "requests", "--stats", str(stats)]
    if not headers:
        args += ["--no-ratelimit-headers", "--no-retry-after"]
    proc = SandboxProcess("maxtraffic", *args)
    url = proc.start()
    settings = load_settings(campaign, env={}, overrides={"base_url": url})
    engines: list[object] = []
    task = asyncio.create_task(
        send_campaign(settings, {"api_key": KEY}, progress_every=3600, on_start=engines.append)
    )
    await asyncio.sleep(seconds)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    proc.stop()
    out = Outcome(name, {"api": limit})
    data = json.loads(stats.read_text())
    out.per_second = windows(ledger, data["started_at"], {"id": "api"}, window)
    out.throttled, out.requests = data["rate_limited"], data["requests"]
    summary = getattr(engines[0], "summary", None) if engines else None
    out.retries = summary.retries if summary else 0
    return out


async def two_groups(seconds: int, tmp: Path, window: float) -> Outcome:
    limits = {"user": round(20 * window), "event": round(50 * window)}
    ledger, stats = tmp / "groups.ledger", tmp / "groups.stats.json"
    args = ["--api-key", KEY, "--window", str(window), "--ledger", str(ledger)]
    args += ["--stats", str(stats)]
    args += ["--ledger-format", "requests"]
    for g, n in limits.items():
        args += ["--group-limit", f"{g}={n}"]
    proc = SandboxProcess("notifyvisitors", *args)
    url = proc.start()
    # the client knows the documented limits scaled to the 1 s window, and reads Remaining
    sched = Scheduler({g: GroupPolicy(Limit(n, window), in_flight=8) for g, n in limits.items()})
    headers = {"x-api-key": KEY, "x-brand-id": "sandbox-brand", "Content-Type": "application/json"}
    paths = {"user": "/api/v1/user/create", "event": "/api/v1/event/track"}
    counter = iter(range(10**9))

    async def worker(session: aiohttp.ClientSession, group: str) -> None:
        while True:
            permit = await sched.acquire(group)
            n = next(counter)
            record = {"userID": f"u{n}"} if group == "user" else {"userID": f"u{n}", "event": "e"}
            async with session.post(
                url + paths[group], json={"nv": [record]}, headers=headers
            ) as r:
                await r.read()
                kind = FeedbackKind.THROTTLED if r.status == 429 else FeedbackKind.OK
                sched.complete(permit, Feedback(kind, r.headers))

    async with aiohttp.ClientSession() as session:
        tasks = [asyncio.create_task(worker(session, g)) for g in limits for _ in range(8)]
        await asyncio.sleep(seconds)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    proc.stop()
    out = Outcome("two-groups", limits)
    data = json.loads(stats.read_text())
    kinds = {"user": "user", "event": "event"}
    out.per_second = windows(ledger, data["started_at"], kinds, window)
    out.throttled, out.requests = data["rate_limited"], data["requests"]
    return out


def plot(outcomes: list[Outcome], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(outcomes), 1, figsize=(9, 2.6 * len(outcomes)), sharex=True)
    for ax, o in zip(axes, outcomes, strict=True):
        for group, counts in o.per_second.items():
            xs = sorted(counts)
            ax.step(xs, [counts[x] for x in xs], where="post", label=f"{group} accepted")
            ax.axhline(o.limit[group], linestyle="--", linewidth=1, label=f"{group} limit")
        ax.set_title(f"{o.name}: 429s {o.throttled}, requests {o.requests}")
        ax.set_ylabel("accepted per window")
        ax.set_ylim(bottom=0)
        ax.legend(loc="lower right", fontsize=7)
    axes[-1].set_xlabel("window number")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


async def main_async(args: argparse.Namespace) -> list[Outcome]:
    with tempfile.TemporaryDirectory() as d, cli_logging():
        tmp = Path(d)
        return [
            await engine_scenario("headers", args.seconds, True, tmp, args.window),
            await engine_scenario("no-headers", args.seconds, False, tmp, args.window),
            await two_groups(args.seconds, tmp, args.window),
        ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument(
        "--window", type=float, default=1.0, help="window seconds; limits scale with it (1)"
    )
    parser.add_argument("--plot", type=Path, help="write a PNG chart here (needs matplotlib)")
    args = parser.parse_args(argv)
    outcomes = asyncio.run(main_async(args))
    print(f"machine: {machine()}; {args.seconds} s per scenario, {args.window:g} s windows")
    for o in outcomes:
        print(
            f"{o.name:>11}: utilisation {o.utilisation(args.seconds, args.window):.3f}  "
            f"429s {o.throttled}  requests {o.requests}  retries {o.retries}  "
            f"max/window {max(max(c.values()) for c in o.per_second.values())} "
            f"(limits {o.limit})"
        )
    if args.plot:
        plot(outcomes, args.plot)
        print(f"chart: {args.plot}")


if __name__ == "__main__":
    main()
