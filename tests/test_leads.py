"""``bulksend leads``: the query, the export, the sandbox and the CLI."""

from __future__ import annotations

import csv
import socket
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from bulksend.errors import AuthError, ConfigError, UnavailableError
from bulksend.models import HttpResponse
from bulksend.net.transport import Transport
from bulksend.providers.maxtraffic_leads import (
    LeadsQuery,
    as_leads,
    columns,
    default_scheduler,
    fetch_leads,
    format_instant,
    leads_request,
    make_query,
    output_format,
    parse_instant,
    read_leads,
    write_leads,
)
from bulksend.sandbox import Sandbox, SandboxConfig, running
from bulksend.sandbox.maxtraffic import filter_leads, synthetic_leads
from bulksend.sandbox.testing import SandboxProcess
from tests.conftest import KEY, ROOT, run_cli

HEADERS = {"Authorization": f"key={KEY}", "Accept": "application/json"}


# ---------------------------------------------------------------------------- pure


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-05-01", datetime(2024, 5, 1, tzinfo=UTC)),
        ("2024-05-01T10:20:30Z", datetime(2024, 5, 1, 10, 20, 30, tzinfo=UTC)),
        ("2024-05-01T10:20:30.5+02:00", datetime(2024, 5, 1, 8, 20, 30, 500_000, tzinfo=UTC)),
        ("2024-05-01 10:20", datetime(2024, 5, 1, 10, 20, tzinfo=UTC)),
    ],
)
def test_parse_instant(text: str, expected: datetime) -> None:
    assert parse_instant(text) == expected


