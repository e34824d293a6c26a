"""Sharded sends deliver what an unsharded send delivers, never an identifier twice (issue 14).

A uid shared by rows with different ids used to go out once per shard that held such a row.
Four ``send --shard I/4`` runs against one sandbox process, whose ledger records every id and
uid that arrived, are compared with one unsharded send of the same file; ``report merge``
accepts their reports and refuses reports that overlap.
"""

from __future__ import annotations

import csv
import random
import secrets
from collections import Counter
from pathlib import Path

import orjson

from bulksend.output.report import COLUMNS
from bulksend.sandbox.ledger import read_ledger
from bulksend.sandbox.testing import SandboxProcess
from tests.conftest import run_cli, write_campaign


def dataset(seed: int = 14) -> list[tuple[str, str]]:
    """Persons (v, u), then rows that reuse a uid under a new id, an id with a new uid, exact
    copies, rows with only one identifier, rows without a value and a bad row."""
    rnd = random.Random(seed)
    people = [(f"v{i:05d}", f"u{i:05d}") for i in range(1_500)]
    rows = list(people)
    for i in range(600):
        v, u = rnd.choice(people)
        rows.append(rnd.choice([(f"w{i:05d}", u), (v, f"x{i:05d}"), (v, u), ("", u), (v, "")]))
    rnd.shuffle(rows)
    rows[10:10] = [("", ""), ("bad\x01", "u00001")]
    return rows


def outcomes(report: Path) -> list[tuple[int, str, str, str, str]]:
    with report.open(newline="") as f:
        return [
            (int(r["line"]), r["id"], r["uid"], r["status"], r["reason"]) for r in csv.DictReader(f)
        ]


def test_four_shards_deliver_exactly_what_one_send_delivers(tmp_path: Path) -> None:
    rows = dataset()
    recipients = tmp_path / "r.csv"
    recipients.write_text("vid,uid\n" + "".join(f"{a},{b}\n" for a, b in rows))
    campaign = write_campaign(tmp_path, recipients, batch_size=50, in_flight=4)

    key = "mt-" + secrets.token_hex(8)
    fast = ("--limit", "1000/1s")  # the sandboxes' quota, so that nobody paces at 600/min

    def sandbox(ledger: Path) -> SandboxProcess:
        return SandboxProcess(
            "maxtraffic", "--api-key", key, "--ledger", str(ledger), "--limit", "1000",
            "--window", "1",
        )  # fmt: skip

    def send(base_url: str, name: str, *extra: str) -> None:
        result = run_cli(
            "send", str(campaign), "--base-url", base_url, *fast, *extra, "--no-journal",
            "--report", str(tmp_path / f"{name}.csv"), "--summary-json",
            str(tmp_path / f"{name}.json"), "-q", "--progress", "never",
            env={"MAXTRAFFIC_API_KEY": key},
        )  # fmt: skip
        assert result.status == 0, result.stderr

    with sandbox(tmp_path / "one-ledger.jsonl") as unsharded:
        send(unsharded.base_url, "one")
    expected = outcomes(tmp_path / "one.csv")
    # the file has what broke sharding: a uid that arrives again under another id
    statuses = Counter(status for *_, status, _ in expected)
    assert statuses["delivered"] > 1_500
    assert statuses["duplicate"] > 0
    assert statuses["invalid"] == 2

    ledger = tmp_path / "ledger.jsonl"
    with sandbox(ledger) as shared:
        for i in range(4):
            send(shared.base_url, f"s{i}", "--shard", f"{i}/4")

    entries = read_ledger(ledger)
    for kind in ("id", "uid"):
        arrived = Counter(e["value"] for e in entries if e["kind"] == kind)
        assert max(arrived.values()) == 1, arrived.most_common(3)
    union = sorted(o for i in range(4) for o in outcomes(tmp_path / f"s{i}.csv"))
    assert union == sorted(expected)
    per_shard = [len(outcomes(tmp_path / f"s{i}.csv")) for i in range(4)]
    assert max(per_shard) - min(per_shard) <= 1

    parts = [str(tmp_path / f"s{i}.{ext}") for ext in ("json", "csv") for i in range(4)]
    total = tmp_path / "total.json"
    merged = run_cli("report", "merge", *parts, "--summary-json", str(total), "-q")
    assert merged.status == 0, merged.stderr
    data = orjson.loads(total.read_bytes())
    assert data["read"] == len(rows)
    assert data["delivered"] == statuses["delivered"]
    assert data["duplicates"] == statuses["duplicate"]
    assert data["dedup_keys"] == ["id", "uid"]


def report(path: Path, rows: list[tuple[int, str, str, str]]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for line, vid, uid, status in rows:
            w.writerow([line, vid, uid, status, "", 200 if status == "delivered" else "", 1, 1])
    return path


def test_merge_fails_on_a_uid_two_shards_delivered(tmp_path: Path) -> None:
    a = report(tmp_path / "a.csv", [(2, "v1", "u1", "delivered"), (4, "v3", "u3", "delivered")])
    b = report(
        tmp_path / "b.csv",
        [(3, "v2", "u1", "delivered"), (5, "v4", "u3", "failed"), (6, "v5", "", "delivered")],
    )
    result = run_cli("report", "merge", str(a), str(b), "-q")
    assert result.status == 1
    assert result.stderr == (
        f"bulksend: uid 'u1' was delivered twice: {a} (line 2) and {b} (line 3); shards must "
        "not overlap (docs/scaling.md)\n"
    )
    # a row not delivered does not count, and neither does an empty identifier
    c = report(tmp_path / "c.csv", [(3, "v2", "", "delivered"), (5, "v4", "u3", "duplicate")])
    assert run_cli("report", "merge", str(a), str(c), "-q").status == 0


def test_merge_checks_only_the_keys_the_provider_deduplicates_on(tmp_path: Path) -> None:
    """NotifyVisitors events dedup on the uid: one id (the user) has many events."""
    a = report(tmp_path / "a.csv", [(2, "user1", "e1", "delivered")])
    b = report(tmp_path / "b.csv", [(3, "user1", "e2", "delivered")])
    summaries = []
    for name, rows in (("a", 1), ("b", 1)):
        path = tmp_path / f"{name}.json"
        path.write_bytes(orjson.dumps({"read": rows, "delivered": rows, "dedup_keys": ["uid"]}))
        summaries.append(str(path))
    assert run_cli("report", "merge", *summaries, str(a), str(b), "-q").status == 0
    alone = run_cli("report", "merge", str(a), str(b), "-q")  # no summary: both keys checked
    assert alone.status == 1
    assert alone.stderr.startswith("bulksend: id 'user1' was delivered twice")


def test_merge_counts_every_overlap_in_big_reports(tmp_path: Path) -> None:
    a = report(tmp_path / "a.csv", [(i, f"v{i}", f"u{i}", "delivered") for i in range(10_000)])
    b = report(
        tmp_path / "b.csv",
        [(20_000 + i, f"w{i}", f"u{i * 7}", "delivered") for i in range(5_000)],
    )
    result = run_cli("report", "merge", str(a), str(b), "-q")
    assert result.status == 1
    assert result.stderr.count("\n") == 1
    assert f"uid 'u0' was delivered twice: {a} (line 0) and {b} (line 20000)" in result.stderr
    assert "1,429 deliveries of an id or uid delivered before, in all" in result.stderr
