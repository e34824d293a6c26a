"""``bulksend traitly-webhooks`` facing the network (issue 19): no open receiver by mistake, a
cap on bodies, tokens compared in constant time and never shown."""

from __future__ import annotations

import asyncio
import hmac
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from bulksend.providers import traitly_webhooks
from bulksend.providers.traitly_webhooks import (
    MAX_BODY,
    PROPENSITY,
    ReceiverConfig,
    is_loopback,
    serving,
)
from tests.conftest import ROOT, run_cli

TOKEN = "hook-token-5b1e0c9d"
PAYLOAD = {"object": PROPENSITY, "meta": {"customer_id": "c1", "goal_name": "g"}, "data": [{}]}


def payload(size: int) -> bytes:
    """A valid propensity payload of exactly ``size`` bytes (padded in the goal's name)."""
    base = {**PAYLOAD, "data": [{"likelihood": 0.9}]}
    short = orjson.dumps(base)
    goal = "g" + "x" * (size - len(short))
    return orjson.dumps({**base, "meta": {"customer_id": "c1", "goal_name": goal}})


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LocalHost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("192.168.1.5", False),
        ("example.com", False),
        ("localhost.example.com", False),
    ],
)
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.1", "example.com"])
def test_the_cli_will_not_listen_elsewhere_without_a_token(tmp_path: Path, host: str) -> None:
    out = tmp_path / "a.jsonl"
    refused = run_cli("traitly-webhooks", "--port", "0", "--host", host, "--out", str(out))
    assert refused.status == 2
    assert refused.stderr == (
        f"bulksend: error: will not listen on {host} without a token: anyone who can reach it "
        "could add people to the audience; give a token (--token-env VAR), listen on "
        "127.0.0.1, or say --insecure-no-token\n"
    )
    assert not out.exists()


def test_a_token_and_no_token_cannot_both_be_asked_for(tmp_path: Path) -> None:
    both = run_cli(
        "traitly-webhooks", "--port", "0", "--out", str(tmp_path / "a.jsonl"),
        "--token-env", "T", "--insecure-no-token",
    )  # fmt: skip
    assert both.status == 2
    assert "not allowed with argument" in both.stderr


async def test_the_library_refuses_too(tmp_path: Path) -> None:
    config = ReceiverConfig(tmp_path / "a.jsonl")
    with pytest.raises(ValueError, match=r"will not listen on 0\.0\.0\.0 without a token"):
        async with serving(config, "0.0.0.0"):
            pass
    for allowed in (
        ReceiverConfig(tmp_path / "a.jsonl", token=TOKEN),
        ReceiverConfig(tmp_path / "a.jsonl", insecure_no_token=True),
    ):
        async with serving(allowed, "0.0.0.0") as receiver:
            assert receiver.port > 0


# ---------------------------------------------------------------------------- bodies


@pytest.fixture
async def small(tmp_path: Path) -> AsyncIterator[tuple[str, traitly_webhooks.Counts]]:
    config = ReceiverConfig(tmp_path / "a.jsonl", max_body=400)
    async with serving(config) as receiver:
        yield receiver.base_url + "/", receiver.counts


async def _post(url: str, data: Any, **headers: str) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=data, headers={"Content-Type": "application/json", **headers}) as r,
    ):
        return r.status, await r.json(content_type=None)


async def test_a_body_over_the_cap_is_413(
    small: tuple[str, traitly_webhooks.Counts],
) -> None:
    url, counts = small
    assert await _post(url, payload(400)) == (200, {"status": "recorded"})
    message = "the payload must be at most 400 bytes"
    assert await _post(url, payload(401)) == (413, {"error": {"status": 413, "message": message}})

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the cap applies as it reads
        body = payload(2000)
        for start in range(0, len(body), 100):
            yield body[start : start + 100]

    assert (await _post(url, chunks()))[0] == 413
    assert (counts.received, counts.recorded, counts.rejected) == (3, 1, 2)


def test_the_default_cap_is_documented() -> None:
    assert MAX_BODY == 256 * 1024
    parser_help = " ".join(run_cli("traitly-webhooks", "--help").stdout.split())
    assert "--max-body BYTES" in parser_help
    assert "default 262144: 256 KiB" in parser_help
    assert "413 body over --max-body" in parser_help


# ---------------------------------------------------------------------------- tokens


async def test_tokens_are_compared_in_constant_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every check goes through ``hmac.compare_digest``, on digests of one length (so not
    even the token's length shows in the time an answer takes)."""
    compared: list[tuple[int, int]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    config = ReceiverConfig(tmp_path / "a.jsonl", token=TOKEN)
    async with serving(config) as receiver:
        url = receiver.base_url + "/"
        body = payload(200)
        assert (await _post(url, body, Authorization="Token x"))[0] == 401
        assert (await _post(url, body, Authorization=f"Bearer {TOKEN}"))[0] == 200
        assert (await _post(url + "?token=" + "y" * 500, body))[0] == 401
        assert (await _post(url + "?token=" + TOKEN, body))[0] == 200
    assert compared == [(32, 32)] * 4


async def test_a_token_is_never_shown(tmp_path: Path) -> None:
    """A receiver with a token on every address: its output says nothing of the token,
    whatever requests came (right, wrong, in the header or the URL, too large)."""
    out = tmp_path / "hooks.jsonl"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bulksend", "traitly-webhooks", "--port", "0", "--host", "0.0.0.0",
        "--out", str(out), "--token-env", "HOOK_TOKEN", "--max-body", "300",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "HOOK_TOKEN": TOKEN}, cwd=ROOT,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 20)).decode()
        port = line.rsplit(":", 1)[1].strip()
        url = f"http://127.0.0.1:{port}/"
        assert (await _post(url + "?token=" + TOKEN, payload(200)))[0] == 200
        assert (await _post(url, payload(200), Authorization=f"Token {TOKEN}x"))[0] == 401
        assert (await _post(url + "?token=" + TOKEN[:-1], payload(200)))[0] == 401
        status, answer = await _post(url, payload(400), Authorization=f"Token {TOKEN}")
        assert status == 413
        assert TOKEN not in orjson.dumps(answer).decode()
        process.terminate()
        rest, err = await asyncio.wait_for(process.communicate(), 20)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    shown = line + rest.decode() + err.decode()
    assert process.returncode == 0, shown
    assert "received 4, recorded 1, filtered 0, rejected 3" in shown
    assert TOKEN not in shown
    assert TOKEN[:8] not in shown
    assert TOKEN not in out.read_text()


async def test_insecure_no_token_listens_and_says_so(tmp_path: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bulksend", "traitly-webhooks", "--port", "0", "--host", "0.0.0.0",
        "--out", str(tmp_path / "a.jsonl"), "--insecure-no-token",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 20)).decode()
        assert line.startswith("bulksend traitly-webhooks listening on http://0.0.0.0:")
        process.terminate()
        _, err = await asyncio.wait_for(process.communicate(), 20)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0
    assert err.decode().startswith(
        "bulksend traitly-webhooks: warning: no token on 0.0.0.0: anyone who can reach it can "
        "add people to the audience (--insecure-no-token)\n"
    )
