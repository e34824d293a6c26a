"""Text from outside never drives the terminal (issue 19).

A provider that answers with ANSI escapes (``ESC[2J`` clears the screen), an OSC title sequence
(``ESC]0;title BEL``) and NULs -- in its body for every status bulksend prints, and in its
headers -- and files whose names and contents carry them: everything for people (stdout's
summary, stderr's logs, the final ``bulksend:`` line, validate and dry-run) shows them escaped,
and the data outputs (reports, JSON) keep them exactly.
"""

from __future__ import annotations

import asyncio
import csv
import io
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import TextIO, cast

import orjson
import pytest
import structlog
from aiohttp import web

from bulksend.output import logs
from bulksend.output.printable import PrintableStream, escaped, printable
from tests import loopback
from tests.conftest import KEY, CliResult, minimal_campaign, run_cli
from tests.loopback import in_background

#: what a hostile server sends: clear the screen, retitle the window, ring, and NULs
EVIL = "bad key \x1b[2J\x1b]0;pwned\x07 \x00 end"
RAW = ("\x1b", "\x07", "\x00")


def no_raw_controls(*texts: str) -> None:
    for text in texts:
        for ch in RAW:
            assert ch not in text, (ch, text[-2000:])


# ---------------------------------------------------------------------------- the function


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain text, accents é and 日本", "plain text, accents é and 日本"),
        ("a\x1b[2Jb", "a\\x1b[2Jb"),
        ("\x1b]0;title\x07", "\\x1b]0;title\\x07"),
        ("nul\x00", "nul\\x00"),
        ("two\nlines", "two\nlines"),
        ("over\rwrite", "over\\rwrite"),
        ("tab\there", "tab\\there"),
        ("rtl \u202eevil", "rtl \\u202eevil"),
        ("c1 \x9b2J", "c1 \\x9b2J"),
        ("lone \udc9b", "lone \\udc9b"),  # undecodable header bytes: not even encodable
        ("a \\x1b stays", "a \\x1b stays"),
    ],
)
def test_printable(text: str, shown: str) -> None:
    assert printable(text) == shown
    assert printable(shown) == shown  # escaping twice changes nothing
    shown.encode("utf-8")  # always writable to a UTF-8 terminal


def test_escaped_is_one_line_and_reversible() -> None:
    assert escaped("a\nb\\c\x1b") == "a\\nb\\\\c\\x1b"
    assert escaped("plain") == "plain"


def test_a_printable_stream_escapes_what_is_written() -> None:
    raw = io.StringIO()
    stream = PrintableStream(raw)
    print("stopped: \x1b[2J", file=stream)
    assert raw.getvalue() == "stopped: \\x1b[2J\n"


@pytest.mark.parametrize("colors", [False, True])
def test_console_logs_escape_values_and_the_event(colors: bool) -> None:
    out = io.StringIO()
    logs.configure(
        level=logging.INFO, fmt="console", stream=cast(TextIO, PrintableStream(out)), colors=colors
    )
    structlog.get_logger("t").info("evt\x1b[2J", bare="\x1b]0;t\x07", spaced=EVIL, n=1)
    text = out.getvalue()
    assert "\x1b]0" not in text
    assert "\x1b[2J" not in text
    assert "\x00" not in text
    assert "\x07" not in text
    assert "evt\\x1b[2J" in text
    assert "'\\x1b]0;t\\x07'" in text  # bare: quoted as a Python string
    assert ("\x1b[" in text) is colors  # the renderer's own colours pass


def test_json_logs_stay_exact() -> None:
    out = io.StringIO()
    logs.configure(level=logging.INFO, fmt="json", stream=cast(TextIO, PrintableStream(out)))
    structlog.get_logger("t").info("evt", reason=EVIL)
    assert orjson.loads(out.getvalue())["reason"] == EVIL


# ---------------------------------------------------------------------------- a hostile provider


