"""A corrected base URL resumes a send; it never forces a start-over that sends twice (issue 14).

A campaign file whose ``[send] base_url`` points at a server answering 200 with JSON of the
wrong shape stops the send (exit 4) with the batches' outcome unknown. Before, correcting the
file blocked the resume ("the campaign file changed ([send].base_url); restore it, or add
--fresh") and ``bulksend retry`` went back to the recorded wrong URL. Now the same send, or a
retry given the right URL (corrected file, variable or flag), resumes, says what changed, and
every recipient arrives once: checked against a sandbox process's ledger.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import run_cli, write_campaign, write_recipients
from tests.test_e2e_unexpected import JSON, Stub, stub
from tests.test_resume_cli import ENV, journal_of, ledger_ids, one_line, sandbox

N = 240
BATCH = 10
ROWS = [(f"v{i:04d}", f"u{i:04d}") for i in range(N)]
WRONG = (JSON, b'{"status": "ok", "queued": true}')  # JSON, not MaxTraffic's answer


@pytest.fixture
def right(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    ledger = tmp_path / "ledger.jsonl"
    with sandbox(ledger) as sb:
        yield sb.base_url, ledger


@pytest.fixture
def wrong() -> Iterator[Stub]:
    with stub(WRONG) as server:
        yield server


def campaign_to(tmp_path: Path, base_url: str) -> Path:
    recipients = write_recipients(tmp_path / "r.csv", ROWS)
    extra = f'base_url = "{base_url}"'
    return write_campaign(tmp_path, recipients, batch_size=BATCH, in_flight=4, extra=extra)


def stopped_at_the_wrong_url(campaign: Path, wrong: Stub) -> None:
    first = run_cli("send", str(campaign), "--progress", "never", "-q", env=ENV)
    assert first.status == 4, first.stderr
    (line,) = [x for x in first.stderr.splitlines() if not x.startswith("{")]
    assert line.startswith(f"bulksend: {wrong.url}/v1/notifications answered 200 ")
    assert line.endswith(
        "5 times in a row: is --base-url right? the send stopped; resume it at the right URL "
        f"with: bulksend retry {journal_of(campaign)} --base-url URL"
    )


def correct(campaign: Path, was: str, now: str) -> None:
    campaign.write_text(campaign.read_text().replace(was, now))


def test_correcting_base_url_in_the_campaign_file_resumes_the_same_send(
    tmp_path: Path, wrong: Stub, right: tuple[str, Path]
) -> None:
    url, ledger = right
    campaign = campaign_to(tmp_path, wrong.url)
    stopped_at_the_wrong_url(campaign, wrong)
    sent_wrong = wrong.requests
    correct(campaign, wrong.url, url)

    again = run_cli("send", str(campaign), "--progress", "never", "-q", env=ENV)
    assert again.status == 0, again.stderr  # was: exit 2, "restore it, or add --fresh"
    assert one_line(again.stderr, "resuming").startswith(
        f"bulksend: resuming with [send].base_url changed (was {wrong.url}, now {url}): "
        "0 batches settled by an earlier run, "
    )
    assert wrong.requests == sent_wrong
    assert sorted(ledger_ids(ledger).values()) == [1] * N


@pytest.mark.parametrize("given", ["file", "variable", "flag", "flag over file", "nothing"])
def test_retry_sends_to_a_base_url_given_now_not_the_recorded_one(
    tmp_path: Path, wrong: Stub, right: tuple[str, Path], given: str
) -> None:
    """Precedence: --base-url, then BULKSEND_BASE_URL, then a [send].base_url changed since
    the journal's last run, then the base URL that run used."""
    url, ledger = right
    campaign = campaign_to(tmp_path, wrong.url)
    stopped_at_the_wrong_url(campaign, wrong)
    sent_wrong = wrong.requests
    argv, env = ["retry", str(journal_of(campaign)), "--progress", "never", "-q"], dict(ENV)
    if given == "file":
        correct(campaign, wrong.url, url)
    elif given == "variable":
        env["BULKSEND_BASE_URL"] = url
    elif given == "flag":
        argv += ["--base-url", url]
    elif given == "flag over file":
        correct(campaign, wrong.url, "http://127.0.0.1:9")
        argv += ["--base-url", url]
    result = run_cli(*argv, env=env)

    if given == "nothing":  # the recorded (wrong) base URL, as the send ran
        assert result.status == 4, result.stderr
        assert wrong.requests > sent_wrong
        assert ledger_ids(ledger) == {}
        return
    assert result.status == 0, result.stderr
    assert one_line(result.stderr, "resuming").startswith(
        f"bulksend: resuming with [send].base_url changed (was {wrong.url}, now {url}): "
    )
    assert wrong.requests == sent_wrong
    assert sorted(ledger_ids(ledger).values()) == [1] * N


def test_a_change_of_what_is_sent_still_blocks_the_resume(
    tmp_path: Path, wrong: Stub, right: tuple[str, Path]
) -> None:
    url, ledger = right
    campaign = campaign_to(tmp_path, wrong.url)
    stopped_at_the_wrong_url(campaign, wrong)
    correct(campaign, wrong.url, url)
    correct(campaign, "batch_size = 10", "batch_size = 20")
    again = run_cli("send", str(campaign), "--progress", "never", "-q", env=ENV)
    assert again.status == 2
    assert again.stderr.strip() == (
        f"bulksend: error: {journal_of(campaign)}: cannot resume: the batch size changed (was "
        "10, now 20) and the campaign file changed ([send].batch_size) since this journal was "
        "written; restore them, or add --fresh to start over (sending everything again)"
    )
    assert ledger_ids(ledger) == {}