@pytest.mark.parametrize("text", ["yesterday", "2024-13-01", "", "01/05/2024"])
def test_a_bad_date_is_a_one_line_error_naming_the_flag(text: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_instant(text, "--to")
    assert str(exc.value).startswith(f"--to: {text!r} is not an ISO 8601")
    assert "\n" not in str(exc.value)


def test_make_query_checks_the_range() -> None:
    with pytest.raises(ConfigError, match=r"^--from \(2024-06-01\) is after --to \(2024-05-01\)$"):
        make_query("2024-06-01", "2024-05-01")
    q = make_query("2024-05-01", "2024-05-01", campaign_id=" 2 ")
    assert q.campaign_id == "2"
    assert q.describe() == ("campaign 2, from 2024-05-01T00:00:00.000Z to 2024-05-01T00:00:00.000Z")


def test_format_instant_is_the_docs_form() -> None:
    when = datetime(2021, 11, 5, 13, 20, 3, 123_456, tzinfo=UTC) + timedelta(hours=-2)
    assert format_instant(when) == "2021-11-05T11:20:03.123Z"


def test_leads_request_paths_and_query() -> None:
    q = make_query("2024-05-01", "2024-05-02T12:00:00+01:00", campaign_id="a/b")
    r = leads_request(q, {**HEADERS, "Content-Type": "application/json"})
    assert r.method == "GET"
    assert r.path == (
        "/v1/campaigns/a%2Fb/leads?from=2024-05-01T00%3A00%3A00.000Z&to=2024-05-02T11%3A00%3A00.000Z"
    )
    assert "Content-Type" not in r.headers
    assert leads_request(LeadsQuery(), HEADERS).path == "/v1/leads"


LEAD = {"email": "email@example.com", "timestamp": "2021-11-05T11:20:03.000Z", "campaign": "S"}


@pytest.mark.parametrize(
    ("data", "leads"),
    [
        ([LEAD, {**LEAD, "email": "b@example.com"}], 2),  # what the sandbox sends
        ([], 0),
        (LEAD, 1),  # the doc's response sample: one lead object
        ({"email": "a@example.com"}, 1),
        ([{"email": "a@example.com", "extra": 1}], 1),
        ({"status": "ok", "data": []}, None),  # the operator's report
        ([{"status": "ok"}], None),
        ([LEAD, {"timestamp": "2021-11-05T11:20:03.000Z"}], None),
        ([LEAD, "a@example.com"], None),
        ({}, None),
        (None, None),
        ("leads", None),
    ],
)
def test_a_lead_is_the_docs_lead_object(data: Any, leads: int | None) -> None:
    found = as_leads(data)
    assert (None if found is None else len(found)) == leads


@pytest.mark.parametrize(
    ("status", "body", "said"),
    [
        (200, b'{"status":"ok","data":[]}', "answered 200 application/json, not MaxTraffic's "
         'leads (a JSON array of leads: [{"email", "timestamp", "campaign"}, ...]); body: '
         '{"status":"ok","data":[]}: is --base-url right?'),
        (204, b"", "answered 204 application/json, not MaxTraffic's leads (a JSON array of "
         'leads: [{"email", "timestamp", "campaign"}, ...]); body: (empty): is --base-url right?'),
        (404, b"", "answered 404 application/json, empty body: is --base-url right?"),
        (405, b"", "answered 405 application/json, empty body: is --base-url right?"),
        (410, b"", "answered 410 application/json, empty body: is --base-url right?"),
    ],
)  # fmt: skip
def test_an_answer_that_ends_the_export_names_the_url(status: int, body: bytes, said: str) -> None:
    url = "https://api.example.com/v1/leads"
    response = HttpResponse(status, {"Content-Type": "application/json"}, body)
    for query in (LeadsQuery(), LeadsQuery(campaign_id="7")):
        reading = read_leads(response, query, url)
        assert isinstance(reading.error, UnavailableError)
        assert str(reading.error) == f"leads: {url} {said}"


def test_a_campaign_404_with_json_is_no_such_campaign() -> None:
    response = HttpResponse(404, {"Content-Type": "application/json"}, b'{"message": "Not Found"}')
    reading = read_leads(response, LeadsQuery(campaign_id="7"), "https://h/v1/campaigns/7/leads")
    assert isinstance(reading.error, ConfigError)
    assert str(reading.error) == "--campaign-id 7: no such campaign (404: Not Found)"
    reading = read_leads(response, LeadsQuery(), "https://h/v1/leads")
    assert str(reading.error).startswith("leads: https://h/v1/leads answered 404 application/json")


def test_output_format_and_columns() -> None:
    assert output_format("x.CSV") == "csv"
    assert output_format("x.jsonl") == output_format("x.ndjson") == "jsonl"
    assert output_format("x.txt", "csv") == "csv"
    with pytest.raises(ConfigError, match="--format"):
        output_format("x.txt")
    assert columns([{"campaign": "c", "extra": 1, "email": "e"}]) == [
        "email",
        "timestamp",
        "campaign",
        "extra",
    ]


def test_write_leads_csv_and_jsonl(tmp_path: Path) -> None:
    leads: list[dict[str, Any]] = [
        {"email": "a@x.io", "timestamp": "t1", "campaign": "Summer, sale"},
        {"email": "b@x.io", "timestamp": "t2", "campaign": "C", "score": 3, "tags": ["x"]},
    ]
    assert write_leads(leads, tmp_path / "out" / "l.csv") == 2
    with (tmp_path / "out" / "l.csv").open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows == [
        ["email", "timestamp", "campaign", "score", "tags"],
        ["a@x.io", "t1", "Summer, sale", "", ""],
        ["b@x.io", "t2", "C", "3", '["x"]'],
    ]
    write_leads(leads, tmp_path / "l.jsonl")
    assert [orjson.loads(x) for x in (tmp_path / "l.jsonl").read_bytes().splitlines()] == leads
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l.jsonl", "out"]  # no temp files


# ---------------------------------------------------------------------------- sandbox


@pytest.fixture
async def sb() -> AsyncIterator[Sandbox]:
    async with running(SandboxConfig(api_key=KEY, leads=300, seed=5)) as server:
        yield server


async def fetch(
    sb: Sandbox, query: LeadsQuery, headers: dict[str, str] = HEADERS
) -> list[dict[str, Any]]:
    async with Transport(sb.base_url) as transport:
        return await fetch_leads(transport, default_scheduler(), query, headers=headers)


async def test_leads_between_from_and_to_exactly_as_the_sandbox_defines(sb: Sandbox) -> None:
    anchor = datetime.fromtimestamp(int(sb.core.started_at), UTC)
    start, end = anchor - timedelta(days=20), anchor - timedelta(days=5)
    every = synthetic_leads(300, seed=5, anchor=sb.core.started_at)
    bounds = {"from": format_instant(start), "to": format_instant(end)}
    expected = [x.as_json() for x in filter_leads(every, bounds, None)]
    got = await fetch(sb, LeadsQuery(start, end))
    assert got == expected
    assert 0 < len(got) < 300
    assert all(format_instant(start) <= x["timestamp"] < format_instant(end) for x in got)
    one = await fetch(sb, LeadsQuery(start, end, "2"))
    assert one == [x.as_json() for x in filter_leads(every, bounds, "2")]
    assert {x["campaign"] for x in one} == {"Cart abandonment"}
    assert len(await fetch(sb, LeadsQuery())) == 300


async def test_the_sandbox_refuses_a_reversed_range_with_422(sb: Sandbox) -> None:
    later = datetime(2024, 6, 1, tzinfo=UTC)
    with pytest.raises(ConfigError, match=r"refused the query \(422\): from: must not be after"):
        await fetch(sb, LeadsQuery(later, later - timedelta(days=1)))


async def test_unknown_campaign_and_wrong_key(sb: Sandbox) -> None:
    with pytest.raises(ConfigError, match=r"^--campaign-id 99: no such campaign \(404"):
        await fetch(sb, LeadsQuery(campaign_id="99"))
    with pytest.raises(AuthError, match="401") as exc:
        await fetch(sb, LeadsQuery(), {"Authorization": "key=nope-nope"})
    assert "nope-nope" not in str(exc.value)


# ---------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def server() -> Iterator[SandboxProcess]:
    with SandboxProcess("maxtraffic", "--api-key", KEY) as process:
        yield process


WIDE = ["--from", "2000-01-01", "--to", "2100-01-01"]


def test_cli_writes_csv_and_jsonl(server: SandboxProcess, tmp_path: Path) -> None:
    env = {"MAXTRAFFIC_API_KEY": KEY}
    out = tmp_path / "all.csv"
    r = run_cli("leads", "--base-url", server.base_url, *WIDE, "--out", str(out), env=env)
    assert r.status == 0, r.stderr
    assert r.stdout.startswith("bulksend: wrote 100 leads (all campaigns, from 2000-01-01T")
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 100
    assert list(rows[0]) == ["email", "timestamp", "campaign"]
    out2 = tmp_path / "c1.jsonl"
    args = ["--campaign-id", "1", "--out", str(out2), "-q"]
    r = run_cli("leads", "--base-url", server.base_url, *WIDE, *args, env=env)
    assert (r.status, r.stdout) == (0, "")
    lines = [orjson.loads(x) for x in out2.read_bytes().splitlines()]
    assert lines == [x for x in map(dict, rows) if x["campaign"] == "Summer sale"]


def test_cli_reads_the_key_and_base_url_from_a_campaign_file(
    server: SandboxProcess, tmp_path: Path
) -> None:
    campaign = tmp_path / "c.toml"
    campaign.write_text(
        f'provider = "maxtraffic"\n[auth]\napi_key_env = "MY_KEY"\n'
        f'[send]\nbase_url = "{server.base_url}"\n'
    )
    out = tmp_path / "l.jsonl"
    r = run_cli("leads", str(campaign), *WIDE, "--out", str(out), env={"MY_KEY": KEY})
    assert r.status == 0, r.stderr
    assert len(out.read_bytes().splitlines()) == 100
    r = run_cli("leads", str(campaign), *WIDE, "--out", str(out), env={})
    assert r.status == 2
    assert "MY_KEY is not set" in r.stderr


def test_cli_errors_and_exit_statuses(server: SandboxProcess, tmp_path: Path) -> None:
    out = tmp_path / "l.csv"
    base = ["leads", "--base-url", server.base_url, "--out", str(out)]
    env = {"MAXTRAFFIC_API_KEY": KEY}
    bad = run_cli(*base, "--from", "2024-02-30", "--to", "2024-03-01", env=env)
    assert bad.status == 2
    assert bad.stderr.strip().splitlines() == [
        "bulksend: error: --from: '2024-02-30' is not an ISO 8601 date or date-time "
        "(e.g. 2024-05-01 or 2024-05-01T12:00:00Z)"
    ]
    unknown = run_cli(*base, *WIDE, "--campaign-id", "77", env=env)
    assert unknown.status == 2
    assert "--campaign-id 77: no such campaign (404: Campaign '77' not found)" in unknown.stderr
    wrong = run_cli(*base, *WIDE, env={"MAXTRAFFIC_API_KEY": "wrong-key-42"})
    assert wrong.status == 3
    assert "wrong-key-42" not in wrong.stderr
    missing = run_cli(*base, *WIDE, env={})
    assert missing.status == 2
    assert "MAXTRAFFIC_API_KEY is not set" in missing.stderr
    txt = run_cli("leads", *WIDE, "--out", str(tmp_path / "l.txt"), env=env)
    assert txt.status == 2
    assert not out.exists()


def test_cli_unreachable_provider_exits_4(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = run_cli(
        "leads",
        "--base-url",
        f"http://127.0.0.1:{port}",
        *WIDE,
        "--out",
        str(tmp_path / "l.csv"),
        "--max-attempts",
        "1",
        env={"MAXTRAFFIC_API_KEY": KEY},
    )
    assert r.status == 4
    assert "cannot connect" in r.stderr


def test_cli_sandbox_with_the_sample_campaign(tmp_path: Path) -> None:
    sample = ROOT / "samples" / "maxtraffic" / "campaign.toml"
    out = tmp_path / "s.jsonl"
    now = datetime.now(UTC)
    r = run_cli(
        "leads",
        str(sample),
        "--sandbox",
        "--from",
        (now - timedelta(days=31)).isoformat(),
        "--to",
        (now + timedelta(days=1)).isoformat(),
        "--out",
        str(out),
        env={},
    )
    assert r.status == 0, r.stderr
    assert len(out.read_bytes().splitlines()) == 100


def test_cli_to_stdout(server: SandboxProcess) -> None:
    r = run_cli(
        "leads",
        "--base-url",
        server.base_url,
        *WIDE,
        "--campaign-id",
        "3",
        "--out",
        "-",
        "--format",
        "csv",
        env={"MAXTRAFFIC_API_KEY": KEY},
    )
    assert r.status == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "email,timestamp,campaign"
    assert all(line.endswith(",Black Friday") for line in lines[1:])
    assert "wrote" in r.stderr
