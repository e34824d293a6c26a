"""One send of a campaign at a time in Redis (``--state``, ``--workers``): the campaign's lease.

Two sends of one campaign at once -- two CI jobs re-run together, two planners -- would both
send every row. ``RedisJournal.open`` therefore takes the campaign's lease first::

    bulksend:state:{maxtraffic:welcome}:lease   STRING  JSON {token, host, pid, since}, PX 15 s

``SET NX PX`` takes it; the send renews it every ``RENEW`` seconds (3) while it runs, checked and
renewed in one step (``RENEW``: only while the value is still its own), and deletes it at the end
(``RELEASE``, the same check). So a send that ends lets the next one go at once, and one killed
with kill -9 lets go within ``TTL`` seconds (15): a CI re-run after a crash waits at most that
long, then resumes, without a manual step.

A send that finds the lease held says so in one line and watches it (``verdict``, pure): when
the holder renews it (its expiry moves later) or another send takes it, the holder is alive and
this send is refused, one line, exit 4 -- it would send the same rows; when the lease expires
(the holder died), this send takes it over.

A send that loses its lease -- it stalled longer than ``TTL`` and another took over, or Redis
restarted without it -- must not write anything more: another send may be resending the same
batches. Every write of the journal's records (and a planner's queueing of a batch) is checked and
made in one Lua step against the state's ``owner`` key, which holds the lease's value of the send
that opened the state last (set before it reads the records, so a stalled send's write lands
before that read or not at all). The renewal that fails, or a write refused, stops the send
(``on_lost``), with one line; the next run of the same command resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio as aioredis
import redis.exceptions as rex

from bulksend.distributed.gate import DOWN
from bulksend.errors import UnavailableError

__all__ = ["RENEW", "TTL", "Lease", "Look", "Verdict", "verdict"]

#: seconds a lease lives without renewal: the longest a re-run waits after a crash
TTL = 15.0
#: seconds between renewals (a send stalled longer than TTL - RENEW may lose its lease)
RENEW = 3.0
#: what a renewal can fail with: Redis out of reach, or a refusal
_FAILED: tuple[type[BaseException], ...] = (*DOWN, rex.RedisError)
#: seconds between looks at a lease held by another send
POLL = 0.25
#: an expiry that moved later than this (s) since the first look: the holder renewed it
MOVED = 1.0

#: KEYS: lease. ARGV: value, ttl (ms). 1 when renewed; else the value there (nil: none)
RENEW_SCRIPT = """
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return v
"""

#: KEYS: lease. ARGV: value. Deletes the lease only if it is still this value's.
RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

#: KEYS: owner, then hashes. ARGV: value, then for each hash: n, n x (field, value).
#: 1 when written; 0 (nothing written) when the owner is not this value.
HSET_HELD = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local i = 2
for k = 2, #KEYS do
  local n = tonumber(ARGV[i])
  for j = 1, n do
    redis.call('HSET', KEYS[k], ARGV[i + 2 * j - 1], ARGV[i + 2 * j])
  end
  i = i + 1 + 2 * n
end
return 1
"""


class Verdict(enum.Enum):
    TAKE = "take"  # no holder any more: try to take it
    WAIT = "wait"  # the holder has not shown it is alive yet
    REFUSE = "refuse"  # the holder renewed it, or another send took it: alive


@dataclass(frozen=True, slots=True)
class Look:
    """One look at a lease: its value (None: nobody holds it) and when it ends, by the
    looker's clock (``now`` + its remaining time to live)."""

    value: bytes | None
    ends: float


def verdict(first: Look, now: Look, moved: float = MOVED) -> Verdict:
    """What a send waiting for a held lease does after ``now``, having seen ``first`` first
    (an expiry later by more than ``moved`` seconds: renewed)."""
    if now.value is None:
        return Verdict.TAKE
    if now.value != first.value or now.ends > first.ends + moved:
        return Verdict.REFUSE
    return Verdict.WAIT


def holder(value: bytes | None) -> str:
    """``host H, pid P, since T`` of a lease's value, for people."""
    try:
        got = orjson.loads(value or b"{}")
        since = time.strftime("%H:%M:%S UTC", time.gmtime(float(got["since"])))
        return f"host {got['host']}, pid {got['pid']}, since {since}"
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return "a send of another version"


