"""Quota utilisation in real time against sandbox processes with short windows.

    python -m benchmarks.ratelimit [--seconds 20] [--window 1] [--plot out/ratelimit.png]
    python -m benchmarks.ratelimit --profiles all [--seconds 20] [--plot out/profiles.png]

Scenarios (the default), each for ``--seconds`` of real time; they state the limit on purpose:

* ``headers``: MaxTraffic sandbox, 50 requests per 1 s window, honest X-RateLimit headers;
  the full engine (file -> dedup -> batches of 1 -> scheduler -> sandbox).
* ``no-headers``: the same server hiding its headers (and Retry-After); the client starts from
  twice the true limit and must find it.
* ``two-groups``: NotifyVisitors sandbox, groups user 20/s and event 50/s sending at once through
  one scheduler (the doc's groups, windows shortened); only X-RateLimit-Remaining comes back.

``--profiles``: real limiter families (``bulksend sandbox --profile``, see ``PROFILES``), each
behind a MaxTraffic sandbox, against a whole ``send_campaign`` that states **no** limit: the
scheduler starts from MaxTraffic's documented 600 per minute and must find the rest. Each runs
``--seconds``, or four of its binding windows when that is longer (github: 40 s).

For each run: utilisation of the true rate (accepted in the whole windows of the run / what they
allow), refusals (429, 503 or GitHub's 403) and requests from the sandbox's counters, retries and
the limits the scheduler believed at the end (``Summary.limits``), and the time from the first
request until the accepted rate over the trailing second first reached 0.9 of the true rate.
``--plot`` draws accepted requests against the limit (needs matplotlib: ``pip install
'bulksend[plot]'``). The limiter's own cost is measured by ``python -m benchmarks.limiter_cost``.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import math
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.common import KEY, cli_logging, machine
from bulksend.campaign import send_campaign
from bulksend.config import load_settings
from bulksend.dispatch.engine import Engine
from bulksend.models import HttpRequest, HttpResponse
from bulksend.net.transport import Transport
from bulksend.providers.base import Limit
from bulksend.ratelimit.scheduler import Feedback, FeedbackKind, GroupPolicy, Scheduler
from bulksend.sandbox.config import LONG_LIMIT_FACTOR, SandboxConfig
from bulksend.sandbox.ledger import read_ledger
from bulksend.sandbox.testing import SandboxProcess

CAMPAIGN = """
provider = "maxtraffic"
[message]
messages = [{{ title = "t" }}]
[recipients]
path = "{path}"
[send]
batch_size = 1
in_flight = 8
{limit}
"""

#: the limiter families, at 20-50 requests a second (github: 100 per 10 s, GitHub's shape)
PROFILES: dict[str, SandboxConfig] = {
    "leaky": SandboxConfig(profile="leaky", limit=30, window=1, reject_status=429),
    "leaky-503": SandboxConfig(profile="leaky", limit=30, window=1),
    "leaky-burst5": SandboxConfig(profile="leaky", limit=30, window=1, burst=5, reject_status=429),
    "limits-fixed": SandboxConfig(profile="limits-fixed", limit=40, window=1),
    "limits-moving": SandboxConfig(profile="limits-moving", limit=40, window=1),
    "github": SandboxConfig(profile="github", limit=100, window=10),
    # the same long policy, 150 per 5 s (30/s): under a 20/s burst policy it never binds...
    "ietf": SandboxConfig(profile="ietf", limit=20, window=1, long_limit=150, long_window=5),
    # ... under a 50/s one it does
    "ietf-long": SandboxConfig(profile="ietf", limit=50, window=1, long_limit=150, long_window=5),
    "bare429": SandboxConfig(profile="bare429", limit=50, window=1),
}
REFUSALS = frozenset({403, 429, 503})


def sandbox_args(c: SandboxConfig) -> list[str]:
    """The ``bulksend sandbox`` flags of a profile's config."""
    args = ["--profile", c.profile, "--limit", str(c.limit), "--window", f"{c.window:g}"]
    if c.burst:
        args += ["--burst", str(c.burst)]
    if c.reject_status is not None:
        args += ["--reject-status", str(c.reject_status)]
    if c.long_limit is not None:
        args += ["--long-limit", str(c.long_limit)]
    if c.long_window is not None:
        args += ["--long-window", f"{c.long_window:g}"]
    return args


