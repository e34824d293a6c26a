"""Planner and workers with secrets (issue 17): a relative ``[auth] api_key_file`` in a worker
started elsewhere. Real ``redis-server``, sandbox and bulksend processes.

In every case no secret is in Redis, in any output of any process (stdout, stderr) or in any
file the send wrote (report, summary, dead letters).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

pytest.importorskip("redis", reason="REDIS CLIENT MISSING: pip install 'bulksend[redis]'")

import redis

from bulksend.config import load_settings
from bulksend.distributed.testing import RedisServer
from bulksend.errors import ConfigError
from bulksend.sandbox.testing import wait_until
from bulksend.workers.shipped import candidates, missing_file, shipped_text
from bulksend.workers.worker import settings_of
from tests.test_workers_redis import Campaign, _no_process_left  # noqa: F401

# -- pure: what the planner ships, where a worker looks ------------------------------------------


def test_the_shipped_campaign_text_holds_no_redis_password() -> None:
    text = (
        '[send]\nstate = "redis://sender:hunter2@redis:6379/0"\n'
        "limiter = 'rediss://:hunter2@redis:6380/1'\n"
        'base_url = "http://127.0.0.1:8080"\n# plain: redis://redis:6379/0\n'
    )
    shipped = shipped_text(text)
    assert "hunter2" not in shipped
    assert 'state = "redis://sender:***@redis:6379/0"' in shipped
    assert "limiter = 'rediss://:***@redis:6380/1'" in shipped
    assert shipped.endswith('base_url = "http://127.0.0.1:8080"\n# plain: redis://redis:6379/0\n')
    assert shipped_text("no url at all") == "no url at all"


def test_a_relative_secret_file_is_looked_for_beside_the_planners_campaign_then_here() -> None:
    planner, here = Path("/srv/campaigns"), Path("/work")
    assert candidates(Path("secrets/key"), planner, here) == [
        Path("/srv/campaigns/secrets/key"),
        Path("/work/secrets/key"),
    ]
    assert candidates(Path("secrets/key"), here, here) == [Path("/work/secrets/key")]
    assert candidates(Path("/run/secrets/key"), planner, here) == [Path("/run/secrets/key")]


def test_a_missing_secret_file_is_one_line_naming_the_setting_the_paths_and_what_to_do() -> None:
    line = missing_file(
        "Summer", "api_key_file", Path("secrets/key"),
        [Path("/srv/c/secrets/key"), Path("/work/secrets/key")], "MAXTRAFFIC_API_KEY",
    )  # fmt: skip
    assert line == (
        "[auth] api_key_file 'secrets/key' of campaign 'Summer' is not on this machine (looked "
        "for /srv/c/secrets/key and /work/secrets/key): mount the file there or set "
        "MAXTRAFFIC_API_KEY in the worker's environment; nothing was sent"
    )


# -- the worker's settings from what the planner stored (files, no Redis) --------------------


def _meta(planner_folder: Path, secret: str = "secrets/key") -> dict[str, object]:
    text = (
        'provider = "maxtraffic"\nname = "Keys"\n[message]\nmessages = [{ title = "t" }]\n'
        f'[recipients]\npath = "r.csv"\nid = "vid"\n[auth]\napi_key_file = "{secret}"\n'
    )
    return {"campaign_file": str(planner_folder / "campaign.toml"), "campaign_text": text}


def _key_file(path: Path, value: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(value + "\n")
    path.chmod(0o600)
    return path


def _secret_of(meta: Mapping[str, object], tmp: Path, cwd: Path, env: dict[str, str]) -> str:
    from bulksend.config import resolve_secrets

    scratch = tmp / "scratch"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    return resolve_secrets(settings_of(meta, scratch, env, cwd), env)["api_key"]


def test_a_worker_reads_the_key_file_beside_the_planners_campaign_first(tmp_path: Path) -> None:
    planner, here = tmp_path / "planner", tmp_path / "here"
    _key_file(planner / "secrets/key", "planner-key")
    _key_file(here / "secrets/key", "mounted-key")
    env = {"MAXTRAFFIC_API_KEY": "env-key"}
    assert _secret_of(_meta(planner), tmp_path, here, env) == "planner-key"
    assert _secret_of(_meta(tmp_path / "elsewhere"), tmp_path, here, env) == "mounted-key"
    assert _secret_of(_meta(tmp_path / "elsewhere"), tmp_path, tmp_path, env) == "env-key"
    absolute = str(_key_file(tmp_path / "run/key", "absolute-key"))
    assert _secret_of(_meta(planner, absolute), tmp_path, here, {}) == "absolute-key"


def test_a_key_file_nowhere_and_no_variable_is_one_line(tmp_path: Path) -> None:
    planner, here = tmp_path / "planner", tmp_path / "here"
    with pytest.raises(ConfigError) as caught:
        _secret_of(_meta(planner), tmp_path, here, {"MAXTRAFFIC_API_KEY": " "})
    assert str(caught.value) == missing_file(
        "Keys", "api_key_file", Path("secrets/key"),
        [planner / "secrets/key", here / "secrets/key"], "MAXTRAFFIC_API_KEY",
    )  # fmt: skip
    _key_file(here / "secrets/key", "open-key").chmod(0o644)  # there, but open to others
    with pytest.raises(ConfigError, match=r"secret file .*here/secrets/key is open to group"):
        _secret_of(_meta(planner), tmp_path, here, {"MAXTRAFFIC_API_KEY": "env-key"})


def test_the_campaign_file_a_worker_writes_is_the_planners_with_its_settings(
    tmp_path: Path,
) -> None:
    meta = {**_meta(tmp_path), "settings": {"batch_size": 7, "recipients": "/elsewhere.csv"}}
    _key_file(tmp_path / "secrets/key", "k")
    settings = settings_of(meta, tmp_path, {}, tmp_path)
    assert settings.batch_size == 7
    assert settings.secret_sources == {"api_key": f"file:{tmp_path / 'secrets/key'}"}
    assert load_settings(tmp_path / "campaign.toml", env={}).name == "Keys"


# -- helpers for the process tests -------------------------------------------------------------


def bulksend(
    run: Campaign, name: str, argv: list[str], cwd: Path, env: Mapping[str, str]
) -> subprocess.Popen[str]:
    """``python -m bulksend ARGV`` in ``cwd``, waited for (and killed) with ``run``'s."""
    cwd.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "bulksend", *argv],
        env=dict(env),
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    run.workers[name] = proc
    return proc