def send(url: str, tmp_path: Path, *extra: str, env: dict[str, str] | None = None) -> CliResult:
    """A 3-row MaxTraffic send to ``url``, one row per request, each tried once."""
    (tmp_path / "r.csv").write_text("vid\n1\n2\n3\n")
    campaign = minimal_campaign(tmp_path, "r.csv")
    return run_cli(
        "send", str(campaign), "--base-url", url, "--batch-size", "1", "--max-attempts", "1",
        "--in-flight", "1", "--journal", str(tmp_path / "c.journal"), "--progress", "never",
        "--log-format", "console", "-v", *extra,
        env={"MAXTRAFFIC_API_KEY": KEY, **(env or {})},
    )  # fmt: skip


def answering(
    status: int, body: bytes, content_type: str = "application/json"
) -> Callable[[], AbstractAsyncContextManager[str]]:
    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=status, body=body, headers={"Content-Type": content_type})

    return lambda: loopback.serving(answer)


@pytest.mark.parametrize(
    ("status", "content_type", "exit_status", "shown_in"),
    [
        (401, "application/json", 3, "both"),  # the stopped: line and the bulksend: line
        (403, "application/json", 3, "both"),
        (422, "application/json", 0, "report"),  # the rows are invalid: each has the reason
        (500, "text/plain", 4, "report"),
        (503, "text/html", 4, "report"),
        (200, "text/html", 4, "report"),  # an unexpected 2xx: a page, not the provider's JSON
    ],
)
def test_a_hostile_body_is_shown_escaped_for_every_status(
    tmp_path: Path, status: int, content_type: str, exit_status: int, shown_in: str
) -> None:
    body = EVIL.encode()
    report = tmp_path / "report.jsonl"
    with in_background(answering(status, body, content_type)) as url:
        sent = send(url, tmp_path, "--report", str(report), "--max-unexpected", "1")
    assert sent.status == exit_status, sent.stderr
    no_raw_controls(sent.stdout, sent.stderr)
    assert "Traceback" not in sent.stderr
    if shown_in == "both":
        assert "stopped: provider rejected the credentials" in sent.stdout
        assert "\\x1b[2J\\x1b]0;pwned\\x07 \\x00 end" in sent.stdout
        last = sent.stderr.splitlines()[-1]
        assert last.startswith("bulksend: provider rejected the credentials")
        assert last.endswith("\\x1b[2J\\x1b]0;pwned\\x07 \\x00 end")
    reasons = [orjson.loads(line)["reason"] for line in report.read_bytes().splitlines()]
    if status in (422, 500, 503):  # the report keeps the provider's words exactly
        assert any(EVIL in reason for reason in reasons), reasons


def test_the_github_step_summary_is_escaped_too(tmp_path: Path) -> None:
    step = tmp_path / "step.md"
    with in_background(answering(401, EVIL.encode())) as url:
        sent = send(url, tmp_path, env={"GITHUB_STEP_SUMMARY": str(step)})
    assert sent.status == 3
    shown = step.read_text()
    no_raw_controls(shown)
    assert "stopped: provider rejected the credentials (401): bad key \\x1b[2J" in shown


def test_the_report_on_stdout_is_data_and_stays_exact(tmp_path: Path) -> None:
    with in_background(answering(422, EVIL.encode())) as url:
        sent = send(url, tmp_path, "--report", "-")
    assert sent.status == 0, sent.stderr
    rows = list(csv.DictReader(io.StringIO(sent.stdout, newline="")))
    assert [row["status"] for row in rows] == ["invalid"] * 3
    assert all(EVIL in row["reason"] for row in rows)
    no_raw_controls(sent.stderr)  # the summary, on stderr this time
    assert "read          3" in sent.stderr


# ---------------------------------------------------------------------------- hostile headers


