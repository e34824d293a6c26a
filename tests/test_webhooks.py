"""The Traitly webhook receiver: payload rules, HTTP answers, the CLI process, and the loop from
prediction to campaign (the receiver's file is the recipients of a NotifyVisitors send)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from bulksend.campaign import send_campaign
from bulksend.config import load_settings
from bulksend.providers.traitly_webhooks import (
    NEXT_ACTIONS,
    PROPENSITY,
    PayloadError,
    ReceiverConfig,
    flatten,
    keep,
    parse_payload,
    serving,
)
from bulksend.sandbox import SandboxConfig, running
from tests.conftest import ROOT, run_cli

# the doc's two examples, verbatim
DOC_ACTIONS: dict[str, Any] = {
    "data": [
        {
            "event_name": "Style Widget",
            "goal_num_completed": 0,
            "total_num_completed": 4,
            "goal_days_left": 14,
            "importance": 0.4,
            "message_plaintext": "It's time to complete...",
            "message_html": "<p>It's time to complete...</p>",
        }
    ],
    "meta": {"customer_id": "123456", "goal_name": "30-day Conversion"},
    "timestamp": 123456789,
    "object": "recommended-next-actions",
}
DOC_PROPENSITY: dict[str, Any] = {
    "data": [{"likelihood": 0.5}],
    "meta": {"customer_id": "123456", "goal_name": "30-day Conversion"},
    "timestamp": 123456789,
    "object": "goal-propensity-change",
}
NOW = 1_700_000_000.0


def propensity(customer: str, likelihood: float, goal: str = "Conversion") -> dict[str, Any]:
    return {
        **DOC_PROPENSITY,
        "data": [{"likelihood": likelihood}],
        "meta": {
            "customer_id": customer,
            "goal_name": goal,
        },
    }


def test_the_docs_examples_parse_and_flatten() -> None:
    p = parse_payload(DOC_PROPENSITY)
    assert (p.object, p.customer_id, p.goal_name, p.likelihood) == (
        PROPENSITY,
        "123456",
        "30-day Conversion",
        0.5,
    )
    assert flatten(p, NOW) == {
        "id": "123456",
        "customer_id": "123456",
        "goal_name": "30-day Conversion",
        "object": PROPENSITY,
        "likelihood": 0.5,
        "timestamp": 123456789,
        "received_at": "2023-11-14T22:13:20Z",
    }
    a = parse_payload(DOC_ACTIONS)
    assert a.likelihood is None
    assert flatten(a, NOW) == {
        "id": "123456",
        "customer_id": "123456",
        "goal_name": "30-day Conversion",
        "object": NEXT_ACTIONS,
        "next_event": "Style Widget",
        "next_importance": 0.4,
        "next_message_plaintext": "It's time to complete...",
        "next_message_html": "<p>It's time to complete...</p>",
        "goal_days_left": 14,
        "actions": 1,
        "timestamp": 123456789,
        "received_at": "2023-11-14T22:13:20Z",
    }


def test_the_most_important_action_is_the_next_one() -> None:
    second = {**DOC_ACTIONS["data"][0], "event_name": "Invite", "importance": 0.6}
    row = flatten(parse_payload({**DOC_ACTIONS, "data": [DOC_ACTIONS["data"][0], second]}), NOW)
    assert row["next_event"] == "Invite"
    assert row["actions"] == 2
    with_likelihood = parse_payload(
        {
            **DOC_ACTIONS,
            "likelihood": 0.9,
            "meta": {
                "customer_id": 42,
                "goal_name": "g",
            },
        }
    )
    assert with_likelihood.likelihood == 0.9
    assert with_likelihood.customer_id == "42"


def _without(data: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k != key}


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ([], "JSON object"),
        ({**DOC_PROPENSITY, "object": "goal-prediction"}, "object must be one of"),
        (_without(DOC_PROPENSITY, "meta"), "meta must be an object"),
        ({**DOC_PROPENSITY, "meta": {"goal_name": "g"}}, "meta.customer_id"),
        ({**DOC_PROPENSITY, "meta": {"customer_id": " ", "goal_name": "g"}}, "meta.customer_id"),
        ({**DOC_PROPENSITY, "meta": {"customer_id": "1"}}, "meta.goal_name"),
        ({**DOC_PROPENSITY, "timestamp": "yesterday"}, "timestamp"),
        ({**DOC_PROPENSITY, "data": []}, "non-empty array"),
        ({**DOC_PROPENSITY, "data": [{}]}, "data[0].likelihood is required"),
        ({**DOC_PROPENSITY, "data": [{"likelihood": 1.5}]}, "between 0 and 1"),
        ({**DOC_PROPENSITY, "data": [{"likelihood": True}]}, "between 0 and 1"),
        ({**DOC_ACTIONS, "data": ["x"]}, "data[0] must be an object"),
        ({**DOC_ACTIONS, "data": [{"importance": 1}]}, "event_name"),
        ({**DOC_ACTIONS, "data": [{"event_name": "e", "goal_days_left": 1.5}]}, "an integer"),
        ({**DOC_ACTIONS, "data": [{"event_name": "e", "importance": "high"}]}, "a number"),
        ({**DOC_ACTIONS, "data": [{"event_name": "e", "message_html": 3}]}, "a string"),
        ({**DOC_ACTIONS, "likelihood": -0.1}, "between 0 and 1"),
    ],
)
def test_wrong_shapes_are_named(payload: Any, message: str) -> None:
    with pytest.raises(PayloadError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_payload(payload)


def test_the_likelihood_filter_and_the_object_filter() -> None:
    both = frozenset({PROPENSITY, NEXT_ACTIONS})
    assert keep(parse_payload(propensity("1", 0.7)), 0.7, both) is None
    assert keep(parse_payload(propensity("1", 0.69)), 0.7, both) == "likelihood 0.69 is below 0.7"
    assert keep(parse_payload(DOC_ACTIONS), 0.7, both) is None  # no likelihood: a recommendation
    only = frozenset({PROPENSITY})
    assert (
        keep(parse_payload(DOC_ACTIONS), 0.0, only) == f"object {NEXT_ACTIONS} is not recorded here"
    )


async def post(
    session: aiohttp.ClientSession, url: str, payload: Any, **kwargs: Any
) -> tuple[int, Any]:
    data = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "traitly",
        **kwargs.pop("headers", {}),
    }
    async with session.post(url, data=data, headers=headers, **kwargs) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_http_answers(tmp_path: Path) -> None:
    out = tmp_path / "hooks" / "audience.jsonl"
    config = ReceiverConfig(out, min_likelihood=0.6, path="/traitly")
    async with serving(config, wall=lambda: NOW) as receiver, aiohttp.ClientSession() as session:
        url = receiver.base_url + "/traitly"
        assert await post(session, url, DOC_ACTIONS) == (200, {"status": "recorded"})
        assert await post(session, url, propensity("7", 0.8)) == (200, {"status": "recorded"})
        status, body = await post(session, url, DOC_PROPENSITY)
        assert (status, body["status"]) == (200, "filtered")
        status, body = await post(session, url, {"object": "x"})
        assert status == 400
        assert "object must be one of" in body["error"]["message"]
        status, body = await post(session, url, b"{not json")
        assert status == 400
        assert body["error"]["message"].startswith("malformed JSON")
        status, _ = await post(session, url, DOC_ACTIONS, headers={"Content-Type": "text/plain"})
        assert status == 415
        status, _ = await post(session, url, DOC_ACTIONS, headers={"Accept": "text/html"})
        assert status == 406
        async with session.get(url) as resp:
            assert resp.status == 405
            assert (await resp.json())["error"]["status"] == 405
        status, _ = await post(session, receiver.base_url + "/other", DOC_ACTIONS)
        assert status == 404
        counts = receiver.counts
    assert (counts.received, counts.recorded, counts.filtered, counts.rejected) == (7, 2, 1, 4)
    rows = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert [(r["id"], r["object"]) for r in rows] == [("123456", NEXT_ACTIONS), ("7", PROPENSITY)]
    assert rows[1]["likelihood"] == 0.8
    assert rows[1]["received_at"] == "2023-11-14T22:13:20Z"


async def test_a_shared_token_is_required_when_set(tmp_path: Path) -> None:
    config = ReceiverConfig(tmp_path / "a.jsonl", token="s3cret")
    async with serving(config) as receiver, aiohttp.ClientSession() as session:
        url = receiver.base_url + "/"
        assert (await post(session, url, DOC_PROPENSITY))[0] == 401
        wrong = {"Authorization": "Token nope"}
        assert (await post(session, url, DOC_PROPENSITY, headers=wrong))[0] == 401
        right = {"Authorization": "Token s3cret"}
        assert (await post(session, url, DOC_PROPENSITY, headers=right))[0] == 200
        bearer = {"Authorization": "Bearer s3cret"}
        assert (await post(session, url, DOC_PROPENSITY, headers=bearer))[0] == 200
        assert (await post(session, url + "?token=s3cret", DOC_PROPENSITY))[0] == 200
    assert len((tmp_path / "a.jsonl").read_bytes().splitlines()) == 3


async def test_from_prediction_to_campaign(tmp_path: Path) -> None:
    """Propensity webhooks in, the likely converters out as a NotifyVisitors push audience."""
    out = tmp_path / "audience.jsonl"
    config = ReceiverConfig(out, min_likelihood=0.7, objects=frozenset({PROPENSITY}))
    likelihoods = {f"cust-{i}": round(i / 40, 3) for i in range(40)}
    async with serving(config) as receiver, aiohttp.ClientSession() as session:
        url = receiver.base_url + "/"
        for customer, chance in likelihoods.items():
            assert (await post(session, url, propensity(customer, chance)))[0] == 200
        for customer in ("cust-35", "cust-39"):  # a later change for the same customers
            assert (await post(session, url, propensity(customer, 0.95)))[0] == 200
        assert (await post(session, url, DOC_ACTIONS))[1]["status"] == "filtered"
    likely = {c for c, p in likelihoods.items() if p >= 0.7}
    assert len(likely) == 12

    campaign = tmp_path / "follow-up.toml"
    campaign.write_text(
        f"""