def once(argv: list[str], cwd: Path, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [sys.executable, "-m", "bulksend", *argv],
        env=dict(env), cwd=cwd, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def finish(run: Campaign, timeout: float = 60.0) -> tuple[int, dict[str, int], dict[str, str]]:
    """Wait for the planner and the workers: the planner's exit status, the workers', and
    what each process printed (stdout and stderr; the planner's under "planner")."""
    assert run.planner is not None
    try:
        out, err = run.planner.communicate(timeout=timeout)
        printed, codes = {"planner": out + err}, {}
        for name, p in run.workers.items():
            out, err = p.communicate(timeout=timeout)
            printed[name], codes[name] = out + err, p.returncode
    finally:
        run.stop()
    return run.planner.returncode, codes, printed


def worker_names(client: redis.Redis) -> set[bytes]:
    """The workers that ever showed up in a campaign's counts."""
    return {n for key in client.scan_iter(match="*:workers") for n in client.hkeys(key)}


def without_key(env: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k != "MAXTRAFFIC_API_KEY"}


def everything_in(client: redis.Redis) -> bytes:
    """Every key and value in the Redis ``client`` talks to, as one blob."""
    out: list[bytes] = []
    for key in client.scan_iter(count=1000):
        out.append(key)
        kind = client.type(key)
        if kind == b"string":
            out.append(client.get(key) or b"")
        elif kind == b"hash":
            out += [x for pair in client.hgetall(key).items() for x in pair]
        elif kind == b"stream":
            for _, fields in client.xrange(key):
                out += [x for pair in fields.items() for x in pair]
        elif kind == b"zset":
            out += client.zrange(key, 0, -1)
        else:
            raise AssertionError(f"{key!r}: a {kind!r} bulksend does not write")
    return b"\n".join(out)


def written_files(folder: Path) -> str:
    """The text of every file under ``folder`` but the inputs the test wrote (the campaign,
    the recipients, key files, certificates): reports, summaries, dead letters, ledgers."""
    inputs = {"campaign.toml", "recipients.csv", "key"}
    return "\n".join(
        p.read_text(errors="replace")
        for p in folder.rglob("*")
        if p.is_file() and p.name not in inputs and "certs" not in p.relative_to(folder).parts
    )


def one_line(stderr: str) -> str:
    lines = [x for x in stderr.splitlines() if x.startswith("bulksend:")]
    assert len(lines) == 1, stderr
    return lines[0]


def keyfile_campaign(tmp_path: Path, limit: int | None = 100) -> Campaign:
    """A campaign whose key is ``[auth] api_key_file = "secrets/key"``, beside it."""
    run = Campaign(tmp_path, n_unique=1_000, limit=limit)
    with run.campaign.open("a") as f:
        f.write('[auth]\napi_key_file = "secrets/key"\n')
    _key_file(tmp_path / "secrets/key", run.key)
    run.env = without_key(run.env)  # the key is in the file only
    return run


# -- a relative key file, workers started elsewhere ----------------------------------------------


def test_workers_started_elsewhere_on_the_planners_machine_find_its_key_file(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    run = keyfile_campaign(tmp_path)
    run.plan(redis_server.url)
    for i in range(2):
        bulksend(run, f"w{i}", ["worker", redis_server.url, "--name", f"w{i}"],
                 tmp_path / "elsewhere", run.env)  # fmt: skip
    client = redis.Redis.from_url(redis_server.url)
    wait_until(lambda: run.delivered() > 200, timeout=20, interval=0.1)
    during = everything_in(client)
    status, codes, printed = finish(run)
    assert status == 0, printed["planner"][-3000:]
    assert codes == {"w0": 0, "w1": 0}, printed
    run.check()
    assert b"campaign_text" in during  # what the workers built the campaign from
    assert run.key.encode() not in during + everything_in(client)
    client.close()
    assert not [name for name, text in printed.items() if run.key in text]
    assert run.key not in written_files(tmp_path)


def test_a_worker_on_another_machine_uses_a_mounted_file_or_the_variable_else_one_line(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """The planner's campaign folder has no key file where the workers run ("another
    machine"): one worker finds neither the file nor the variable (exit 2, one line, nothing
    sent); one has the file mounted in its working directory, one the variable."""
    run = keyfile_campaign(tmp_path)
    run.plan(redis_server.url)
    client = redis.Redis.from_url(redis_server.url)
    assert wait_until(lambda: client.hlen("bulksend:work:campaigns") == 1, timeout=20)
    (tmp_path / "secrets/key").unlink()  # read by the planner; not on the workers' machine
    bare = once(["worker", redis_server.url, "--name", "bare"], tmp_path / "bare", run.env)
    assert bare.returncode == 2, bare.stderr
    assert one_line(bare.stderr) == (
        "bulksend: error: [auth] api_key_file 'secrets/key' of campaign 'E2E' is not on this "
        f"machine (looked for {tmp_path}/secrets/key and {tmp_path}/bare/secrets/key): mount "
        "the file there or set MAXTRAFFIC_API_KEY in the worker's environment; nothing was sent"
    )
    assert run.delivered() == 0
    _key_file(tmp_path / "pod/secrets/key", run.key)
    bulksend(run, "mounted", ["worker", redis_server.url, "--name", "mounted"],
             tmp_path / "pod", run.env)  # fmt: skip
    env = {**run.env, "MAXTRAFFIC_API_KEY": run.key}
    bulksend(run, "variable", ["worker", redis_server.url, "--name", "variable"],
             tmp_path / "runner", env)  # fmt: skip
    status, codes, printed = finish(run)
    assert status == 0, printed["planner"][-3000:]
    assert codes == {"mounted": 0, "variable": 0}, printed
    run.check()
    assert worker_names(client) == {b"mounted", b"variable"}  # "bare" never took a batch
    assert run.key.encode() not in everything_in(client)
    client.close()
    assert not [name for name, text in printed.items() if run.key in text]
