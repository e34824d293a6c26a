"""End to end: Maxemail campaigns through the library and the CLI against the sandbox."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from bulksend.campaign import build_provider, build_scheduler, send_campaign, source_spec
from bulksend.config import load_settings
from bulksend.dedup.deduper import Deduper
from bulksend.dispatch.engine import Engine, EngineOptions
from bulksend.net.transport import Transport
from bulksend.output.report import ReportWriter
from bulksend.providers.maxemail import Maxemail
from bulksend.sandbox import Sandbox, SandboxConfig, running
from bulksend.sources import open_source
from tests.conftest import ROOT, run_cli

USER, PASSWORD = "api@example.com", "pw-1234567890"
SECRETS = {"username": USER, "password": PASSWORD}

TRIGGER = """
provider = "maxemail"
name = "E2E"
[message]
service = "email_send"
method = "triggerFolder"
{call}
[recipients]
path = "{recipients}"
id = "email"
uid = ""
[send]
in_flight = 8
limit = "{limit}"
max_attempts = 10
"""
ARGS = 'args = ["12", "{id}", { first_name = "{first_name}" }]'


def config(**kwargs: Any) -> SandboxConfig:
    return SandboxConfig(provider="maxemail", username=USER, password=PASSWORD, **kwargs)


def write(tmp_path: Path, rows: list[tuple[str, str]], *, name: str = "r.csv") -> Path:
    path = tmp_path / name
    path.write_text("email,first_name\n" + "".join(f"{e},{f}\n" for e, f in rows))
    return path


def campaign(
    tmp_path: Path,
    recipients: Path,
    *,
    call: str = ARGS,
    limit: str = "2000/1s",
    service: str = "email_send",
    method: str = "triggerFolder",
    name: str = "c.toml",
) -> Path:
    text = TRIGGER.format(call=call, recipients=recipients, limit=limit)
    text = text.replace('"email_send"', f'"{service}"').replace('"triggerFolder"', f'"{method}"')
    path = tmp_path / name
    path.write_text(text)
    return path


def emailed(sb: Sandbox) -> Counter[str]:
    return Counter(e["value"] for e in sb.ledger_entries() if e["kind"] == "email")


async def test_every_unique_recipient_is_triggered_exactly_once(tmp_path: Path) -> None:
    unique = [(f"user{i:04d}@example.com", f"N{i}") for i in range(300)]
    rows = unique + unique[::7] + [("not-an-email", "X")]
    recipients = write(tmp_path, rows)
    report = tmp_path / "out.jsonl"
    async with running(config(ledger=tmp_path / "l.jsonl", limit=100_000)) as sb:
        settings = load_settings(
            campaign(tmp_path, recipients),
            env={},
            overrides={"base_url": sb.base_url, "report": str(report)},
        )
        result = await send_campaign(settings, SECRETS)
    s = result.summary
    assert result.stopped is None
    assert emailed(sb) == Counter({e: 1 for e, _ in unique})
    assert {e["campaign"] for e in sb.ledger_entries()} == {"12"}
    assert (s.read, s.delivered, s.duplicates, s.invalid) == (len(rows), 300, len(unique[::7]), 1)
    assert s.complete
    lines = [orjson.loads(x) for x in report.read_bytes().splitlines()]
    bad = [x for x in lines if x["status"] == "invalid"]
    assert [(b["id"], b["http_status"]) for b in bad] == [("not-an-email", 400)]
    assert bad[0]["reason"].startswith("Invalid email address")


async def test_a_wrong_password_stops_after_one_request(tmp_path: Path) -> None:
    recipients = write(tmp_path, [(f"u{i}@example.com", "A") for i in range(50)])
    async with running(config()) as sb:
        settings = load_settings(
            campaign(tmp_path, recipients), env={}, overrides={"base_url": sb.base_url}
        )
        result = await send_campaign(settings, {"username": USER, "password": "wrong-pw-xyz"})
    assert sb.stats.requests == 1
    assert sb.stats.unauthorized == 1
    assert result.stopped is not None
    assert "401" in str(result.stopped)
    assert "wrong-pw-xyz" not in str(result.stopped)
    assert result.summary.delivered == 0
    assert result.summary.read == result.summary.accounted == 50


async def test_a_wrong_arity_stops_the_send_with_the_docs_message(tmp_path: Path) -> None:
    recipients = write(tmp_path, [(f"u{i}@example.com", "A") for i in range(50)])
    two_args = 'args = ["12", "{id}"]'
    async with running(config(ledger=tmp_path / "l.jsonl")) as sb:
        settings = load_settings(
            campaign(tmp_path, recipients, call=two_args),
            env={},
            overrides={"base_url": sb.base_url},
        )
        result = await send_campaign(settings, SECRETS)
    assert sb.stats.requests == 1
    assert str(result.stopped).startswith(
        f"{sb.base_url}/api/json/email_send answered 400 application/json: "
        "Invalid Method Call to triggerFolder. Requires 3, 2 given.; body: {"
    )
    assert str(result.stopped).endswith(
        ": are the campaign's [message] service, method and arguments right? the send stopped"
    )
    assert result.summary.stopped == str(result.stopped)
    assert sb.ledger_entries() == []
    assert result.summary.failed == 1
    assert result.summary.skipped == 49


async def test_an_unknown_service_stops_but_an_unknown_recipient_is_invalid(
    tmp_path: Path,
) -> None:
    recipients = write(tmp_path, [(f"u{i}@example.com", "A") for i in range(5)])
    async with running(config()) as sb:
        wrong = campaign(tmp_path, recipients, service="emial_send", name="a.toml")
        settings = load_settings(wrong, env={}, overrides={"base_url": sb.base_url})
        result = await send_campaign(settings, SECRETS)
        assert "Unknown service 'emial_send'" in str(result.stopped)
        add = campaign(
            tmp_path,
            recipients,
            service="list",
            method="addRecipient",
            call='args = ["3", "{id}"]',
            name="b.toml",
        )
        settings = load_settings(add, env={}, overrides={"base_url": sb.base_url})
        result = await send_campaign(settings, SECRETS)
    assert result.stopped is None
    assert result.summary.invalid == 5
    assert sb.stats.by_status[404] == 6


async def test_a_deprecated_method_warns_once_in_the_summary(tmp_path: Path) -> None:
    rows = [(f"u{i}@example.com", "A") for i in range(40)]
    recipients = write(tmp_path, rows)
    insert = 'params = { listId = "7", recipientId = "{id}" }'
    async with running(config(ledger=tmp_path / "l.jsonl", limit=100_000)) as sb:
        first = campaign(tmp_path, recipients, name="first.toml")  # creates the recipients
        settings = load_settings(first, env={}, overrides={"base_url": sb.base_url})
        assert (await send_campaign(settings, SECRETS)).summary.warnings == []
        old = campaign(
            tmp_path,
            recipients,
            service="list",
            method="insertRecipient",
            call=insert,
            name="old.toml",
        )
        settings = load_settings(old, env={}, overrides={"base_url": sb.base_url})
        summary = (await send_campaign(settings, SECRETS)).summary
    assert summary.delivered == 40
    assert summary.warnings == [
        "maxemail: list.insertRecipient is deprecated (since API version 100): "
        "Use list.addRecipient"
    ]
    listed = [e["value"] for e in sb.ledger_entries() if e["kind"] == "list"]
    assert sorted(listed) == sorted(e for e, _ in rows)
    assert "warning: maxemail: list.insertRecipient is deprecated" in summary.render()


async def test_the_hidden_limit_is_found_with_few_429s(tmp_path: Path) -> None:
    rows = [(f"u{i:04d}@example.com", "A") for i in range(1000)]
    recipients = write(tmp_path, rows)
    hidden = config(ledger=tmp_path / "l.jsonl", limit=150, window=0.5)  # 300/s, no headers
    async with running(hidden) as sb:
        settings = load_settings(
            # the user states more than the API allows: a cap, and discovery goes below it
            campaign(tmp_path, recipients, limit="500/0.5s"),
            env={},
            overrides={"base_url": sb.base_url},
        )
        summary = (await send_campaign(settings, SECRETS)).summary
    assert summary.complete
    assert summary.delivered == 1000
    assert emailed(sb) == Counter({e: 1 for e, _ in rows})
    assert 0 < summary.throttled == sb.stats.rate_limited
    assert sb.stats.rate_limited <= 0.05 * sb.stats.requests, sb.stats.as_dict()
    assert summary.limits["api"]["evidence"] in {
        "discovered from 429s",
        "learned from 429 stalls",
    }


async def test_screened_rows_without_a_placeholder_column_are_invalid_and_not_sent(
    tmp_path: Path,
) -> None:
    """The wiring proposed for campaign.py: ``provider.screen(rows.chunks())``."""
    recipients = tmp_path / "r.jsonl"
    rows = [{"email": "a@x.io", "first_name": "A"}, {"email": "b@x.io"}, {"email": "c@x.io"}]
    rows[2]["first_name"] = "C"
    recipients.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    path = campaign(tmp_path, recipients)
    report = tmp_path / "out.csv"
    async with running(config(ledger=tmp_path / "l.jsonl", limit=100_000)) as sb:
        settings = load_settings(path, env={}, overrides={"base_url": sb.base_url})
        provider = build_provider(settings, SECRETS)
        assert isinstance(provider, Maxemail)
        with (
            open_source(source_spec(settings)) as source,
            Deduper(keys=provider.dedup_keys) as dedup,
            ReportWriter(report) as writer,
        ):
            async with Transport(settings.base_url) as transport:
                engine = Engine(
                    provider,
                    transport,
                    build_scheduler(settings, provider),
                    dedup,
                    EngineOptions(batch_size=1, workers=4),
                    report=writer,
                )
                summary = await engine.run(provider.screen(source.chunks()))
    assert emailed(sb) == Counter({"a@x.io": 1, "c@x.io": 1})
    assert (summary.delivered, summary.invalid, summary.read) == (2, 1, 3)
    assert "no value for placeholder {first_name}" in report.read_text()


def test_the_sample_campaigns_run_against_the_sandbox_from_the_cli() -> None:
    sample = ROOT / "samples" / "maxemail" / "trigger.toml"
    result = run_cli("send", str(sample), "--sandbox", "--limit", "1000/1s", "-q")
    assert result.status == 0, result.stderr
    validate = run_cli("validate", str(sample), "-q")
    assert validate.status == 0, validate.stderr


def test_the_sandbox_accepts_the_random_credentials_send_sandbox_makes(tmp_path: Path) -> None:
    """``send --sandbox`` fills username/password with random values on both sides."""
    sample = ROOT / "samples" / "maxemail" / "deprecated.toml"
    out = tmp_path / "summary.json"
    result = run_cli(
        "send", str(sample), "--sandbox", "--limit", "1000/1s", "--summary-json", str(out), "-q"
    )
    assert result.status == 0, result.stderr
    summary = orjson.loads(out.read_bytes())
    assert summary["stopped"] == ""
    assert summary["failed"] == 0
    assert summary["requests"] == summary["read"] - summary["duplicates"] == 61


async def test_the_deprecated_sample_delivers_once_trigger_has_filled_the_sandbox(
    tmp_path: Path,
) -> None:
    """The two-step flow the deprecated sample's comment gives, on one sandbox."""
    samples = ROOT / "samples" / "maxemail"
    flags = {"limit": "1000/1s", "report": str(tmp_path / "r.csv")}
    async with running(config(ledger=tmp_path / "l.jsonl", limit=100_000)) as sb:
        results = []
        for name in ("trigger.toml", "deprecated.toml"):
            settings = load_settings(
                samples / name, env={}, overrides={"base_url": sb.base_url, **flags}
            )
            results.append((await send_campaign(settings, SECRETS)).summary)
    trigger, deprecated = results
    assert trigger.warnings == []
    assert deprecated.delivered == trigger.delivered == 60
    assert deprecated.invalid == trigger.invalid == 1  # the sample's one malformed address
    assert deprecated.warnings == [
        "maxemail: list.insertRecipient is deprecated (since API version 100): "
        "Use list.addRecipient"
    ]
    listed = {e["value"] for e in sb.ledger_entries() if e["kind"] == "list"}
    assert len(listed) == 60
