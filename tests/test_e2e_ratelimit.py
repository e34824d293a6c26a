"""The scheduler against the real sandbox on loopback, in real time (issue 3)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from bulksend.campaign import send_campaign
from bulksend.config import load_settings
from bulksend.sandbox import SandboxConfig, running
from tests.conftest import KEY, write_campaign, write_recipients

# 100 per 2 s: the pacing margin (1 % of a window this short, for latency jitter) costs 1 %
LIMIT, WINDOW, SECONDS = 100, 2.0, 20


@pytest.mark.parametrize("headers", [True, False], ids=["honest-headers", "no-headers"])
async def test_short_window_for_20_seconds_uses_the_quota_and_never_exceeds_it(
    tmp_path: Path, headers: bool
) -> None:
    n = int(LIMIT / WINDOW * SECONDS * 2)  # more than 20 s worth: the test stops at 20 s
    rows = [(f"v{i:06d}", f"u{i:06d}") for i in range(n)]
    # the client is told the true limit when headers are on; without headers it starts from
    # the default and must find the limit by itself (AIMD-like adaptation)
    extra = f'limit = "{LIMIT}/{WINDOW:g}s"' if headers else f'limit = "{LIMIT * 2}/{WINDOW:g}s"'
    campaign = write_campaign(
        tmp_path, write_recipients(tmp_path / "r.csv", rows), batch_size=1, extra=extra
    )
    config = SandboxConfig(
        api_key=KEY,
        ledger=tmp_path / "ledger.jsonl",
        limit=LIMIT,
        window=WINDOW,
        ratelimit_headers=headers,
        retry_after=headers,  # without headers: no Retry-After either, only 429s
        ledger_format="requests",
    )
    async with running(config) as sb:
        settings = load_settings(campaign, env={}, overrides={"base_url": sb.base_url})
        import asyncio

        task = asyncio.create_task(send_campaign(settings, {"api_key": KEY}, progress_every=60))
        await asyncio.sleep(SECONDS)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        origin = sb.core.started_at
        accepted = {e["request"]: e["ts"] for e in sb.ledger_entries()}
        stats = sb.stats
    per_window = Counter(int((ts - origin) // WINDOW) for ts in accepted.values())
    busy = sorted(per_window)
    full = [per_window[w] for w in busy[1:-1]]  # whole windows only
    assert max(per_window.values()) <= LIMIT  # the sandbox also enforces it: never exceeded
    utilisation = sum(full) / (LIMIT * len(full))
    if headers:
        assert utilisation >= 0.95, per_window
        assert stats.rate_limited <= 1
    else:
        assert utilisation >= 0.85, per_window
        assert stats.rate_limited <= 0.05 * stats.requests