provider = "notifyvisitors"
operation = "campaign"
name = "likely converters"
[message]
channel = "push"
campaign_id = "nudge-1"
[recipients]
path = "{out}"
format = "jsonl"
id = "customer_id"
"""
    )
    keys = {"api_key": "k-1", "brand_id": "b-1"}
    sandbox = SandboxConfig(
        provider="notifyvisitors",
        ledger=tmp_path / "l.jsonl",
        api_key=keys["api_key"],
        brand_id=keys["brand_id"],
    )
    async with running(sandbox) as sb:
        settings = load_settings(campaign, env={}, overrides={"base_url": sb.base_url})
        result = await send_campaign(settings, keys)
    assert result.stopped is None
    assert result.summary.delivered == 12
    assert result.summary.duplicates == 2
    sent = Counter(e["value"] for e in sb.ledger_entries())
    assert set(sent) == likely
    assert max(sent.values()) == 1
    assert {e["campaign"] for e in sb.ledger_entries()} == {"nudge-1"}


def test_cli_refuses_an_unset_token_variable_and_a_bad_threshold(tmp_path: Path) -> None:
    out = str(tmp_path / "x.jsonl")
    unset = run_cli("traitly-webhooks", "--port", "0", "--out", out, "--token-env", "NOPE_TOKEN")
    assert unset.status == 2
    assert "NOPE_TOKEN is not set" in unset.stderr
    bad = run_cli("traitly-webhooks", "--port", "0", "--out", out, "--min-likelihood", "1.5")
    assert bad.status == 2
    assert "between 0 and 1" in bad.stderr  # usage errors go to the CLI's own stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
async def test_the_command_serves_until_a_signal(tmp_path: Path, sig: signal.Signals) -> None:
    out = tmp_path / "hooks.jsonl"
    env = {**os.environ, "HOOK_TOKEN": "tok-9"}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bulksend",
        "traitly-webhooks",
        "--port",
        "0",
        "--out",
        str(out),
        "--min-likelihood",
        "0.5",
        "--token-env",
        "HOOK_TOKEN",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=ROOT,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 20)).decode()
        prefix = "bulksend traitly-webhooks listening on "
        assert line.startswith(prefix), line
        url = line[len(prefix) :].strip() + "/?token=tok-9"
        async with aiohttp.ClientSession() as session:
            assert (await post(session, url, propensity("a", 0.9)))[1] == {"status": "recorded"}
            assert (await post(session, url, propensity("b", 0.1)))[1]["status"] == "filtered"
            assert (await post(session, url.split("?")[0], propensity("c", 0.9)))[0] == 401
        process.send_signal(sig)
        _, err = await asyncio.wait_for(process.communicate(), 20)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0
    assert f"stopped by {sig.name}" in err.decode()
    assert "received 3, recorded 1, filtered 1, rejected 1" in err.decode()
    (row,) = [orjson.loads(x) for x in out.read_bytes().splitlines()]
    assert (row["id"], row["likelihood"]) == ("a", 0.9)
