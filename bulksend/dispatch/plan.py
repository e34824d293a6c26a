"""Everything but the network: read, validate, deduplicate, batch and encode a campaign.

Used by ``bulksend validate`` (counts and the estimated duration) and ``send --dry-run`` (plus
the exact request bodies that would go out).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bulksend.dedup.ahead import DedupAhead
from bulksend.dispatch.engine import as_chunks
from bulksend.models import Batch, HttpRequest, Rejected, Suppressed
from bulksend.providers.base import Limit, Provider, add_all
from bulksend.ratelimit.bucket import Bucket
from bulksend.ratelimit.scheduler import GroupPolicy

#: rejected rows a plan keeps as examples
EXAMPLES = 10


@dataclass(slots=True)
class Plan:
    rows: int = 0
    valid: int = 0
    duplicates: int = 0
    #: rows a suppression list holds, and how many each list (by its name) suppressed
    suppressed: int = 0
    suppressed_by: Counter[str] = field(default_factory=Counter)
    #: the suppression lists read: (name, rows, distinct keys it added)
    lists: list[tuple[str, int, int]] = field(default_factory=list)
    invalid: Counter[str] = field(default_factory=Counter)
    batches: int = 0
    requests: Counter[str] = field(default_factory=Counter)  # per endpoint group
    recipients_in_batches: int = 0
    #: the first rejected rows, as (line, reason), to show where to look
    examples: list[tuple[int, str]] = field(default_factory=list)

    def estimate_seconds(self, policies: Mapping[str, GroupPolicy]) -> float:
        """About how long the send takes at the known limits (groups run in parallel).

        The scheduler spreads a group's quota evenly over its window: one request every
        ``(window + margin) / limit`` seconds, or slower under the user's ceiling
        (``Bucket.interval``, the scheduler's own pacing), so ``n`` requests take ``n - 1`` such
        steps. Left out: the requests' own round trips, which overlap with the pacing, a limit
        the provider's headers raise or lower, and quota an earlier send used this window.
        """
        longest = 0.0
        for group, n in self.requests.items():
            policy = policies.get(group)
            if policy is None or n < 2:
                continue
            stated = policy.stated
            bucket = Bucket(
                configured=policy.limit.requests,
                window=policy.limit.window,
                stated=None if stated is None else (stated.requests, stated.window),
                ceiling=policy.ceiling,
                adaptive_only=not policy.headers_expected,
            )
            longest = max(longest, (n - 1) * bucket.interval(0.0))
        return longest

    def as_dict(
        self, limits: Mapping[str, Limit], policies: Mapping[str, GroupPolicy]
    ) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "valid": self.valid,
            "duplicates": self.duplicates,
            "suppressed": self.suppressed,
            "suppressed_by_list": dict(self.suppressed_by.most_common()),
            "suppression_lists": [
                {"path": name, "rows": rows, "keys": keys} for name, rows, keys in self.lists
            ],
            "invalid": sum(self.invalid.values()),
            "invalid_by_reason": dict(self.invalid.most_common()),
            "invalid_examples": [{"line": n, "reason": r} for n, r in self.examples],
            "batches": self.batches,
            "requests_per_endpoint": dict(self.requests),
            "limits": {g: f"{lim.requests}/{lim.window:g}s" for g, lim in limits.items()},
            "estimated_seconds": round(self.estimate_seconds(policies), 1),
        }


def plan(
    items: Iterable[Any],
    provider: Provider,
    dedup: Any,
    batch_size: int,
    *,
    on_request: Callable[[Batch, HttpRequest], None] | None = None,
) -> Plan:
    """Walk the whole campaign without sending; ``on_request`` sees every request built."""
    p = Plan()
    batcher = provider.batcher(batch_size)

    def take(batch: Batch) -> None:
        p.batches += 1
        p.requests[batch.group] += 1
        p.recipients_in_batches += len(batch)
        if on_request is not None:
            on_request(batch, provider.encode(batch))

    with DedupAhead(dedup) as ahead:
        for (recipients, rejected), (kept, duplicates) in ahead.chunks(as_chunks(items)):
            p.rows += len(recipients) + len(rejected)
            rejected = _count_suppressed(p, rejected)
            for item in rejected:
                p.invalid[item.reason] += 1
            room = EXAMPLES - len(p.examples)
            if room > 0:
                p.examples += [(item.line, item.reason) for item in rejected[:room]]
            p.duplicates += len(duplicates)
            p.valid += len(kept)
            for batch in add_all(batcher, kept):
                take(batch)
    for batch in batcher.flush():
        take(batch)
    return p


def _count_suppressed(p: Plan, rejected: list[Rejected]) -> list[Rejected]:
    """Count the suppressed rows among ``rejected``; the others (the invalid) are returned."""
    suppressed = [item for item in rejected if type(item) is Suppressed]
    if not suppressed:
        return rejected
    p.suppressed += len(suppressed)
    p.suppressed_by.update(item.source for item in suppressed)
    return [item for item in rejected if type(item) is not Suppressed]
