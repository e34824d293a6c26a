"""End to end: campaigns through the engine against the NotifyVisitors sandbox on loopback."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from bulksend import campaign as campaign_module
from bulksend.campaign import send_campaign
from bulksend.config import load_settings
from bulksend.errors import AuthError, ProviderError
from bulksend.net.transport import Transport
from bulksend.providers import notifyvisitors
from bulksend.providers.notifyvisitors_api import campaign_report
from bulksend.sandbox import FaultConfig, SandboxConfig, running

KEY, BRAND = "nv-key-123456", "brand-77"
SECRETS = {"api_key": KEY, "brand_id": BRAND}
FAST = 'limit = "1000/1s"'

CAMPAIGN = """
provider = "notifyvisitors"
operation = "{operation}"
name = "E2E"
[message]
{message}
[api]
{api}
[recipients]
path = "{recipients}"
id = "user_id"
{columns}
[send]
batch_size = {batch_size}
in_flight = 8
{send}
"""


def write_campaign(
    tmp_path: Path,
    recipients: Path,
    *,
    operation: str = "users",
    message: str = "",
    api: str = "",
    columns: str = "",
    batch_size: int = 100,
    send: str = FAST,
) -> Path:
    path = tmp_path / f"{operation}.toml"
    path.write_text(
        CAMPAIGN.format(
            operation=operation,
            message=message,
            api=api,
            recipients=recipients,
            columns=columns,
            batch_size=batch_size,
            send=send,
        )
    )
    return path


def write_csv(path: Path, header: str, rows: list[tuple[Any, ...]]) -> Path:
    path.write_text(header + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return path


def config(tmp_path: Path, **settings: Any) -> SandboxConfig:
    base: dict[str, Any] = {
        "provider": "notifyvisitors",
        "api_key": KEY,
        "brand_id": BRAND,
        "ledger": tmp_path / "ledger.jsonl",
        "limit": 1000,
        "window": 1.0,
    }
    return SandboxConfig(**{**base, **settings})


async def send(
    campaign: Path, base_url: str, secrets: dict[str, str] = SECRETS, **flags: Any
) -> Any:
    settings = load_settings(campaign, env={}, overrides={"base_url": base_url, **flags})
    return await send_campaign(settings, secrets)


def users(n: int, dup_rate: float = 0.0, seed: int = 1) -> list[tuple[str, str, str]]:
    rnd = random.Random(seed)
    rows = [(f"{1000 + i}", f"Name {i}", rnd.choice(["Mumbai", "Berlin", ""])) for i in range(n)]
    out = rows + [rows[rnd.randrange(n)] for _ in range(int(n * dup_rate))]
    rnd.shuffle(out)
    return out


async def test_users_every_unique_user_lands_exactly_once(tmp_path: Path) -> None:
    rows = users(1000, 0.25)
    recipients = write_csv(tmp_path / "users.csv", "user_id,name,city", rows)
    campaign = write_campaign(tmp_path, recipients, message='attributes = { source = "e2e" }')
    report = tmp_path / "report.jsonl"
    async with running(config(tmp_path)) as sb:
        result = await send(campaign, sb.base_url, report=str(report))
    summary = result.summary
    assert result.stopped is None
    ledger = Counter(e["value"] for e in sb.ledger_entries() if e["kind"] == "user")
    assert set(ledger) == {f"{1000 + i}" for i in range(1000)}
    assert max(ledger.values()) == 1
    assert summary.read == len(rows) == summary.accounted
    assert summary.delivered == 1000
    assert summary.duplicates == len(rows) - 1000
    assert sb.stats.accepted == summary.requests == 10  # 100 per request
    statuses = Counter(orjson.loads(x)["status"] for x in report.read_bytes().splitlines())
    assert statuses == {"delivered": 1000, "duplicate": len(rows) - 1000}


async def test_events_many_per_user_deduplicated_only_on_the_event_key(tmp_path: Path) -> None:
    rows = [(f"ev{i}", f"{i % 40}", f"2024-03-01T10:{i % 60:02d}:00Z", i) for i in range(300)]
    rows += rows[:30]  # resent rows: the same event keys
    recipients = write_csv(tmp_path / "events.csv", "event_id,user_id,timestamp,amount", rows)
    campaign = write_campaign(
        tmp_path,
        recipients,
        operation="events",
        message='event = "purchase"',
        columns='uid = "event_id"',
    )
    async with running(config(tmp_path)) as sb:
        result = await send(campaign, sb.base_url)
    entries = [e for e in sb.ledger_entries() if e["kind"] == "event"]
    assert result.summary.delivered == 300
    assert result.summary.duplicates == 30
    assert len(entries) == 300
    assert {e["event"] for e in entries} == {"purchase"}
    assert Counter(e["value"] for e in entries) == Counter(f"{i % 40}" for i in range(300))


async def test_campaign_send_then_its_report(tmp_path: Path) -> None:
    rows = users(250, 0.1)
    recipients = write_csv(tmp_path / "users.csv", "user_id,name,city", rows)
    message = 'channel = "email"\ncampaign_id = "spring-24"'
    campaign = write_campaign(tmp_path, recipients, operation="campaign", message=message)
    auth = notifyvisitors.Auth(api_key=KEY, brand_id=BRAND)
    async with running(config(tmp_path)) as sb:
        result = await send(campaign, sb.base_url)
        async with Transport(sb.base_url) as transport:
            report = await campaign_report(transport, auth, "spring-24")
            with pytest.raises(ProviderError, match="not found"):
                await campaign_report(transport, auth, "never-sent")
            with pytest.raises(AuthError):
                await campaign_report(transport, notifyvisitors.Auth("x", "y"), "s")
    assert result.summary.delivered == 250
    entries = [e for e in sb.ledger_entries() if e["kind"] == "campaign"]
    assert Counter(e["value"] for e in entries) == Counter({f"{1000 + i}": 1 for i in range(250)})
    assert {(e["campaign"], e["channel"]) for e in entries} == {("spring-24", "email")}
    assert report["sent"] == 250
    assert report["requests"] == 3
    assert report["channels"] == {"email": 250}


@pytest.mark.parametrize("screened", [False, True])
async def test_bad_records_are_reported_invalid_and_the_rest_lands_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, screened: bool
) -> None:
    """Unscreened, the sandbox answers HTTP 200 with status error and the positions of the bad
    records; those are reported invalid and the rest of each batch is sent again. Screened (the
    default), the adapter refuses the same rows before sending."""
    if not screened:
        monkeypatch.setattr(campaign_module, "screened", lambda provider, chunks: chunks)
    rows = []
    for i in range(250):
        stamp = "not-a-time" if i % 7 == 3 else f"2024-03-01T10:00:{i % 60:02d}+0000"
        rows.append((f"{i}", stamp))
    bad = {f"{i}" for i in range(250) if i % 7 == 3}
    recipients = write_csv(tmp_path / "events.csv", "user_id,timestamp", rows)
    campaign = write_campaign(tmp_path, recipients, operation="events", message='event = "login"')
    report = tmp_path / "report.jsonl"
    async with running(config(tmp_path)) as sb:
        result = await send(campaign, sb.base_url, report=str(report))
    summary = result.summary
    assert summary.invalid == len(bad)
    assert summary.delivered == 250 - len(bad)
    ledger = Counter(e["value"] for e in sb.ledger_entries())
    assert set(ledger) == {f"{i}" for i in range(250)} - bad
    assert max(ledger.values()) == 1
    lines = [orjson.loads(x) for x in report.read_bytes().splitlines()]
    invalid = {x["id"]: x for x in lines if x["status"] == "invalid"}
    assert set(invalid) == bad
    if screened:
        for user, x in invalid.items():
            line = int(user) + 2
            reason = "column 'timestamp': not a time (UNIX seconds or ISO 8601): 'not-a-time'"
            assert x["reason"] == f"{recipients}:{line}: {reason}"
        assert sb.stats.requests == sb.stats.accepted == 3
    else:
        reasons = {x["reason"] for x in invalid.values()}
        assert reasons == {"timestamp must look like yyyy-MM-ddTHH:mm:ss+0000"}
        assert {x["http_status"] for x in invalid.values()} == {200}
        # one refused request per batch of 100 (each holds bad rows), then the rest resent once
        assert sb.stats.requests == 6
        assert sb.stats.accepted == 3


async def test_a_wrong_key_stops_the_send_after_one_request(tmp_path: Path) -> None:
    recipients = write_csv(tmp_path / "u.csv", "user_id,name,city", users(500))
    campaign = write_campaign(tmp_path, recipients, batch_size=10)
    async with running(config(tmp_path)) as sb:
        result = await send(campaign, sb.base_url, {"api_key": "wrong", "brand_id": BRAND})
    assert isinstance(result.stopped, AuthError)
    assert "401" in str(result.stopped)
    assert "wrong" not in str(result.stopped)
    assert sb.stats.requests == 1
    assert sb.stats.unauthorized == 1
    assert result.summary.delivered == 0
    assert result.summary.read == result.summary.accounted


@pytest.mark.parametrize(("token", "delivered"), [("partner-tok", 50), ("stale-tok", 0)])
async def test_partner_apps_send_a_bearer_token(tmp_path: Path, token: str, delivered: int) -> None:
    recipients = write_csv(tmp_path / "u.csv", "user_id,name,city", users(50))
    campaign = write_campaign(tmp_path, recipients, api='auth = "bearer"', batch_size=10)
    async with running(config(tmp_path, token="partner-tok")) as sb:
        result = await send(campaign, sb.base_url, {"token": token})
    assert result.summary.delivered == delivered
    assert isinstance(result.stopped, AuthError) == (delivered == 0)


async def test_400_on_an_oversized_batch_is_split_until_it_fits(tmp_path: Path) -> None:
    recipients = write_csv(tmp_path / "u.csv", "user_id,name,city", users(30))
    campaign = write_campaign(tmp_path, recipients, api="max_batch = 30", batch_size=30)
    async with running(config(tmp_path, max_batch=8)) as sb:
        result = await send(campaign, sb.base_url)
    assert result.summary.delivered == 30
    assert sb.stats.by_status[400] == 3  # 30 -> 15 + 15 -> 7 + 8 + 7 + 8
    assert sb.stats.accepted == 4


async def test_404_invalid_url_stops_the_send(tmp_path: Path) -> None:
    recipients = write_csv(tmp_path / "u.csv", "user_id,name,city", users(100))
    campaign = write_campaign(
        tmp_path, recipients, api='paths = { user = "/api/v1/users/create" }', batch_size=10
    )
    async with running(config(tmp_path)) as sb:
        result = await send(campaign, sb.base_url)
    assert isinstance(result.stopped, ProviderError)
    assert not isinstance(result.stopped, AuthError)
    assert "Invalid URL" in str(result.stopped)
    assert sb.stats.requests == 1
    assert result.summary.failed == 10
    assert result.summary.skipped == 90


async def test_429s_are_waited_out_and_everything_lands_once(tmp_path: Path) -> None:
    # someone else spent the window just before the send; the campaign also believes in
    # 40 per 0.25 s while the server allows 2 (and says so only with Remaining)
    recipients = write_csv(tmp_path / "u.csv", "user_id,name,city", users(80))
    campaign = write_campaign(tmp_path, recipients, batch_size=10, send='limit = "40/0.25s"')
    settings = {"limit": 2, "window": 0.25, "retry_after": False}
    headers = notifyvisitors.Auth(api_key=KEY, brand_id=BRAND).headers()
    async with running(config(tmp_path, **settings)) as sb:
        async with aiohttp.ClientSession() as session:
            for n in range(2):
                body = {"nv": [{"userID": f"other-{n}"}]}
                url = sb.base_url + notifyvisitors.PATHS["user"]
                async with session.post(url, json=body, headers=headers) as resp:
                    assert resp.status == 200
        result = await send(campaign, sb.base_url, max_attempts=20)
    assert result.summary.delivered == 80
    assert result.stopped is None
    assert sb.stats.rate_limited > 0
    assert result.summary.throttled == sb.stats.rate_limited
    ledger = Counter(e["value"] for e in sb.ledger_entries())
    assert len(ledger) == 82
    assert max(ledger.values()) == 1
    assert sb.stats.accepted == 10


async def test_5xx_are_retried_until_delivered(tmp_path: Path) -> None:
    recipients = write_csv(tmp_path / "u.csv", "user_id,name,city", users(200))
    campaign = write_campaign(tmp_path, recipients, batch_size=10)
    faults = FaultConfig(fail_rate=0.2, retry_after_503=False)
    async with running(config(tmp_path, faults=faults, seed=5)) as sb:
        result = await send(campaign, sb.base_url, max_attempts=10)
    assert result.summary.delivered == 200
    assert result.summary.retries > 0
    assert sb.stats.faults["500"] + sb.stats.faults["503"] > 0
    ledger = Counter(e["value"] for e in sb.ledger_entries())
    assert len(ledger) == 200
    assert max(ledger.values()) == 1


async def test_the_event_group_window_is_respected(tmp_path: Path) -> None:
    limit, window = 5, 0.4
    rows = [(f"{i}", "2024-03-01T10:00:00Z") for i in range(150)]  # 15 requests of 10
    recipients = write_csv(tmp_path / "e.csv", "user_id,timestamp", rows)
    campaign = write_campaign(
        tmp_path,
        recipients,
        operation="events",
        message='event = "open"',
        batch_size=10,
        send=f'limit = "{limit}/{window}s"',
    )
    cfg = config(tmp_path, limit=None, window=window, group_limits={"event": limit})
    async with running(cfg) as sb:
        result = await send(campaign, sb.base_url)
        origin = sb.core.started_at
    assert result.summary.delivered == 150
    assert sb.stats.rate_limited == 0
    per_request = {e["request"]: e["ts"] for e in sb.ledger_entries()}
    per_window = Counter(int((ts - origin) // window) for ts in per_request.values())
    assert len(per_request) == 15
    assert max(per_window.values()) <= limit
