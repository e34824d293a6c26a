"""What the scheduler costs: microseconds per acquire with 10,000 waiting tasks, and event-loop lag.

    python -m benchmarks.limiter_cost [--tasks 10000] [--rounds 5] [--uvloop]

Three runs on the real event loop (no network):

* ``slots``: the in-flight cap binds (16 slots, a quota far above what the loop can do); every
  task acquires, yields once, completes with rate headers, ``--rounds`` times. The cost per acquire
  includes ``complete()`` with header parsing and the task switches.
* ``paced``: the quota binds (10,000 requests/s); the scheduler's timer admits waiters. Its wall
  time is set by the quota, so the cost reported is CPU time per acquire (as for every run).
* ``baseline``: the same as ``slots`` with a bare ``asyncio.Semaphore`` (the floor asyncio sets).

A monitor task sleeps 1 ms in a loop meanwhile; its overshoot is the event-loop lag (p50/p99/max).
Targets: < 50 µs per acquire, lag p99 < 10 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bulksend.providers.base import Limit
from bulksend.ratelimit.scheduler import Feedback, FeedbackKind, GroupPolicy, Scheduler

HEADERS = {"X-RateLimit-Limit": "1000000", "X-RateLimit-Remaining": "999999"}


@dataclass(frozen=True, slots=True)
class Result:
    name: str
    acquires: int
    seconds: float
    cpu_seconds: float
    lag_ms: list[float]

    @property
    def us_per_acquire(self) -> float:
        """CPU time per acquire (wall time would measure the quota when the quota binds)."""
        return self.cpu_seconds / self.acquires * 1e6

    def line(self) -> str:
        lag = sorted(self.lag_ms) or [0.0]
        p99 = lag[min(len(lag) - 1, int(0.99 * len(lag)))]
        return (
            f"{self.name:<9} {self.acquires:>7,} acquires in {self.seconds:6.3f} s "
            f"({self.cpu_seconds:6.3f} s CPU) = {self.us_per_acquire:5.1f} µs CPU/acquire | "
            f"loop lag p50 {statistics.median(lag):5.2f} ms, p99 {p99:5.2f} ms, "
            f"max {lag[-1]:5.2f} ms"
        )


async def _lag_monitor(samples: list[float], stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        start = loop.time()
        await asyncio.sleep(0.001)
        samples.append(max(0.0, (loop.time() - start - 0.001) * 1000.0))


async def _measure(
    name: str, tasks: int, rounds: int, body: Callable[[], Awaitable[None]]
) -> Result:
    lag: list[float] = []
    stop = asyncio.Event()
    monitor = asyncio.create_task(_lag_monitor(lag, stop))
    await asyncio.sleep(0.01)

    async def worker() -> None:
        for _ in range(rounds):
            await body()

    start, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(tasks)))
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    stop.set()
    await monitor
    return Result(name, tasks * rounds, seconds, cpu, lag)


async def run_slots(tasks: int, rounds: int) -> Result:
    sched = Scheduler({"g": GroupPolicy(Limit(1_000_000_000, 1.0), in_flight=16)})
    ok = Feedback(FeedbackKind.OK, HEADERS)

    async def body() -> None:
        permit = await sched.acquire("g")
        await asyncio.sleep(0)
        sched.complete(permit, ok)

    return await _measure("slots", tasks, rounds, body)


async def run_paced(tasks: int, rounds: int) -> Result:
    rate = 10_000
    sched = Scheduler({"g": GroupPolicy(Limit(rate, 1.0), in_flight=tasks)}, margin=0.0)
    ok = Feedback(FeedbackKind.OK, {"X-RateLimit-Limit": str(rate)})

    async def body() -> None:
        permit = await sched.acquire("g")
        sched.complete(permit, ok)

    result = await _measure("paced", tasks, rounds, body)
    achieved = result.acquires / result.seconds
    print(f"          paced at {achieved:,.0f} acquires/s against a quota of {rate:,}/s")
    return result


async def run_baseline(tasks: int, rounds: int) -> Result:
    sem = asyncio.Semaphore(16)

    async def body() -> None:
        async with sem:
            await asyncio.sleep(0)

    return await _measure("baseline", tasks, rounds, body)


async def run_all(tasks: int, rounds: int) -> list[Result]:
    results = []
    for bench in (run_baseline, run_slots, run_paced):
        results.append(await bench(tasks, rounds))
        print(results[-1].line(), flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000, help="waiting tasks (10,000)")
    parser.add_argument("--rounds", type=int, default=5, help="acquires per task (5)")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    args = parser.parse_args(argv)
    loop_name = "asyncio"
    if args.uvloop:
        import uvloop

        loop_name = "uvloop"
        results = uvloop.run(run_all(args.tasks, args.rounds))
    else:
        results = asyncio.run(run_all(args.tasks, args.rounds))
    worst = max(r.us_per_acquire for r in results if r.name != "baseline")
    lag = sorted(x for r in results if r.name != "baseline" for x in r.lag_ms) or [0.0]
    p99 = lag[min(len(lag) - 1, int(0.99 * len(lag)))]
    verdict = "OK" if worst < 50 and p99 < 10 else "OVER TARGET"
    print(
        f"{loop_name}, {args.tasks:,} tasks: worst {worst:.1f} µs/acquire (target < 50), "
        f"loop lag p99 {p99:.2f} ms (target < 10) -> {verdict}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
