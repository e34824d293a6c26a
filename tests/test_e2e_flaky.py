"""Random 5xx from an endpoint that works must not starve the send.

A fifth of the requests is answered 500 or 503 without Retry-After, at random. Batches waiting to
retry are parked (they do not hold a worker), the retry budget keeps up with retries worth a
quarter of the successes, and the circuit breaker stays closed: the quota goes to first attempts
and retries alike. Before, the budget fell to its 1/s floor, waiting retries held every worker,
and 580 requests went out in 60 s against a quota of 12,000.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections import Counter
from pathlib import Path

import orjson

from bulksend.sandbox import FaultConfig, SandboxConfig, running
from tests.conftest import KEY, ROOT, write_campaign, write_recipients

N = 20_000  # batches of 10: 2,000 requests, about 2,500 with the retries (12-13 s at 200/s)
LIMIT = 200  # requests per second
FED = 10.0  # seconds measured from the first accepted request: first attempts are still waiting


async def bulksend(*args: str) -> tuple[int, str]:
    """``python -m bulksend ARGS`` in a child process (the sandbox runs in this event loop)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bulksend",
        *args,
        "-q",
        "--progress",
        "never",
        cwd=ROOT,
        env={**os.environ, "MAXTRAFFIC_API_KEY": KEY},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), timeout=240)
    assert proc.returncode is not None
    return proc.returncode, err.decode()


async def test_random_5xx_of_a_working_endpoint_do_not_starve_the_send(tmp_path: Path) -> None:
    rows = [(f"v{i:05d}", f"u{i:05d}") for i in range(N)]
    campaign = write_campaign(tmp_path, write_recipients(tmp_path / "r.csv", rows), batch_size=10)
    journal, summary = tmp_path / "send.journal", tmp_path / "send.json"
    faults = FaultConfig(fail_rate=0.2, retry_after_503=False)  # 500 or 503, no Retry-After
    config = SandboxConfig(
        api_key=KEY, limit=LIMIT, window=1.0, faults=faults, seed=7, ledger=tmp_path / "l.jsonl"
    )
    async with running(config) as sb:
        flags = ("--base-url", sb.base_url, "--limit", f"{LIMIT}/1s", "--journal", str(journal))
        status, err = await bulksend("send", str(campaign), *flags, "--summary-json", str(summary))
        assert status in (0, 1), err  # 1: a batch failed 6 times in a row: `retry` sends it
        accepted, requests = sb.stats.accepted, sb.stats.requests
        at = sorted({e["request"]: e["ts"] for e in sb.ledger_entries()}.values())
        if status == 1:
            status, err = await bulksend("retry", str(journal), "--base-url", sb.base_url)
            assert status == 0, err
        entries = sb.ledger_entries()
    sent = orjson.loads(summary.read_bytes())
    fed = sum(1 for t in at if t < at[0] + FED) / (LIMIT * FED)
    used = requests / (LIMIT * sent["elapsed"])
    whole = accepted / (LIMIT * sent["elapsed"])
    figures = (
        f"fed {fed:.3f}, used {used:.3f}, accepted {whole:.3f} "
        f"({accepted}/{requests} in {sent['elapsed']:.1f} s)"
    )
    print(f"share of the quota: {figures}")
    # while first attempts wait, at least 3/4 of the quota goes to requests that succeed (at
    # most 4/5 can: the sandbox counts the failed ones against the window too)
    assert fed >= 0.75, figures
    # over the whole send, at least 3/4 of the quota is used, the backoff of the last batches
    # to fail included (full jitter from 0.1 s, doubling a batch's every attempt)
    assert used >= 0.75, figures
    assert sent["retries"] >= 300  # (about 500: a quarter of the 2,000 batches)
    assert not any("failed repeatedly" in w for w in sent["warnings"]), sent["warnings"]
    ids = Counter(e["value"] for e in entries if e["kind"] == "id")
    assert set(ids) == {v for v, _ in rows}  # every recipient delivered, after one retry at most
    assert max(ids.values()) == 1  # a 500 or 503 accepted nothing: nothing went twice