@dataclass(eq=False)
class Lease:
    """The lease of one campaign (``key``) in the Redis ``client`` talks to; ``owner`` is the
    state's key that fences its writes. ``take`` it, then ``keep`` it (renewal) until
    ``release``."""

    client: aioredis.Redis
    key: str
    owner: str
    where: str  # "state redis://host:6379/0", for the lines said
    name: str  # the campaign's name
    ttl: float = TTL
    renew: float = RENEW
    poll: float = POLL
    moved: float = MOVED
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep
    value: bytes = field(default=b"")
    lost: str = ""  # why the lease was lost ("" while held)
    _task: asyncio.Task[None] | None = None
    _on_lost: list[Callable[[UnavailableError], object]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.value:
            self.value = orjson.dumps(
                {
                    "token": secrets.token_hex(8),
                    "host": socket.gethostname(),
                    "pid": os.getpid(),
                    "since": time.time(),
                }
            )

    @property
    def ms(self) -> int:
        return max(1, round(self.ttl * 1000))

    async def _look(self) -> Look:
        pipe = self.client.pipeline(transaction=False)
        pipe.get(self.key)
        pipe.pttl(self.key)
        value, pttl = await pipe.execute()
        return Look(value, self.clock() + max(0, int(pttl)) / 1000)

    async def take(self, say: Callable[[str], None] | None) -> None:
        """Take the lease, waiting while its holder may have died (``verdict``); raises
        ``UnavailableError`` (one line) when another send holds it and is alive."""
        if await self.client.set(self.key, self.value, nx=True, px=self.ms):
            return
        first = now = await self._look()
        told = False
        while True:
            match verdict(first, now, self.moved):
                case Verdict.TAKE:
                    if await self.client.set(self.key, self.value, nx=True, px=self.ms):
                        if told and say is not None:
                            say(f"{self.where}: the other send's lease ended; this send goes on")
                        return
                    first = now = await self._look()  # (a third send was quicker: watch it)
                case Verdict.REFUSE:
                    raise UnavailableError(self.refusal(now.value))
                case Verdict.WAIT:
                    if not told and say is not None:
                        say(self.waiting(now))
                    told = True
                    await self.sleep(self.poll)
                    now = await self._look()

    def waiting(self, look: Look) -> str:
        wait = max(0.0, look.ends - self.clock())
        return (
            f"{self.where}: campaign {self.name!r} is held by another send "
            f"({holder(look.value)}); waiting up to {wait:.0f} s to see whether it still runs "
            f"(a send that died lets go within {self.ttl:g} s)"
        )

    def refusal(self, value: bytes | None) -> str:
        return (
            f"{self.where}: campaign {self.name!r} is being sent by another send "
            f"({holder(value)}), which keeps renewing its lease: two sends at once would send "
            "the same rows twice; run this again once that send has ended"
        )

    def keep(self, on_lost: Callable[[UnavailableError], object] | None = None) -> None:
        """Renew the lease every ``renew`` seconds until ``release``; when it is lost, every
        ``on_lost`` callback is told (also those added later)."""
        if on_lost is not None:
            self.on_lost(on_lost)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._renew())

    def on_lost(self, callback: Callable[[UnavailableError], object]) -> None:
        self._on_lost.append(callback)
        if self.lost:
            callback(UnavailableError(self.lost))

    async def _renew(self) -> None:
        renewed = self.clock()
        while not self.lost:
            await self.sleep(self.renew)
            try:
                got = await self.client.eval(RENEW_SCRIPT, 1, self.key, self.value, self.ms)
            except _FAILED:
                if self.clock() - renewed >= self.ttl:
                    self.lose(f"Redis did not answer for {self.ttl:g} s")
                continue
            if got == 1:
                renewed = self.clock()
            elif got is None:
                self.lose(
                    "Redis no longer holds it: it restarted without its data, or this process "
                    f"stalled longer than {self.ttl:g} s"
                )
            else:
                self.lose(
                    f"another send took it over ({holder(got)}): this process did not renew "
                    f"it for {self.ttl:g} s"
                )

    def lose(self, why: str) -> None:
        """The lease is lost: say why (once) and tell the callbacks."""
        if self.lost:
            return
        self.lost = (
            f"{self.where}: this send lost the lease of campaign {self.name!r} ({why}); it "
            "stopped and records nothing more: run the same command again to resume"
        )
        error = UnavailableError(self.lost)
        for callback in self._on_lost:
            callback(error)

    def refused(self) -> None:
        """A write checked against ``owner`` was refused: another send opened the state."""
        self.lose(
            "another send opened the campaign's state: this process did not renew its lease "
            f"for {self.ttl:g} s, or Redis lost it"
        )

    async def release(self) -> None:
        """Stop renewing and let go (only if the lease is still this send's)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if not self.lost:
            with contextlib.suppress(*DOWN):
                await self.client.eval(RELEASE_SCRIPT, 1, self.key, self.value)


def held_args(owner: str, value: bytes, writes: dict[str, dict[str, bytes | str]]) -> list[Any]:
    """``HSET_HELD``'s numkeys, KEYS and ARGV for ``writes`` (hash key -> field -> value)."""
    keys = [owner, *writes]
    args: list[Any] = [value]
    for fields in writes.values():
        args.append(len(fields))
        for name, v in fields.items():
            args += [name, v]
    return [len(keys), *keys, *args]
