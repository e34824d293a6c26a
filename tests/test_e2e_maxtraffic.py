"""End to end: the library and the CLI against the MaxTraffic sandbox on loopback."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import orjson
import pytest

from bulksend.campaign import send_campaign
from bulksend.config import load_settings
from bulksend.sandbox import FaultConfig, SandboxConfig, running
from tests.conftest import KEY, write_campaign, write_recipients


def dataset(n_unique: int, dup_rate: float, seed: int = 1) -> list[tuple[str, str]]:
    """Rows with duplicates across ids and uids: whole-row copies and rows sharing one key."""
    rnd = random.Random(seed)
    rows = [(f"v{i:06d}", f"u{i:06d}") for i in range(n_unique)]
    out = list(rows)
    for _ in range(int(n_unique * dup_rate)):
        a, b = rows[rnd.randrange(n_unique)], rows[rnd.randrange(n_unique)]
        out.append(rnd.choice([a, (a[0], b[1])]))  # an exact copy, or a mix of two seen rows
    rnd.shuffle(out)
    return out


async def test_10k_with_20_percent_duplicates_lands_exactly_once(tmp_path: Path) -> None:
    rows = dataset(10_000, 0.25)
    recipients = write_recipients(tmp_path / "r.csv", rows)
    campaign = write_campaign(tmp_path, recipients, batch_size=500)
    ledger = tmp_path / "ledger.jsonl"
    async with running(SandboxConfig(api_key=KEY, ledger=ledger, limit=100_000)) as sb:
        settings = load_settings(
            campaign, env={}, overrides={"base_url": sb.base_url, "report": str(tmp_path / "o.csv")}
        )
        result = await send_campaign(settings, {"api_key": KEY})
        summary, stopped = result.summary, result.stopped
    assert stopped is None
    entries = sb.ledger_entries()
    ids = Counter(e["value"] for e in entries if e["kind"] == "id")
    uids = Counter(e["value"] for e in entries if e["kind"] == "uid")
    assert set(ids) == {f"v{i:06d}" for i in range(10_000)}
    assert set(uids) == {f"u{i:06d}" for i in range(10_000)}
    assert max(ids.values()) == max(uids.values()) == 1
    assert {e["campaign"] for e in entries} == {"E2E"}
    assert summary.read == len(rows) == summary.accounted
    assert summary.delivered + summary.duplicates == len(rows)
    # a row is a duplicate when both its id and its uid were seen earlier in the file
    seen: set[str] = set()
    expected_dups = 0
    for vid, uid in rows:
        expected_dups += vid in seen and uid in seen
        seen |= {vid, uid}
    assert summary.duplicates == expected_dups
    assert summary.complete
    report = (tmp_path / "o.csv").read_text().splitlines()
    assert len(report) == len(rows) + 1
    statuses = Counter(line.split(",")[3] for line in report[1:])
    assert statuses == {"delivered": len(rows) - expected_dups, "duplicate": expected_dups}


async def test_a_small_window_limit_is_respected_and_the_send_completes(tmp_path: Path) -> None:
    limit, window = 10, 0.5
    rows = [(f"v{i}", f"u{i}") for i in range(1_000)]  # 50 requests of 20 -> about 2.5 s
    recipients = write_recipients(tmp_path / "r.csv", rows)
    campaign = write_campaign(
        tmp_path, recipients, batch_size=20, extra=f'limit = "{limit}/{window}s"'
    )
    config = SandboxConfig(api_key=KEY, ledger=tmp_path / "l.jsonl", limit=limit, window=window)
    async with running(config) as sb:
        settings = load_settings(campaign, env={}, overrides={"base_url": sb.base_url})
        summary = (await send_campaign(settings, {"api_key": KEY})).summary
        origin = sb.core.started_at
    assert summary.delivered == 1_000
    assert summary.complete
    assert sb.stats.rate_limited == 0
    per_request = {e["request"]: e["ts"] for e in sb.ledger_entries()}
    per_window = Counter(int((ts - origin) // window) for ts in per_request.values())
    assert len(per_request) == 50
    assert max(per_window.values()) <= limit


async def test_401_stops_after_the_first_request(tmp_path: Path) -> None:
    recipients = write_recipients(tmp_path / "r.csv", [(f"v{i}", f"u{i}") for i in range(500)])
    campaign = write_campaign(tmp_path, recipients, batch_size=10)
    async with running(SandboxConfig(api_key=KEY)) as sb:
        settings = load_settings(campaign, env={}, overrides={"base_url": sb.base_url})
        result = await send_campaign(settings, {"api_key": "wrong-key"})
        summary, stopped = result.summary, result.stopped
    assert sb.stats.requests == 1
    assert sb.stats.unauthorized == 1
    assert stopped is not None
    assert "401" in str(stopped)
    assert "wrong-key" not in str(stopped)
    assert summary.delivered == 0
    assert summary.read == summary.accounted


async def test_422_on_an_oversized_batch_is_split_until_it_fits(tmp_path: Path) -> None:
    recipients = write_recipients(tmp_path / "r.csv", [(f"v{i}", f"u{i}") for i in range(30)])
    campaign = write_campaign(tmp_path, recipients, batch_size=30)
    report = tmp_path / "o.jsonl"
    async with running(SandboxConfig(api_key=KEY, max_batch=8)) as sb:
        settings = load_settings(
            campaign, env={}, overrides={"base_url": sb.base_url, "report": str(report)}
        )
        summary = (await send_campaign(settings, {"api_key": KEY})).summary
    assert summary.delivered == 30
    assert sb.stats.by_status[422] == 3  # 30 -> 15 + 15 -> 7 + 8 + 7 + 8
    assert sb.stats.accepted == 4
    lines = [orjson.loads(x) for x in report.read_bytes().splitlines()]
    assert {x["status"] for x in lines} == {"delivered"}


async def test_5xx_and_resets_are_retried_until_delivered(tmp_path: Path) -> None:
    rows = [(f"v{i}", f"u{i}") for i in range(1_000)]
    recipients = write_recipients(tmp_path / "r.csv", rows)
    extra = 'max_attempts = 10\nlimit = "1000/1s"'
    campaign = write_campaign(tmp_path, recipients, batch_size=20, extra=extra)
    faults = FaultConfig(fail_rate=0.2)
    config = SandboxConfig(
        api_key=KEY, ledger=tmp_path / "l.jsonl", faults=faults, seed=3, limit=1000, window=1
    )
    async with running(config) as sb:
        settings = load_settings(campaign, env={}, overrides={"base_url": sb.base_url})
        summary = (await send_campaign(settings, {"api_key": KEY})).summary
    assert summary.delivered == 1_000
    assert summary.retries > 0
    assert sb.stats.faults
    ids = Counter(e["value"] for e in sb.ledger_entries() if e["kind"] == "id")
    assert len(ids) == 1_000
    assert max(ids.values()) == 1


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
async def test_jsonl_and_csv_recipients(tmp_path: Path, fmt: str) -> None:
    rows = [(f"v{i}", f"u{i}") for i in range(50)]
    if fmt == "csv":
        recipients = write_recipients(tmp_path / "r.csv", rows)
    else:
        recipients = tmp_path / "r.jsonl"
        recipients.write_bytes(
            b"".join(orjson.dumps({"vid": a, "uid": b}) + b"\n" for a, b in rows)
        )
    campaign = write_campaign(tmp_path, recipients)
    async with running(SandboxConfig(api_key=KEY)) as sb:
        settings = load_settings(campaign, env={}, overrides={"base_url": sb.base_url})
        summary = (await send_campaign(settings, {"api_key": KEY})).summary
    assert summary.delivered == 50


async def test_audience_check_drops_unknown_visitors_and_non_subscribers(tmp_path: Path) -> None:
    rows = [(f"v{i}", f"u{i}") for i in range(50)]
    rows += [("v-unknown-1", "ux1"), ("v-unsubscribed-2", "ux2")]
    extra = 'limit = "100000/1min"'
    campaign = write_campaign(tmp_path, write_recipients(tmp_path / "r.csv", rows), extra=extra)
    report = tmp_path / "o.jsonl"
    config = SandboxConfig(api_key=KEY, ledger=tmp_path / "l.jsonl", limit=100_000)
    async with running(config) as sb:
        settings = load_settings(
            campaign, env={}, overrides={"base_url": sb.base_url, "report": str(report)}
        )
        summary = (await send_campaign(settings, {"api_key": KEY}, audience_check=True)).summary
    assert (summary.delivered, summary.invalid) == (50, 2)
    reasons = {
        x["id"]: x["reason"]
        for x in map(orjson.loads, report.read_bytes().splitlines())
        if x["status"] == "invalid"
    }
    assert set(reasons) == {"v-unknown-1", "v-unsubscribed-2"}
    assert all(r.startswith("audience check:") for r in reasons.values())
    sent = {e["value"] for e in sb.ledger_entries() if e["kind"] == "id"}
    assert sent == {f"v{i}" for i in range(50)}


async def test_422_bisection_isolates_exactly_the_bad_recipients(tmp_path: Path) -> None:
    """The sandbox refuses a batch holding an id it does not accept; only those rows fail."""
    rows = [(f"v{i:04d}", f"u{i:04d}") for i in range(400)]
    bad = {17, 18, 250, 399}
    rows = [(f"bad-{v}" if i in bad else v, u) for i, (v, u) in enumerate(rows)]
    campaign = write_campaign(
        tmp_path,
        write_recipients(tmp_path / "r.csv", rows),
        batch_size=100,
        extra='limit = "100000/1min"',
    )
    report = tmp_path / "o.jsonl"
    config = SandboxConfig(
        api_key=KEY, ledger=tmp_path / "l.jsonl", reject_marker="bad-", limit=100_000
    )
    async with running(config) as sb:
        settings = load_settings(
            campaign, env={}, overrides={"base_url": sb.base_url, "report": str(report)}
        )
        summary = (await send_campaign(settings, {"api_key": KEY})).summary
    lines = [orjson.loads(x) for x in report.read_bytes().splitlines()]
    invalid = {x["id"]: x["reason"] for x in lines if x["status"] == "invalid"}
    assert set(invalid) == {f"bad-v{i:04d}" for i in bad}
    assert all("not a known visitor" in r for r in invalid.values())
    assert summary.delivered == 396
    sent = Counter(e["value"] for e in sb.ledger_entries() if e["kind"] == "id")
    assert len(sent) == 396
    assert max(sent.values()) == 1
    # 3 of 4 batches hold a bad id: each costs about 2·log2(100) extra requests, not 100
    assert sb.stats.requests <= 4 + 3 * 2 * 8
