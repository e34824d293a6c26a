"""``python -m bulksend.sandbox.cli NAME``: a real child process per provider, then signals."""

from __future__ import annotations

import argparse
import base64
import signal
from pathlib import Path

import aiohttp
import orjson
import pytest

from bulksend.sandbox import PROVIDERS
from bulksend.sandbox.cli import add_arguments, config_from_args
from bulksend.sandbox.config import SandboxConfigError
from bulksend.sandbox.ledger import ledger_counts, read_ledger
from bulksend.sandbox.testing import SandboxProcess

BASIC = "Basic " + base64.b64encode(b"sandbox@example.com:sandbox-key").decode()
# provider -> (path, headers, body) of one accepted send
SENDS: dict[str, tuple[str, dict[str, str], bytes]] = {
    "maxtraffic": (
        "/v1/notifications",
        {"Authorization": "key=sandbox-key", "Content-Type": "application/json"},
        orjson.dumps({"messages": [{"t": 1}], "to_ids": ["r1"]}),
    ),
    "notifyvisitors": (
        "/api/v1/user/create",
        {"x-api-key": "sandbox-key", "x-brand-id": "sandbox-brand"},
        orjson.dumps({"nv": [{"userID": "r1"}]}),
    ),
    "maxemail": (
        "/api/json/email_send",
        {"Authorization": BASIC, "Content-Type": "application/x-www-form-urlencoded"},
        b"method=triggerFolder&arg0=3&arg1=r1%40example.com&arg2=%7B%7D",
    ),
    "traitly": (
        "/api/v1/event",
        {"Authorization": "Token sandbox-key"},
        orjson.dumps({"customer_id": "r1", "name": "signed up"}),
    ),
}


def test_every_provider_has_a_cli_case() -> None:
    assert set(SENDS) == set(PROVIDERS)


@pytest.mark.parametrize("provider", sorted(SENDS))
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_process_serves_then_exits_0_on_signal(
    tmp_path: Path, provider: str, sig: signal.Signals
) -> None:
    ledger = tmp_path / "ledger.jsonl"
    process = SandboxProcess(provider, "--ledger", str(ledger), "--seed", "1")
    url = process.start()
    try:
        path, headers, body = SENDS[provider]
        if provider == "notifyvisitors":
            headers = {**headers, "Content-Type": "application/json"}
        async with (
            aiohttp.ClientSession() as http,
            http.post(url + path, data=body, headers=headers) as r,
        ):
            assert r.status == 200, await r.text()
    finally:
        code = process.stop(sig)
    assert code == 0, process.stderr_text()
    assert process.first_line == f"bulksend sandbox {provider} listening on {url}"
    entries = read_ledger(ledger)
    assert len(entries) == 1
    assert "r1" in entries[0]["value"]


def test_arguments_plug_into_a_parent_parser(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser(prog="bulksend")
    sub = parser.add_subparsers(dest="command")
    add_arguments(sub.add_parser("sandbox"))
    args = parser.parse_args(
        [
            "sandbox",
            "notifyvisitors",
            "--port",
            "0",
            "--limit",
            "10",
            "--group-limit",
            "user=3",
            "--storm-every",
            "10",
            "--storm-for",
            "2",
            "--fail-rate",
            "0.1",
            "--no-ratelimit-headers",
            "--ledger",
            str(tmp_path / "l.jsonl"),
        ]
    )
    config = config_from_args(args)
    assert config.provider == "notifyvisitors"
    assert (config.limit, dict(config.group_limits)) == (10, {"user": 3})
    assert config.faults.storm_every == 10
    assert config.faults.fail_rate == 0.1
    assert config.ratelimit_headers is False
    with pytest.raises(SystemExit):
        parser.parse_args(["sandbox", "maxtraffic", "--fail-rate", "2"])
    with pytest.raises(SystemExit):
        parser.parse_args(["sandbox", "maxtraffic", "--group-limit", "user"])
    bad = parser.parse_args(["sandbox", "maxtraffic", "--storm-every", "1", "--storm-for", "3"])
    with pytest.raises(SandboxConfigError):
        config_from_args(bad)


def test_requests_ledger_format_reads_back_per_recipient(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    path.write_bytes(
        b'{"ts":1.0,"request":1,"campaign":"c","kind":"id","values":["a","b"]}\n'
        b'{"ts":2.0,"request":2,"campaign":"c","kind":"uid","value":"u"}\n'
    )
    assert [(e["request"], e["kind"], e["value"]) for e in read_ledger(path)] == [
        (1, "id", "a"),
        (1, "id", "b"),
        (2, "uid", "u"),
    ]


def test_a_line_still_being_written_is_left_for_the_next_read(tmp_path: Path) -> None:
    """A reader of a live ledger may see part of a write: the half line is not parsed."""
    path = tmp_path / "l.jsonl"
    whole = b'{"ts":1.0,"request":1,"campaign":"c","kind":"id","value":"a"}\n'
    path.write_bytes(whole + b'{"ts":1.0,"request":2,"camp')
    assert [e["value"] for e in read_ledger(path)] == ["a"]
    assert ledger_counts(path) == {"a": 1}
    path.write_bytes(whole * 2)
    assert ledger_counts(path) == {"a": 2}
    assert ledger_counts(tmp_path / "absent.jsonl") == {}


def test_bench_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    from bulksend.sandbox import bench

    assert bench.main(["--requests", "40", "--connections", "4", "--ids", "10"]) == 0
    result = orjson.loads(capsys.readouterr().out)
    assert result["statuses"] == {"200": 40}
    assert result["requests_per_s"] > 0
