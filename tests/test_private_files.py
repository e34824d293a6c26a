"""Every file bulksend writes that lists people is owner-only (issue 19).

Files it creates are 0600 and the directories it creates for them 0700, whatever the umask
(here the usual 022, which would give 0644 and 0755); a file that exists keeps its mode.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest

from bulksend.output.private import create, make_dirs, open_private, replacing, write_private
from bulksend.providers.traitly_webhooks import PROPENSITY, ReceiverConfig, serving
from bulksend.sandbox.testing import SandboxProcess
from bulksend.state.journal import Journal
from tests.conftest import KEY, ROOT, run_cli

CAMPAIGN = ROOT / "samples/maxtraffic/campaign.toml"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(autouse=True)
def _umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.fixture(scope="module")
def flaky_sandbox() -> Iterator[SandboxProcess]:
    """A MaxTraffic sandbox that answers a third of the requests 500/503: some rows fail."""
    with SandboxProcess("maxtraffic", "--api-key", KEY, "--fail-rate", "0.3") as process:
        yield process


# ---------------------------------------------------------------------------- the helper


def test_created_files_are_0600_and_created_directories_0700(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()  # exists: untouched (0755 here)
    target = tmp_path / "a" / "b" / "c" / "f.txt"
    with open_private(target) as f:
        f.write("x")
    assert mode(target) == 0o600
    assert mode(tmp_path / "a") == 0o755
    assert mode(tmp_path / "a" / "b") == mode(tmp_path / "a" / "b" / "c") == 0o700
    write_private(tmp_path / "d" / "g.bin", b"y")
    assert (mode(tmp_path / "d"), mode(tmp_path / "d" / "g.bin")) == (0o700, 0o600)
    create(tmp_path / "h.db")
    assert mode(tmp_path / "h.db") == 0o600
    make_dirs(tmp_path / "a" / "b")  # exists: nothing to do
    assert mode(tmp_path / "a" / "b") == 0o700


@pytest.mark.parametrize("existing", [0o644, 0o640, 0o400 | 0o200])
def test_an_existing_file_keeps_its_mode(tmp_path: Path, existing: int) -> None:
    path = tmp_path / "r.csv"
    path.write_text("old\n")
    path.chmod(existing)
    with open_private(path, "w") as f:
        f.write("new\n")
    assert (mode(path), path.read_text()) == (existing, "new\n")
    with open_private(path, "a") as f:
        f.write("more\n")
    assert (mode(path), path.read_text()) == (existing, "new\nmore\n")
    create(path)
    assert (mode(path), path.read_text()) == (existing, "new\nmore\n")
    with replacing(path) as f:
        f.write("replaced\n")
    assert (mode(path), path.read_text()) == (existing, "replaced\n")


def test_a_replacement_of_nothing_is_0600_and_a_failed_one_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "new" / "leads.csv"
    with replacing(path) as f:
        f.write("a\n")
    assert (mode(path), mode(path.parent)) == (0o600, 0o700)

    def half_written() -> None:
        with replacing(path) as f:
            f.write("half")
            raise RuntimeError

    with pytest.raises(RuntimeError):
        half_written()
    assert path.read_text() == "a\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["leads.csv"]


def test_the_journal_and_its_wal_and_shm_are_owner_only(tmp_path: Path) -> None:
    from bulksend.state.journal import Identity

    path = tmp_path / "state" / "c.journal"
    identity = Identity("campaign", "recipients", "plan")
    book = Journal.open(path, identity)
    try:
        sides = [Path(f"{path}{s}") for s in ("-wal", "-shm")]
        assert all(p.exists() for p in sides)  # WAL mode: both exist while it is open
        assert [mode(p) for p in (path, *sides)] == [0o600] * 3
        assert mode(path.parent) == 0o700
    finally:
        book.close()


# ---------------------------------------------------------------------------- through the CLI


def test_a_send_with_every_output_writes_owner_only_files(
    flaky_sandbox: SandboxProcess, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    paths = {
        "report": out / "reports" / "r.csv",
        "summary": out / "summaries" / "s.json",
        "journal": out / "state" / "c.journal",
        "dead": out / "dead" / "d.jsonl",
        "step": out / "ci" / "step.md",
    }
    sent = run_cli(
        "send", str(CAMPAIGN), "--base-url", flaky_sandbox.base_url,
        "--report", str(paths["report"]), "--summary-json", str(paths["summary"]),
        "--journal", str(paths["journal"]), "--dead-letter", str(paths["dead"]),
        "--max-attempts", "1", "-q", "--progress", "never",
        env={"MAXTRAFFIC_API_KEY": KEY, "GITHUB_STEP_SUMMARY": str(paths["step"])},
    )  # fmt: skip
    assert sent.status == 1, sent.stderr  # some failed: the dead letters are written
    summary = orjson.loads(paths["summary"].read_bytes())
    assert summary["delivered"]
    assert summary["failed"] + summary["skipped"]
    for name, path in paths.items():
        assert mode(path) == 0o600, name
        assert mode(path.parent) == 0o700, name
    for side in (Path(f"{paths['journal']}{s}") for s in ("-wal", "-shm")):
        assert not side.exists() or mode(side) == 0o600
    assert mode(out) == 0o700


def test_existing_outputs_keep_their_mode(flaky_sandbox: SandboxProcess, tmp_path: Path) -> None:
    report, journal = tmp_path / "r.jsonl", tmp_path / "c.journal"
    report.write_text("")
    report.chmod(0o644)
    sent = run_cli(
        "send", str(CAMPAIGN), "--base-url", flaky_sandbox.base_url, "--report", str(report),
        "--journal", str(journal), "-q", "--progress", "never",
        env={"MAXTRAFFIC_API_KEY": KEY},
    )  # fmt: skip
    assert sent.status in (0, 1), sent.stderr
    assert (mode(report), mode(journal)) == (0o644, 0o600)


def test_dry_run_validate_merge_and_leads_outputs_are_owner_only(
    flaky_sandbox: SandboxProcess, tmp_path: Path
) -> None:
    requests = tmp_path / "dry" / "requests.jsonl"
    dry = run_cli("send", str(CAMPAIGN), "--dry-run", "--requests-out", str(requests), "-q")
    assert dry.status == 0, dry.stderr
    plan = tmp_path / "plan" / "plan.json"
    checked = run_cli("validate", str(CAMPAIGN), "--json", str(plan), "-q")
    assert checked.status == 0, checked.stderr
    shard = tmp_path / "shard"
    sent = run_cli(
        "send", str(CAMPAIGN), "--sandbox", "--report", str(shard / "r.csv"),
        "--summary-json", str(shard / "s.json"), "-q", "--progress", "never",
    )  # fmt: skip
    assert sent.status == 0, sent.stderr
    merged = tmp_path / "merged"
    joined = run_cli(
        "report", "merge", str(shard / "s.json"), str(shard / "r.csv"),
        "--report", str(merged / "all.csv"), "--summary-json", str(merged / "total.json"), "-q",
    )  # fmt: skip
    assert joined.status == 0, joined.stderr
    leads = tmp_path / "leads" / "all.csv"
    exported = run_cli(
        "leads", "--base-url", flaky_sandbox.base_url, "--from", "2000-01-01",
        "--to", "2100-01-01", "--out", str(leads), "-q",
        env={"MAXTRAFFIC_API_KEY": KEY},
    )  # fmt: skip
    assert exported.status == 0, exported.stderr
    for path in (requests, plan, merged / "all.csv", merged / "total.json", leads):
        assert (mode(path), mode(path.parent)) == (0o600, 0o700), path


async def test_the_webhook_audience_file_is_owner_only(tmp_path: Path) -> None:
    out = tmp_path / "hooks" / "audience.jsonl"
    payload = {
        "object": PROPENSITY,
        "meta": {"customer_id": "c1", "goal_name": "g"},
        "data": [{"likelihood": 0.9}],
    }
    async with (
        serving(ReceiverConfig(out)) as receiver,
        aiohttp.ClientSession() as session,
        session.post(receiver.base_url + "/", json=payload) as resp,
    ):
        assert resp.status == 200
    assert (mode(out), mode(out.parent)) == (0o600, 0o700)
