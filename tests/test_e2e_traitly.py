"""End to end: customers and events through the engine against the Traitly sandbox, and the
read helpers (lists with filters, recommended next actions) against the same server."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from bulksend import campaign as campaign_module
from bulksend.campaign import send_campaign
from bulksend.config import load_settings
from bulksend.errors import AuthError, ProviderError
from bulksend.net.transport import Transport
from bulksend.providers import traitly, traitly_api
from bulksend.providers.reads import ReadRequest, fetch
from bulksend.sandbox import FaultConfig, SandboxConfig, running
from tests.conftest import ROOT, run_cli

TOKEN = "traitly-token-0123456789"
FAST = 'limit = "1000/1s"'

CAMPAIGN = """
provider = "traitly"
operation = "{operation}"
name = "E2E"
[message]
{message}
[api]
{api}
[recipients]
path = "{recipients}"
id = "customer_id"
{columns}
[send]
in_flight = 8
{send}
"""


def write_campaign(
    tmp_path: Path,
    recipients: Path,
    *,
    operation: str = "customers",
    message: str = "",
    api: str = "",
    columns: str = "",
    send: str = FAST,
) -> Path:
    path = tmp_path / f"{operation}.toml"
    text = CAMPAIGN.format(
        operation=operation,
        message=message,
        api=api,
        recipients=recipients,
        columns=columns,
        send=send,
    )
    path.write_text(text)
    return path


def write_csv(path: Path, header: str, rows: list[tuple[Any, ...]]) -> Path:
    path.write_text(header + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return path


HEADER = "customer_id,name,email,plan,created_at,location,role"


def customers(n: int, dup_rate: float = 0.0, seed: int = 2) -> list[tuple[Any, ...]]:
    rnd = random.Random(seed)
    plans = ["Starter", "Pro", "Freemium"]
    rows = [
        (f"c{i}", f"Customer {i}", f"c{i}@example.com", plans[i % 3], 1493933699 + i, "Berlin", "")
        for i in range(n)
    ]
    out = rows + [rows[rnd.randrange(n)] for _ in range(int(n * dup_rate))]
    rnd.shuffle(out)
    return out


def config(tmp_path: Path, **settings: Any) -> SandboxConfig:
    base: dict[str, Any] = {
        "provider": "traitly",
        "token": TOKEN,
        "ledger": tmp_path / "ledger.jsonl",
        "limit": 1000,
        "window": 1.0,
    }
    return SandboxConfig(**{**base, **settings})


async def send(campaign: Path, base_url: str, token: str = TOKEN, **flags: Any) -> Any:
    settings = load_settings(campaign, env={}, overrides={"base_url": base_url, **flags})
    return await send_campaign(settings, {"token": token})


async def test_customers_land_exactly_once_and_read_back_with_filters(tmp_path: Path) -> None:
    rows = customers(300, 0.2)
    recipients = write_csv(tmp_path / "c.csv", HEADER, rows)
    message = 'top_level = ["location"]'
    campaign = write_campaign(tmp_path, recipients, message=message)
    async with running(config(tmp_path)) as sb:
        result = await send(campaign, sb.base_url)
        async with Transport(sb.base_url) as transport:
            everyone = await traitly_api.list_customers(transport, TOKEN)
            pros = await traitly_api.list_customers(transport, TOKEN, plan="Pro")
            (one,) = await traitly_api.list_customers(
                transport, TOKEN, customer_id="c7", name="Customer 7"
            )
    summary = result.summary
    assert result.stopped is None
    ledger = Counter(e["value"] for e in sb.ledger_entries() if e["kind"] == "customer")
    assert set(ledger) == {f"c{i}" for i in range(300)}
    assert max(ledger.values()) == 1
    assert summary.delivered == 300
    assert summary.duplicates == len(rows) - 300
    assert summary.requests == sb.stats.requests - 3 == 300  # one customer per request
    assert len(everyone) == 300
    assert {c["customer_id"] for c in pros} == {f"c{i}" for i in range(300) if i % 3 == 1}
    assert one["email"] == "c7@example.com"
    assert one["created_at"] == str(1493933699 + 7)
    assert one["location"] == "Berlin"
    assert one["custom_attributes"] == {}  # empty cells are not sent


@pytest.mark.parametrize("screened", [True, False])
async def test_bad_rows_are_invalid_with_a_clear_reason_and_the_rest_lands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, screened: bool
) -> None:
    """Screened (the default), rows the adapter can judge never leave; unscreened, Traitly's
    own answers name the same rows. Rows only the provider can judge are its answers in both."""
    if not screened:
        monkeypatch.setattr(campaign_module, "screened", lambda provider, chunks: chunks)
    rows = sorted(customers(40), key=lambda row: int(row[0][1:]))
    rows[3] = ("c3", "Customer 3", "c3@example.com", "", 1, "X", "")  # no plan
    rows[5] = ("c5", "Customer 5", "not-an-email", "Pro", 1, "X", "")
    rows[8] = ("hidden-8", "Hidden", "h@example.com", "Pro", 1, "X", "")  # 403
    rows[9] = ("c9", "Customer 9", "c9@example.com", "Pro", "yesterday", "X", "")
    recipients = write_csv(tmp_path / "c.csv", HEADER, rows)
    campaign = write_campaign(tmp_path, recipients)
    report = tmp_path / "report.jsonl"
    async with running(config(tmp_path)) as sb:
        result = await send(campaign, sb.base_url, report=str(report))
    assert result.stopped is None
    lines = {x["id"]: x for x in map(orjson.loads, report.read_bytes().splitlines())}
    invalid = {
        k: (v["http_status"], v["reason"]) for k, v in lines.items() if v["status"] != "delivered"
    }
    kind = "api_invalid_request_error"
    by_provider = {
        "c5": (400, f"400 {kind}: email is not a valid address: 'not-an-email'"),
        "hidden-8": (403, f"403 {kind}: The requested resource is hidden"),
    }
    if screened:
        assert invalid == {
            **by_provider,
            "c3": (None, f"{recipients}:5: missing required plan"),
            "c9": (None, f"{recipients}:11: created_at: not UNIX seconds or ISO 8601: 'yesterday'"),
        }
    else:
        assert invalid == {
            **by_provider,
            "c3": (400, f"400 {kind}: Missing required parameter: plan"),
            "c9": (400, f"400 {kind}: created_at must be a UNIX timestamp in seconds"),
        }
    assert sb.stats.requests == (38 if screened else 40)
    assert result.summary.invalid == 4
    assert result.summary.delivered == 36
    assert len(sb.ledger_entries()) == 36


async def test_events_many_per_customer_and_the_reads(tmp_path: Path) -> None:
    names = ["Logged in", "Style Widget"]
    rows = [(f"ev{i}", f"c{i % 10}", names[i % 2], 1494020099 + i) for i in range(100)]
    rows += rows[:10]
    recipients = write_csv(tmp_path / "e.csv", "event_id,customer_id,name,created_at", rows)
    campaign = write_campaign(tmp_path, recipients, operation="events", columns='uid = "event_id"')
    customers_csv = write_csv(tmp_path / "c.csv", HEADER, customers(10))
    customers_toml = write_campaign(tmp_path, customers_csv)
    async with running(config(tmp_path)) as sb:
        await send(customers_toml, sb.base_url)
        result = await send(campaign, sb.base_url)
        async with Transport(sb.base_url) as transport:
            logins = await traitly_api.list_events(transport, TOKEN, "c2", "Logged in")
            actions = await traitly_api.next_actions(transport, TOKEN, "c2", "30-day Conversion")
            with pytest.raises(ProviderError) as unknown:
                await traitly_api.next_actions(transport, TOKEN, "nobody")
            with pytest.raises(ProviderError) as hidden:
                await traitly_api.list_events(transport, TOKEN, "hidden-1", "x")
            with pytest.raises(AuthError):
                await traitly_api.list_customers(transport, "wrong")
            html = ReadRequest(
                "/api/v1/customer", {}, {**traitly.headers(TOKEN), "Accept": "text/html"}
            )
            not_json = traitly.error_of(await fetch(transport, html))
    assert result.summary.delivered == 100
    assert result.summary.duplicates == 10
    events = [e for e in sb.ledger_entries() if e["kind"] == "event"]
    assert Counter(e["value"] for e in events) == Counter({f"c{i}": 10 for i in range(10)})
    assert sorted(int(e["created_at"]) for e in logins) == [
        1494020099 + i for i in (2, 12, 22, 32, 42, 52, 62, 72, 82, 92)
    ]
    assert actions["object"] == "recommended-next-actions"
    assert actions["meta"] == {"customer_id": "c2", "goal_name": "30-day Conversion"}
    assert 0.0 <= actions["likelihood"] <= 1.0
    assert all("event_name" in a for a in actions["data"])
    assert unknown.value.status == 404
    assert hidden.value.status == 403
    assert not_json == ("api_invalid_request_error", "Only JSON responses are available")


async def test_a_wrong_token_stops_the_send_after_one_request(tmp_path: Path) -> None:
    recipients = write_csv(tmp_path / "c.csv", HEADER, customers(50))
    campaign = write_campaign(tmp_path, recipients)
    async with running(config(tmp_path)) as sb:
        result = await send(campaign, sb.base_url, token="expired-token")
    assert isinstance(result.stopped, AuthError)
    assert "api_authentication_error" in str(result.stopped)
    assert "expired-token" not in str(result.stopped)
    assert sb.stats.requests == 1
    assert result.summary.delivered == 0
    assert result.summary.failed == 1
    assert result.summary.read == result.summary.accounted


@pytest.mark.parametrize(
    ("path", "status"),
    [("/api/v1/customers", 404), ("/api/v1/recommended-next-actions", 405)],
)
async def test_a_wrong_endpoint_stops_the_send(tmp_path: Path, path: str, status: int) -> None:
    recipients = write_csv(tmp_path / "c.csv", HEADER, customers(20))
    campaign = write_campaign(tmp_path, recipients, api=f'paths = {{ customer = "{path}" }}')
    async with running(config(tmp_path)) as sb:
        result = await send(campaign, sb.base_url)
    assert isinstance(result.stopped, ProviderError)
    assert not isinstance(result.stopped, AuthError)
    assert str(result.stopped).startswith(
        f"{sb.base_url}{path} answered {status} application/json: api_invalid_request_error: "
    )
    assert str(result.stopped).endswith(": is --base-url right? the send stopped")
    assert sb.stats.requests == 1
    assert result.summary.delivered == 0
    assert sb.ledger_entries() == []


async def test_429s_without_headers_are_waited_out(tmp_path: Path) -> None:
    recipients = write_csv(tmp_path / "c.csv", HEADER, customers(12))
    campaign = write_campaign(tmp_path, recipients, send='limit = "40/0.25s"')
    async with running(config(tmp_path, limit=3, window=0.25, retry_after=False)) as sb:
        async with Transport(sb.base_url) as transport:
            for _ in range(3):  # someone else spends the window just before the send
                await traitly_api.list_customers(transport, TOKEN)
        result = await send(campaign, sb.base_url, max_attempts=20)
    assert result.summary.delivered == 12
    assert sb.stats.rate_limited > 0
    assert result.summary.throttled == sb.stats.rate_limited
    ledger = Counter(e["value"] for e in sb.ledger_entries())
    assert len(ledger) == 12
    assert max(ledger.values()) == 1


async def test_500_and_503_are_retried_until_delivered(tmp_path: Path) -> None:
    recipients = write_csv(tmp_path / "c.csv", HEADER, customers(60))
    campaign = write_campaign(tmp_path, recipients)
    faults = FaultConfig(fail_rate=0.15, retry_after_503=False)
    async with running(config(tmp_path, faults=faults, seed=4)) as sb:
        result = await send(campaign, sb.base_url, max_attempts=10)
    assert result.summary.delivered == 60
    assert sb.stats.faults["500"] > 0
    assert sb.stats.faults["503"] > 0
    assert result.summary.retries == sb.stats.faults["500"] + sb.stats.faults["503"]
    ledger = Counter(e["value"] for e in sb.ledger_entries())
    assert len(ledger) == 60
    assert max(ledger.values()) == 1


@pytest.mark.parametrize(
    "sample",
    [
        "samples/traitly/customers.toml",
        "samples/traitly/events.toml",
        "samples/notifyvisitors/users.toml",
        "samples/notifyvisitors/events.toml",
        "samples/notifyvisitors/campaign.toml",
    ],
)
def test_samples_run_against_their_sandbox(sample: str) -> None:
    result = run_cli("send", str(ROOT / sample), "--sandbox", "--quiet", "--progress", "never")
    assert result.status == 0, result.stderr