@asynccontextmanager
async def raw_server(head: bytes, body: bytes = b"") -> AsyncIterator[str]:
    """Answers every request with the status line and headers ``head`` as they are (aiohttp's
    server refuses to send control characters in a header; a hostile server does not)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        length = next(
            (int(line.split(b":")[1]) for line in request.split(b"\r\n")
             if line.lower().startswith(b"content-length:")),
            0,
        )  # fmt: skip
        await reader.readexactly(length)
        writer.write(
            head + b"\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        await server.wait_closed()


HOSTILE = b"\x1b[2J\x1b]0;pwned\x07"


@pytest.mark.parametrize(
    ("head", "body", "exit_status", "shown"),
    [
        # a redirect: its Location is in the stop line and the final line
        (
            b"HTTP/1.1 302 Found\r\nLocation: http://x.example/" + HOSTILE,
            b"",
            4,
            "a redirect to http://x.example/\\x1b[2J\\x1b]0;pwned\\x07",
        ),
        # an unexpected 2xx: its Content-Type is named in the stop line
        (  # (the media type is shown in lower case, up to its first ";")
            b"HTTP/1.1 200 OK\r\nContent-Type: text/" + HOSTILE,
            b"<html>",
            4,
            "answered 200 text/\\x1b[2j\\x1b]0, not",
        ),
        # a spent quota's reason header: in each reason (the report), logged
        (
            b"HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\nRetry-After: 0\r\n"
            b"X-RateLimit-Reason: " + HOSTILE,
            b'{"error": "slow down"}',
            4,
            "",
        ),
    ],
)
def test_a_hostile_header_is_shown_escaped(
    tmp_path: Path, head: bytes, body: bytes, exit_status: int, shown: str
) -> None:
    report = tmp_path / "report.csv"
    with in_background(lambda: raw_server(head, body)) as url:
        sent = send(url, tmp_path, "--report", str(report), "--max-unexpected", "1", "-vv")
    assert sent.status == exit_status, sent.stderr
    no_raw_controls(sent.stdout, sent.stderr)
    if shown:
        assert shown in sent.stdout
        assert shown in sent.stderr.splitlines()[-1]
    else:
        with report.open(newline="") as f:
            reasons = [row["reason"] for row in csv.DictReader(f)]
        assert all(HOSTILE.decode() in reason for reason in reasons), reasons


def test_the_progress_line_adds_only_its_own_sequences(tmp_path: Path) -> None:
    with in_background(answering(401, EVIL.encode())) as url:
        sent = send(url, tmp_path, "--progress", "always")
    assert sent.status == 3
    assert "\r\x1b[2K" in sent.stderr  # the line was drawn
    no_raw_controls(sent.stdout, sent.stderr.replace("\r\x1b[2K", ""))


# ---------------------------------------------------------------------------- hostile files


def test_validate_and_dry_run_escape_names_and_contents(tmp_path: Path) -> None:
    name = "list\x1b[2J\x07.csv"  # in the campaign file as TOML escapes
    (tmp_path / name).write_text("vid,na\x1bme\n1,ok\n2,bad\x1b]0;t\x07cell\n3,\x7f\u202e\n")
    campaign = tmp_path / "c.toml"
    campaign.write_text(
        'provider = "maxtraffic"\nname = "evil\\u001b]0;t\\u0007"\n'
        '[message]\nmessages = [{ title = "t\\u001b[2J", body = "\\u0000" }]\n'
        '[recipients]\npath = "list\\u001b[2J\\u0007.csv"\nid = "vid"\nuid = ""\n'
    )
    requests = tmp_path / "requests.jsonl"
    for args in (
        ("validate", str(campaign), "--max-invalid-rate", "1"),
        ("send", str(campaign), "--dry-run", "--requests-out", str(requests)),
    ):
        shown = run_cli(*args)
        assert shown.status == 0, shown.stderr
        no_raw_controls(shown.stdout, shown.stderr)
        assert "list\\x1b[2J\\x07.csv" in shown.stdout
    sent = [orjson.loads(line) for line in requests.read_bytes().splitlines()]
    assert orjson.loads(sent[0]["body"])["messages"] == [{"title": "t\x1b[2J", "body": "\x00"}]


def test_a_bad_file_s_one_line_error_is_escaped(tmp_path: Path) -> None:
    (tmp_path / "r.csv").write_text("uid,\x1b]0;t\x07\n1,2\n")
    campaign = minimal_campaign(tmp_path, "r.csv")
    checked = run_cli("validate", str(campaign))
    assert checked.status == 2
    no_raw_controls(checked.stdout, checked.stderr)
    assert checked.stderr.startswith("bulksend: error: ")
