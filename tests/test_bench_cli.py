"""``bulksend bench`` end to end through the CLI, against a sandbox process."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from bulksend.commands import bench
from tests.conftest import run_cli
from tests.test_cli_ci import on_a_terminal

HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
needs_matplotlib = pytest.mark.skipif(not HAS_MATPLOTLIB, reason="matplotlib is not installed")


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.parse_args(argv)


def figures_of(path: Path) -> dict[str, Any]:
    figures: dict[str, Any] = orjson.loads(path.read_bytes())
    return figures


def test_bench_under_a_limit_headlines_rates_quota_and_cpu_per_request(tmp_path: Path) -> None:
    out = tmp_path / "b.json"
    r = run_cli(
        "bench", "--recipients", "3000", "--batch-size", "50", "--limit", "40/s",
        "--json", str(out),
    )  # fmt: skip
    assert r.status == 0, r.stderr
    figures = figures_of(out)
    assert figures["delivered"] == 3000
    assert figures["requests"] == 60
    assert figures["throttled_429"] == 0
    assert figures["limit"] == "40/s"
    assert 0.9 < figures["utilisation"] <= 1.0  # 60 requests at 40/s, evenly paced
    assert figures["latency_ms"]["p50"] > 0
    assert figures["peak_rss_mb"] > 0
    assert figures["client_cpu_s"] > 0
    assert figures["client_cpu_ms_per_request"] == pytest.approx(
        figures["client_cpu_s"] / 60 * 1000, abs=0.01
    )
    if sys.platform == "linux":  # read from /proc
        assert figures["sandbox_cpu_s"] > 0
        assert figures["sandbox_cpu_ms_per_request"] > 0
    lines = r.stdout.splitlines()
    assert lines[0].startswith("  throughput     ")
    assert " requests/s, " in lines[0]
    assert lines[0].endswith(" recipients/s")
    assert lines[1] == f"  quota used     {figures['utilisation']:.1%} of 40/s"
    assert lines[2].startswith("  CPU/request    client ")
    assert ", sandbox " in lines[2]
    assert "  delivered      3,000 of 3,000 recipients (failed 0)" in lines
    assert "  requests       60, up to 50 recipients each, 32 in flight" in lines
    assert lines[-1] == f"  figures: {out}"
    assert r.stderr == ""  # no info events: the table says what they would


def test_limit_is_read_as_send_reads_it() -> None:
    assert parse("--limit", "600/min").limit.per_second == 10.0
    assert parse("--limit", "100/15s").limit.window == 15.0
    r = run_cli("bench", "--limit", "40")
    assert r.status == 2
    assert r.stderr == (
        "bulksend bench: error: argument --limit: expected N/UNIT such as '50/s', '600/min' "
        "or '100/15s', got '40'\n"
    )


def test_the_default_run_sends_synthetic_recipients_for_five_seconds() -> None:
    assert bench.synthetic_size(parse()) == (None, 5.0)
    assert bench.synthetic_size(parse("--seconds", "2")) == (None, 2.0)
    assert bench.synthetic_size(parse("--recipients", "7")) == (7, None)
    # under a limit: what the limit lets through in that time, 2 s x 50/s x 10 per request
    assert (
        bench.synthetic_size(parse("--seconds", "2", "--limit", "50/s", "--batch-size", "10"))[0]
        == 1000
    )


def test_a_timed_run_lasts_about_its_seconds(tmp_path: Path) -> None:
    out = tmp_path / "b.json"
    r = run_cli("bench", "--seconds", "1.5", "--json", str(out))
    assert r.status == 0, r.stderr
    figures = figures_of(out)
    assert figures["seconds"] == 1.5
    assert 1.2 < figures["elapsed_s"] < 4.0  # the synthetic rows end at 1.5 s; the send soon after
    assert figures["delivered"] == figures["recipients"] > 0
    assert figures["requests"] == pytest.approx(figures["recipients"] / 1000, abs=1)


def test_file_is_relative_to_the_current_directory_with_its_columns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "people.csv").write_text(
        "visitor,user\n" + "".join(f"v{i:04d},u{i:04d}\n" for i in range(250))
    )
    monkeypatch.chdir(tmp_path)
    r = run_cli(
        "bench", "--file", "people.csv", "--id-column", "visitor", "--uid-column", "user",
        "--batch-size", "100", "--json", "b.json",
    )  # fmt: skip
    assert r.status == 0, r.stderr
    figures = figures_of(tmp_path / "b.json")
    assert (figures["delivered"], figures["requests"], figures["seconds"]) == (250, 3, None)
    # the earlier names still work, and an empty column name means none
    r = run_cli("bench", "--file", "people.csv", "--id", "visitor", "--uid", "", "-q")
    assert r.status == 0, r.stderr


def test_campaign_gives_the_file_and_how_to_read_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    there = tmp_path / "campaigns"
    there.mkdir()
    (there / "list.txt").write_text("who;account\n" + "".join(f"w{i};a{i}\n" for i in range(120)))
    (there / "c.toml").write_text(
        'provider = "maxtraffic"\n[message]\ncampaign = "x"\n'
        'messages = [{ title = "t", body = "b" }]\n'
        '[recipients]\npath = "list.txt"\nformat = "csv"\ndelimiter = ";"\n'
        'id = "who"\nuid = "account"\n'
    )
    monkeypatch.chdir(tmp_path)
    r = run_cli("bench", "--campaign", "campaigns/c.toml", "--batch-size", "50", "--json", "b.json")
    assert r.status == 0, r.stderr
    assert figures_of(tmp_path / "b.json")["delivered"] == 120
    # --file replaces its path (relative to here), keeping how the campaign reads it
    (tmp_path / "other.txt").write_text("who;account\nw1;a1\nw2;a2\n")
    r = run_cli(
        "bench", "--campaign", "campaigns/c.toml", "--file", "other.txt", "--json", "c.json"
    )
    assert r.status == 0, r.stderr
    assert figures_of(tmp_path / "c.json")["delivered"] == 2
    # no output may overwrite what the bench reads
    r = run_cli("bench", "--campaign", "campaigns/c.toml", "--json", "campaigns/list.txt")
    assert r.status == 2
    assert r.stderr == (
        "bulksend: error: --json campaigns/list.txt: is also the recipient file; "
        "give it a path of its own\n"
    )


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["--recipients", "5", "--seconds", "1"], "--recipients and --seconds: give one"),
        (["--file", "x.csv", "--recipients", "5"], "--recipients sets synthetic recipients and "),
        (["--campaign", "c.toml", "--duplicate-rate", "0.1"], "--duplicate-rate sets synthetic"),
        (["--file", "nowhere.csv"], "nowhere.csv: no such file (--file is relative to the"),
    ],
)
def test_contradictions_and_missing_files_are_one_line(
    argv: list[str], line: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.csv").write_text("id\n1\n")
    r = run_cli("bench", *argv)
    assert r.status == 2
    assert r.stderr.startswith(f"bulksend: error: {line}")
    assert r.stderr.count("\n") == 1


def test_plot_without_matplotlib_says_what_to_install_before_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib: ImportError

    def no_run(*args: object) -> None:
        raise AssertionError("the sandbox was started")

    monkeypatch.setattr(bench, "start_sandbox", no_run)
    r = run_cli("bench", "--plot", str(tmp_path / "b.png"))
    assert r.status == 2
    assert r.stderr == (
        "bulksend: error: --plot needs matplotlib, which is not installed here: "
        "pip install 'bulksend[plot]'\n"
    )
    assert not (tmp_path / "b.png").exists()


@needs_matplotlib
def test_plot_of_a_run_with_429_storms(tmp_path: Path) -> None:
    png = tmp_path / "b.png"
    r = run_cli(
        "bench", "--recipients", "1000", "--batch-size", "10", "--limit", "50/s",
        "--storm-every", "2", "--storm-for", "0.5", "--plot", str(png),
    )  # fmt: skip
    assert r.status == 0, r.stderr
    assert png.read_bytes().startswith(b"\x89PNG")
    assert r.stdout.endswith(f"  chart: {png}\n")
    assert "429 storm every 2 s for 0.5 s" in r.stdout


def test_progress_line_on_a_terminal_and_the_table_after_it() -> None:
    status, text, out = on_a_terminal(
        "bench", "--recipients", "2000", "--batch-size", "10", "--limit", "100/s"
    )
    assert status == 0
    assert text.count("\r\x1b[2K") >= 2  # redrawn in place
    assert "2,000/2,000 100.0%  delivered 2,000" in text
    assert "limit 100/s" in text
    assert "rate_limit_changed" not in text
    assert "send_finished" not in text
    assert out.decode().startswith("  throughput ")


def test_no_progress_line_off_a_terminal_and_info_events_with_v() -> None:
    r = run_cli("bench", "--recipients", "100", "--batch-size", "10", "-v")
    assert r.status == 0
    assert "\r" not in r.stderr
    assert '"event":"send_finished"' in r.stderr


def test_the_table_names_the_profile_and_leaves_out_what_was_not_measured() -> None:
    args = parse("--latency-ms", "20", "--fail-rate", "0.05", "--storm-every", "30",
                 "--storm-for", "2", "--no-ratelimit-headers")  # fmt: skip
    figures = {
        "recipients": 1000, "delivered": 990, "failed": 10, "elapsed_s": 2.5,
        "recipients_per_s": 396.0, "requests_per_s": 4.4, "requests": 11, "batch_size": 100,
        "in_flight": 32, "latency_ms": {"p50": 21.0, "p95": 24.5, "p99": 30.25},
        "utilisation": None, "limit": None, "throttled_429": 3, "retries": 4,
        "client_cpu_s": 0.5, "sandbox_cpu_s": None, "peak_rss_mb": 1234.5,
        "client_cpu_ms_per_request": 45.455, "sandbox_cpu_ms_per_request": None,
    }  # fmt: skip
    lines = bench.render(figures, args).splitlines()
    assert lines == [
        "  throughput     4 requests/s, 396 recipients/s",
        "  quota used     no limit (give --limit N/UNIT to measure how much of one is used)",
        "  CPU/request    client 45.455 ms",
        "  sandbox        MaxTraffic in a separate process: latency 20 ms, fail rate 0.05, "
        "429 storm every 30 s for 2 s, no rate-limit headers",
        "  delivered      990 of 1,000 recipients (failed 10)",
        "  requests       11, up to 100 recipients each, 32 in flight",
        "  elapsed        2.500 s",
        "  latency        p50 21.00 ms, p95 24.50 ms, p99 30.25 ms",
        "  429s, retries  3, 4",
        "  CPU time       client 0.500 s",
        "  peak RSS       1,234.5 MB (client)",
    ]


def test_utilisation_is_the_pace_between_the_first_and_the_last_request() -> None:
    # 5 requests exactly at a 10/s limit span 0.4 s: 100 %, not 5 / 0.4 s = 125 %
    assert bench.utilisation([0.0, 0.1, 0.2, 0.3, 0.4], 10.0) == pytest.approx(1.0)
    assert bench.utilisation([0.4, 0.0, 0.2, 0.1, 0.3], 10.0) == pytest.approx(1.0)  # any order
    assert bench.utilisation([0.0, 0.2, 0.4], 10.0) == pytest.approx(0.5)
    assert bench.utilisation([0.0, 0.1], 0.0) is None  # no limit
    assert bench.utilisation([0.3], 10.0) is None  # one request has no pace
    assert bench.utilisation([0.3, 0.3], 10.0) is None


def test_a_path_with_quotes_and_backslashes_reaches_the_campaign_intact(tmp_path: Path) -> None:
    import tomllib

    from bulksend.config import RecipientSettings

    weird = 'a "quoted" \\ path\tand\x7f.csv'
    load = bench.Load(RecipientSettings(path=weird, id_column="id", uid_column=None), None)
    text = bench.campaign_text(load, parse())
    assert tomllib.loads(text)["recipients"] == {
        "path": weird, "format": "auto", "encoding": "utf-8", "id": "id", "uid": "",
    }  # fmt: skip
