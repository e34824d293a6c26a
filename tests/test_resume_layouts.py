"""A campaign sent in one shard layout is never sent again, unasked, in another (issue 14).

Each layout keeps its own default journals (``.bulksend/campaign.journal`` without ``--shard``,
``campaign.shard-I-of-N.journal`` with it), so before this a send in another layout resumed
nothing and delivered everything again (four ``--shard I/4`` sends, then one without
``--shard``: every recipient twice, exit 0). End to end through the CLI against a sandbox
process whose ledger records every id that arrived.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import KEY, run_cli, write_campaign, write_recipients
from tests.test_resume_cli import ENV, journal_of, ledger_ids, one_line, sandbox, summary_of

N = 240
BATCH = 10
ROWS = [(f"v{i:04d}", f"u{i:04d}") for i in range(N)]


@pytest.fixture
def steady(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    ledger = tmp_path / "ledger.jsonl"
    with sandbox(ledger) as sb:
        yield sb.base_url, ledger


@pytest.fixture
def campaign(tmp_path: Path) -> Path:
    recipients = write_recipients(tmp_path / "r.csv", ROWS)
    return write_campaign(tmp_path, recipients, batch_size=BATCH, in_flight=4)


def send(campaign: Path, url: str, *flags: str, key: str = KEY) -> tuple[int, str]:
    args = ["send", str(campaign), "--base-url", url, "--progress", "never", "-q", *flags]
    result = run_cli(*args, env={"MAXTRAFFIC_API_KEY": key})
    return result.status, result.stderr


def error(stderr: str) -> str:
    (line,) = [x for x in stderr.splitlines() if not x.startswith("{")]
    return line


def test_a_campaign_sent_as_shards_is_not_sent_again_without_them_unless_asked(
    campaign: Path, steady: tuple[str, Path], tmp_path: Path
) -> None:
    url, ledger = steady
    for i in range(4):
        status, stderr = send(campaign, url, "--shard", f"{i}/4")
        assert status == 0, stderr
    assert sorted(ledger_ids(ledger).values()) == [1] * N
    journals = tmp_path / ".bulksend"
    sharded = f"as 4 shards ({journals}/campaign.shard-*-of-4.journal)"

    status, stderr = send(campaign, url)  # the repro: delivered all 240 again, exit 0
    assert status == 2
    assert error(stderr) == (
        f"bulksend: error: {campaign}: this campaign was already sent {sharded}; a send "
        "without --shard would send again what that send delivered. To resume it, run the "
        "same --shard I/4 commands; to send everything again, add --fresh (the journals found "
        "are then moved aside, not deleted)"
    )
    status, stderr = send(campaign, url, "--shard", "0/3")  # re-sent a third of them
    assert status == 2
    assert error(stderr) == (
        f"bulksend: error: {campaign}: this campaign was already sent {sharded}; --shard 0/3 "
        "would send again what that send delivered. To resume it, run the same --shard I/4 "
        "commands; to send everything again, add --fresh to every --shard I/3 command (the "
        "journals found are then moved aside, not deleted)"
    )
    assert send(campaign, url, "--resume")[0] == 2
    assert sorted(ledger_ids(ledger).values()) == [1] * N  # nothing went out

    status, stderr = send(campaign, url, "--shard", "2/4")
    assert status == 0, stderr  # the same layout resumes, as before
    assert one_line(stderr, "resuming").startswith("bulksend: resuming: 6 of 6 batches settled")

    # --fresh sends everything again, as asked, and says where the shards' journals went
    summary = tmp_path / "fresh.json"
    status, stderr = send(campaign, url, "--fresh", "--summary-json", str(summary))
    assert status == 0, stderr
    (moved_to,) = journals.glob("superseded-*")
    assert one_line(stderr, "--fresh") == (
        f"bulksend: --fresh: the send of this campaign {sharded} is not resumed: its 4 "
        f"journals (and their dead-letter files) moved to {moved_to}/, not deleted"
    )
    assert sorted(p.name for p in moved_to.glob("*.journal")) == [
        f"campaign.shard-{i}-of-4.journal" for i in range(4)
    ]
    assert sorted(p.name for p in journals.glob("*.journal")) == ["campaign.journal"]
    assert summary_of(summary)["delivered"] == N
    assert sorted(ledger_ids(ledger).values()) == [2] * N

    # the unsharded journal now guards the campaign the same way
    status, stderr = send(campaign, url, "--shard", "1/4")
    assert status == 2
    assert error(stderr).startswith(
        f"bulksend: error: {campaign}: this campaign was already sent without --shard "
        f"({journal_of(campaign)}); --shard 1/4 would send again what that send delivered. To "
        "resume it, run the send again without --shard; to send everything again, add --fresh "
        "to every --shard I/4 command"
    )
    status, stderr = send(campaign, url)
    assert status == 0, stderr
    assert one_line(stderr, "resuming").startswith("bulksend: resuming: 24 of 24 batches")
    assert sorted(ledger_ids(ledger).values()) == [2] * N


def test_journals_of_another_layout_from_before_the_check_block_a_retry(
    campaign: Path, steady: tuple[str, Path], tmp_path: Path
) -> None:
    """What the repro left (a bulksend without this check wrote both): a retry of the
    unsharded journal is refused too."""
    url, ledger = steady
    for i in range(2):
        assert send(campaign, url, "--shard", f"{i}/2")[0] == 0
    journals = tmp_path / ".bulksend"
    assert send(campaign, url, "--fresh")[0] == 0
    (moved_to,) = journals.glob("superseded-*")
    for journal in moved_to.glob("*.journal"):
        shutil.copy(journal, journals / journal.name)
    result = run_cli("retry", str(journal_of(campaign)), env=ENV)
    assert result.status == 2
    assert error(result.stderr) == (
        f"bulksend: error: {campaign}: this campaign was already sent as 2 shards "
        f"({journals}/campaign.shard-*-of-2.journal); this retry would send again what that "
        "send delivered. To resume it, run the same --shard I/2 commands; `bulksend send "
        f"{campaign} --fresh` sends everything again (the journals found are then moved "
        "aside, not deleted)"
    )
    assert sorted(ledger_ids(ledger).values()) == [2] * N


def test_a_layout_whose_journals_kept_nothing_does_not_block(
    campaign: Path, steady: tuple[str, Path]
) -> None:
    """Shards stopped at once by a wrong key (exit 3: the provider kept nothing) do not stop
    the corrected send without shards."""
    url, ledger = steady
    for i in range(4):
        assert send(campaign, url, "--shard", f"{i}/4", key="wrong")[0] == 3
    assert ledger_ids(ledger) == {}
    status, stderr = send(campaign, url)
    assert status == 0, stderr
    assert sorted(ledger_ids(ledger).values()) == [1] * N