def long_policy(c: SandboxConfig) -> tuple[int, float]:
    """The ietf profile's second policy, defaults filled in."""
    return c.long_limit or LONG_LIMIT_FACTOR * (c.limit or 0), c.effective_long_window


def true_policy(c: SandboxConfig) -> tuple[int, float]:
    """The quota that binds: ``limit`` per ``window`` (leaky: that rate, counted per window);
    for ietf the lower rate of the two policies."""
    assert c.limit is not None
    long = long_policy(c)
    if c.profile == "ietf" and long[0] / long[1] < c.limit / c.window:
        return long
    return c.limit, c.window


def describe(c: SandboxConfig) -> str:
    text = f"{c.profile} {c.limit}/{c.window:g}s"
    if c.burst:
        text += f" burst {c.burst}"
    if c.profile == "ietf":
        text += " + {}/{:g}s".format(*long_policy(c))
    return text + f", refusal {c.effective_reject_status}"


@dataclass
class Outcome:
    """One run; times are seconds since the sandbox started (its windows are aligned there)."""

    name: str
    limit: dict[str, int]  # allowed per window, per group
    window: float
    accepted: dict[str, list[float]]  # sorted, per group, from the ledger
    end: float  # when the run was cut
    throttled: int = 0
    requests: int = 0
    retries: int = 0
    refused_at: list[float] = field(default_factory=list)  # as the client saw them
    believed: str = ""
    note: str = ""
    profile: bool = False  # chart: per second against the rate (else per window)

    @property
    def first(self) -> float:
        return min(ts[0] for ts in self.accepted.values() if ts)

    def whole_windows(self) -> range:
        """The windows the run covered from start to end (the first and last are partial)."""
        return range(math.ceil(self.first / self.window), math.floor(self.end / self.window))

    def per_window(self, group: str, width: float) -> Counter[int]:
        return Counter(int(ts // width) for ts in self.accepted[group])

    def utilisation(self) -> float:
        whole = self.whole_windows()
        used = allowed = 0
        for group, limit in self.limit.items():
            counts = self.per_window(group, self.window)
            used += sum(counts[w] for w in whole)
            allowed += limit * len(whole)
        return used / allowed if allowed else 0.0

    def max_per_window(self) -> int:
        return max(max(self.per_window(g, self.window).values(), default=0) for g in self.limit)

    def time_to(self, share: float) -> float | None:
        """Seconds from the first request until every group's accepted count over the trailing
        second first reached ``share`` of its rate (None: never)."""
        out = 0.0
        for group, limit in self.limit.items():
            ts, need = self.accepted[group], share * limit / self.window
            hit = next(
                (t for i, t in enumerate(ts) if i + 1 - bisect.bisect(ts, t - 1) >= need), None
            )
            if hit is None:
                return None
            out = max(out, hit - self.first)
        return out

    @property
    def refusal_share(self) -> float:
        return self.throttled / self.requests if self.requests else 0.0


class Watch:
    """The transport, noting when each refusal came back (Unix time, the client's view)."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.refused: list[float] = []

    async def send(self, request: HttpRequest) -> HttpResponse:
        response = await self.inner.send(request)
        if response.status in REFUSALS:
            self.refused.append(time.time())
        return response


def accepted_times(ledger: Path, started: float, kinds: dict[str, str]) -> dict[str, list[float]]:
    """Accepted requests' times per group (from the ledger's request numbers)."""
    seen: dict[str, dict[int, float]] = {g: {} for g in kinds.values()}
    for entry in read_ledger(ledger):
        group = kinds.get(entry.get("kind", ""), "")
        if group:
            seen[group].setdefault(entry["request"], entry["ts"] - started)
    return {g: sorted(reqs.values()) for g, reqs in seen.items()}


async def campaign_run(
    name: str, sandbox: list[str], stated: str, seconds: float, tmp: Path, rate: float
) -> Outcome:
    """A whole ``send_campaign`` against a MaxTraffic sandbox with ``sandbox`` flags for
    ``seconds``; the outcome is filled but for ``limit``/``window``."""
    rows = tmp / f"{name}.csv"
    rows.write_text("id\n" + "".join(f"v{i}\n" for i in range(math.ceil(rate * seconds * 3))))
    campaign = tmp / f"{name}.toml"
    campaign.write_text(CAMPAIGN.format(path=rows, limit=stated))
    ledger, stats = tmp / f"{name}.ledger", tmp / f"{name}.stats.json"
    args = ["--api-key", KEY, *sandbox, "--ledger", str(ledger)]
    args += ["--ledger-format", "requests", "--stats", str(stats)]
    proc = SandboxProcess("maxtraffic", *args)
    url = proc.start()
    settings = load_settings(campaign, env={}, overrides={"base_url": url})
    engines: list[Engine] = []
    watches: list[Watch] = []

    def watch(transport: Transport) -> Watch:
        watches.append(Watch(transport))
        return watches[-1]

    task = asyncio.create_task(
        send_campaign(
            settings,
            {"api_key": KEY},
            progress_every=3600,
            on_start=engines.append,
            wrap_transport=watch,
        )
    )
    done, _ = await asyncio.wait({task}, timeout=seconds)
    cut = time.time()
    task.cancel()
    (result,) = await asyncio.gather(task, return_exceptions=True)
    proc.stop()
    if not engines and isinstance(result, Exception):
        raise result
    data = json.loads(stats.read_text())
    started = data["started_at"]
    out = Outcome(name, {}, 0.0, accepted_times(ledger, started, {"id": "api"}), cut - started)
    out.throttled, out.requests = data["rate_limited"], data["requests"]
    engine = engines[0] if engines else None
    if engine is not None:
        out.retries = engine.summary.retries
        if done:
            out.note = f"stopped after {out.end - out.first:.1f} s: {engine.stopped_by}"
        belief = engine.summary.limits.get("api")
        if belief:
            n, w = belief["limit"], belief["window"]
            out.believed = f"{n}/{w:g}s = {n / w:.1f}/s ({belief['evidence']})"
    out.refused_at = sorted(t - started for w in watches for t in w.refused)
    return out


async def engine_scenario(
    name: str, seconds: int, headers: bool, tmp: Path, window: float
) -> Outcome:
    limit = round(50 * window)
    stated = f'limit = "{limit if headers else 2 * limit}/{window:g}s"'
    args = ["--limit", str(limit), "--window", str(window)]
    if not headers:
        args += ["--no-ratelimit-headers", "--no-retry-after"]
    out = await campaign_run(name, args, stated, seconds, tmp, limit / window)
    out.limit, out.window = {"api": limit}, window
    return out


async def profile_run(name: str, config: SandboxConfig, seconds: int, tmp: Path) -> Outcome:
    limit, window = true_policy(config)
    seconds = max(seconds, math.ceil(4 * window))
    out = await campaign_run(name, sandbox_args(config), "", seconds, tmp, limit / window)
    out.limit, out.window, out.profile = {"api": limit}, window, True
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
    refused: list[float] = []

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
                if r.status == 429:
                    refused.append(time.time())
                sched.complete(permit, Feedback(kind, r.headers))

    async with aiohttp.ClientSession() as session:
        tasks = [asyncio.create_task(worker(session, g)) for g in limits for _ in range(8)]
        await asyncio.sleep(seconds)
        cut = time.time()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    proc.stop()
    data = json.loads(stats.read_text())
    started = data["started_at"]
    kinds = {"user": "user", "event": "event"}
    out = Outcome(
        "two-groups", limits, window, accepted_times(ledger, started, kinds), cut - started
    )
    out.throttled, out.requests = data["rate_limited"], data["requests"]
    out.refused_at = [t - started for t in refused]
    return out


def stairs(ax: Any, counts: Counter[int], width: float, **style: Any) -> None:
    """Counts per bin of ``width`` seconds as steps, empty bins between included."""
    xs = range(min(counts), max(counts) + 2)
    ax.stairs([counts[x] for x in xs[:-1]], [x * width for x in xs], baseline=None, **style)


def plot(outcomes: list[Outcome], path: Path) -> None:
    """One panel per run: accepted requests per window against the limit (profiles: per second
    against the true rate, with the refusals the client saw per second)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 1 if len(outcomes) <= 3 else 2
    rows = math.ceil(len(outcomes) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(9 * cols, 2.6 * rows), squeeze=False)
    for ax, o in zip(axes.flat, outcomes, strict=False):
        width = 1.0 if o.profile else o.window
        for group, limit in o.limit.items():
            stairs(ax, o.per_window(group, width), width, label=f"{group} accepted")
            line = "true rate" if o.profile else "limit"
            ax.axhline(
                limit * width / o.window, color="0.2", linestyle=":", label=f"{group} {line}"
            )
        if o.profile and o.refused_at:
            refused = Counter(int(t) for t in o.refused_at)
            stairs(ax, refused, 1.0, color="tab:red", linewidth=0.8, label="refused")
        title = f"{o.name}: utilisation {o.utilisation():.3f}, refusals {o.throttled}/{o.requests}"
        ax.set_title(title + (f", believed {o.believed}" if o.believed else ""), fontsize=9)
        ax.set_ylabel("per second" if o.profile else "accepted per window")
        ax.set_xlabel("seconds since the sandbox started")
        ax.set_ylim(0, ax.get_ylim()[1] * 1.15)
        ax.legend(loc="lower right", fontsize=7)
    for ax in axes.flat[len(outcomes) :]:
        ax.set_visible(False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


async def main_async(args: argparse.Namespace) -> list[Outcome]:
    with tempfile.TemporaryDirectory() as d, cli_logging():
        tmp = Path(d)
        if args.profiles:
            return [
                await profile_run(name, PROFILES[name], args.seconds, tmp) for name in args.profiles
            ]
        return [
            await engine_scenario("headers", args.seconds, True, tmp, args.window),
            await engine_scenario("no-headers", args.seconds, False, tmp, args.window),
            await two_groups(args.seconds, tmp, args.window),
        ]


def profile_names(text: str) -> list[str]:
    names = list(PROFILES) if text == "all" else [n for n in text.split(",") if n]
    unknown = [n for n in names if n not in PROFILES]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown profile {', '.join(unknown)} (choose from all, {', '.join(PROFILES)})"
        )
    return names


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument(
        "--window", type=float, default=1.0, help="scenarios: window seconds; limits scale (1)"
    )
    parser.add_argument(
        "--profiles",
        type=profile_names,
        help=f"run these limiter profiles instead of the scenarios: all, or some of "
        f"{','.join(PROFILES)} (comma-separated)",
    )
    parser.add_argument("--plot", type=Path, help="write a PNG chart here (needs matplotlib)")
    args = parser.parse_args(argv)
    outcomes = asyncio.run(main_async(args))
    what = "profiles" if args.profiles else f"scenarios, {args.window:g} s windows"
    print(f"machine: {machine()}; {args.seconds} s per run, {what}")
    for o in outcomes:
        reach = o.time_to(0.9)
        print(
            f"{o.name:>13}: utilisation {o.utilisation():.3f}  "
            f"refusals {o.throttled} ({o.refusal_share:.1%} of {o.requests} requests)  "
            f"retries {o.retries}  to 0.9 {'never' if reach is None else f'{reach:.1f} s'}  "
            f"max/window {o.max_per_window()}  (limits {o.limit} per {o.window:g} s)"
        )
        if o.believed:
            limiter = describe(PROFILES[o.name]) + "; " if o.profile else ""
            print(f"{'':>15}{limiter}believed {o.believed}")
        if o.note:
            print(f"{'':>15}{o.note}")
    if args.plot:
        plot(outcomes, args.plot)
        print(f"chart: {args.plot}")


if __name__ == "__main__":
    main()
