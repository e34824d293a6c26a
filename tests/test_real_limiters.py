"""bulksend against real rate limiters nobody on this project wrote (see tests/peers/).

Each test runs a real ``bulksend send`` (a child process, as a user would) against a limiter on
loopback and checks, from the limiter's own log, what the scheduler promises:

* after convergence the accepted requests reach >= 0.90 of the limiter's true rate (measured
  from 5 s after the first request to the last acceptance: ``peers.measure.SETTLE``);
* refusals (429 or 503) are <= 5 % of all requests over the whole send;
* no recipient is lost: exit status 0, the summary counts every recipient delivered, and the
  limiter accepted each batch exactly once;
* a user-stated ``--limit`` is never exceeded, whatever the headers allow.

What bulksend is told: nothing but the campaign, as a new user would run it -- MaxTraffic's
documented 600 per minute is the starting guess, so the rate must come from the limiter:
Flask-Limiter's headers (a count, but no window: it is inferred) or, behind nginx (no rate
headers at all), refusals.
Each send is sized to last about ``SECONDS`` at the true rate, 10 recipients a request; a send
still running after ``TIMEOUT`` is interrupted (SIGTERM) and fails the test with its figures.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import KEY, ROOT, write_campaign, write_recipients
from tests.peers import flask_limited, nginx
from tests.peers.flask_limited import FlaskLimited
from tests.peers.measure import (
    Answer,
    Figures,
    measure,
    most_in_any_span,
    read_jsonl_log,
    read_nginx_log,
)
from tests.peers.nginx import Limit, gateway, render_conf
from tests.peers.process import stop

MIN_UTILISATION = 0.90
MAX_REFUSALS = 0.05
BATCH = 10
SECONDS = 14.0
TIMEOUT = 40.0  # a send at half the true rate still ends by itself


@dataclass(frozen=True, slots=True)
class Sent:
    status: int | None
    summary: dict[str, Any]
    elapsed: float
    stderr: str


@pytest.fixture(scope="module")
def flask_limiter() -> None:
    if not flask_limited.available():
        pytest.skip(flask_limited.UNAVAILABLE)


@pytest.fixture(scope="module")
def nginx_binary() -> str:
    binary = nginx.nginx_binary()
    if binary is None:
        pytest.skip(nginx.UNAVAILABLE)
    return binary


def recipients_for(rate: float) -> int:
    """Recipients that take about ``SECONDS`` at ``rate`` requests/s, ``BATCH`` a request."""
    return int(rate * SECONDS) * BATCH


def flask_peer(tmp_path: Path, limit: str, strategy: str) -> FlaskLimited:
    return FlaskLimited(tmp_path, limit=limit, strategy=strategy, api_key=KEY)


def send(tmp_path: Path, base_url: str, n: int, *flags: str) -> Sent:
    """``bulksend send`` of ``n`` recipients to ``base_url`` in a child process."""
    rows = [(f"v{i:06d}", f"u{i:06d}") for i in range(n)]
    recipients = write_recipients(tmp_path / "r.csv", rows)
    campaign = write_campaign(tmp_path, recipients, batch_size=BATCH)
    summary = tmp_path / "summary.json"
    argv = [
        sys.executable, "-m", "bulksend", "send", str(campaign), "--base-url", base_url,
        "--no-journal", "--summary-json", str(summary), "--progress", "never",
        "--log-format", "json", *flags,
    ]  # fmt: skip
    env = {**os.environ, "MAXTRAFFIC_API_KEY": KEY}
    errors = tmp_path / "send.stderr"
    started = time.monotonic()
    with errors.open("wb") as err:
        process = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=err,
        )  # fmt: skip
        try:
            process.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            pass
        finally:
            status = stop(process, timeout=40.0)  # SIGTERM: bulksend finishes what is in flight
    elapsed = time.monotonic() - started
    data = orjson.loads(summary.read_bytes()) if summary.exists() else {}
    return Sent(status, data, elapsed, errors.read_text(errors="replace")[-3000:])


def broken_promises(sent: Sent, figures: Figures, n: int) -> list[str]:
    """What the scheduler promised and this send did not do."""
    problems = []
    if sent.status != 0:
        problems.append(f"exit status {sent.status} (stderr ends: {sent.stderr[-600:]!r})")
    if sent.summary.get("delivered") != n:
        problems.append(f"delivered {sent.summary.get('delivered')} of {n}")
    if figures.utilisation < MIN_UTILISATION:
        problems.append(f"utilisation {figures.utilisation:.3f} < {MIN_UTILISATION}")
    if figures.refusal_share > MAX_REFUSALS:
        problems.append(f"refusals {figures.refusal_share:.1%} > {MAX_REFUSALS:.0%}")
    return problems


def accepted_once(answers: list[Answer], n: int, *, counted: bool) -> list[str]:
    """The limiter accepted every batch once: ``n`` recipients (when the peer counts them),
    else ``n / BATCH`` requests."""
    ok = [a for a in answers if 200 <= a.status < 300]
    if counted and sum(a.recipients for a in ok) != n:
        return [f"the limiter accepted {sum(a.recipients for a in ok)} recipients, not {n}"]
    if not counted and len(ok) != n // BATCH:
        return [f"the limiter accepted {len(ok)} requests, not {n // BATCH}"]
    return []


def verdict(name: str, sent: Sent, figures: Figures, problems: list[str]) -> None:
    """Print the figures (shown with -s or on failure) and fail on any broken promise."""
    line = f"{name}: {figures.describe()}, send took {sent.elapsed:.1f} s, exit {sent.status}"
    print(f"\nREAL LIMITER {line}")
    assert not problems, line + "\n  " + "\n  ".join(problems)


@pytest.mark.usefixtures("flask_limiter")
@pytest.mark.parametrize("strategy", ["fixed-window", "moving-window"])
def test_flask_limiter_is_used_without_refusals(tmp_path: Path, strategy: str) -> None:
    rate = 50
    n = recipients_for(rate)
    peer = flask_peer(tmp_path, f"{rate} per second", strategy)
    with peer:
        sent = send(tmp_path, peer.base_url, n)
    answers = peer.answers()
    figures = measure(answers, rate)
    problems = broken_promises(sent, figures, n) + accepted_once(answers, n, counted=True)
    verdict(f"flask-limiter {rate}/s {strategy}", sent, figures, problems)


NGINX = {
    "20r/s-no-burst-429": Limit(rate=20, status=429),
    "20r/s-no-burst-503": Limit(rate=20, status=None),
    "20r/s-burst-5-nodelay-429": Limit(rate=20, burst=5, nodelay=True, status=429),
}


@pytest.mark.parametrize("case", list(NGINX))
def test_nginx_limit_req_is_found_and_used(tmp_path: Path, nginx_binary: str, case: str) -> None:
    limit = NGINX[case]
    n = recipients_for(limit.rate)
    with gateway(tmp_path / "nginx", limit, api_key=KEY, binary=nginx_binary) as gw:
        sent = send(tmp_path, gw.base_url, n)
    answers = gw.answers()
    figures = measure(answers, limit.rate)
    problems = broken_promises(sent, figures, n) + accepted_once(answers, n, counted=False)
    verdict(f"nginx limit_req {case}", sent, figures, problems)


@pytest.mark.usefixtures("flask_limiter")
def test_a_stated_limit_is_never_exceeded_whatever_the_headers_allow(tmp_path: Path) -> None:
    stated, allowed = 20, 100
    n = recipients_for(stated)
    peer = flask_peer(tmp_path, f"{allowed} per second", "fixed-window")
    with peer:
        sent = send(tmp_path, peer.base_url, n, "--limit", f"{stated}/1s")
    answers = peer.answers()
    figures = measure(answers, stated)
    busiest = most_in_any_span((a.t for a in answers), 1.0)
    problems = [] if busiest <= stated else [f"{busiest} requests within 1 s (stated {stated})"]
    if sent.status != 0 or sent.summary.get("delivered") != n:
        problems.append(f"exit {sent.status}, delivered {sent.summary.get('delivered')} of {n}")
    problems += accepted_once(answers, n, counted=True)
    name = f"--limit {stated}/1s vs flask-limiter {allowed}/s (busiest 1 s: {busiest})"
    verdict(name, sent, figures, problems)


# ---- the peers and the measuring code themselves (fast) ----------------------------------


def test_measure_counts_after_the_settling_time_and_refusals_over_the_whole_send() -> None:
    slow = [Answer(i * 0.2, 200) for i in range(25)]  # 5 s at 5/s, then 10 s at 10/s
    fast = [Answer(5.0 + i * 0.1, 200 if i % 10 else 429) for i in range(101)]
    figures = measure(slow + fast, rate=10.0)
    assert figures.requests == 126
    assert figures.refused == 11
    assert figures.refusal_share == pytest.approx(11 / 126)
    assert figures.span == pytest.approx(9.9)  # from 5 s after the first to the last 200
    # 200s in [5.0, 14.9): 98 sends after the 429 at 5.0, less the 9 refused ones among them
    assert figures.utilisation == pytest.approx(89 / 99)
    assert most_in_any_span([0.0, 0.5, 0.999, 1.0, 1.5], 1.0) == 3


def test_logs_are_read_in_time_order(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text(
        '{"t": 2.5, "wall": 1.0, "status": 429, "n": 0}\n{"t": 1.5, "status": 200, "n": 10}\n'
    )
    (tmp_path / "access.log").write_text("1796640001.250 503\n1796640000.125 200\n")
    assert read_jsonl_log(tmp_path / "a.jsonl") == [Answer(1.5, 200, 10), Answer(2.5, 429)]
    assert read_nginx_log(tmp_path / "access.log") == [
        Answer(1796640000.125, 200),
        Answer(1796640001.25, 503),
    ]


def test_the_nginx_config_is_accepted_by_nginx(tmp_path: Path, nginx_binary: str) -> None:
    for limit in NGINX.values():
        conf = tmp_path / "nginx.conf"
        conf.write_text(render_conf(tmp_path, 8080, "127.0.0.1:9", limit))
        argv = [nginx_binary, "-t", "-q", "-c", str(conf), "-p", f"{tmp_path}/"]
        checked = subprocess.run(
            [*argv, "-e", str(tmp_path / "error.log")], capture_output=True, text=True, check=False
        )
        assert checked.returncode == 0, checked.stderr


def post(url: str, key: str) -> tuple[int, dict[str, str]]:
    body = b'{"messages": [{"title": "t"}], "to_ids": ["v1"], "to_uids": ["u1"]}'
    headers = {"Authorization": f"key={key}", "Content-Type": "application/json"}
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers)
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers)


@pytest.mark.usefixtures("flask_limiter")
def test_the_flask_limiter_peer_answers_as_flask_limiter_does(tmp_path: Path) -> None:
    with flask_peer(tmp_path, "2 per minute", "fixed-window") as peer:
        url = peer.base_url + flask_limited.ENDPOINT
        answers = [post(url, KEY), post(url, "wrong"), post(url, KEY)]
        wall = time.time()
    (ok, first), (unauthorised, _), (refused, last) = answers
    assert (ok, unauthorised, refused) == (200, 401, 429)
    assert first["Content-Type"] == "application/json"
    assert (first["X-RateLimit-Limit"], first["X-RateLimit-Remaining"]) == ("2", "1")
    assert last["X-RateLimit-Remaining"] == "0"
    assert "Retry-After" in first  # on every answer, a 200 too
    assert wall < int(last["X-RateLimit-Reset"]) <= wall + 62  # an epoch in whole seconds
    assert [a.status for a in peer.answers()] == [200, 401, 429]
    assert [a.recipients for a in peer.answers()] == [1, 0, 0]
