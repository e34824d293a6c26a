"""Planner and workers with secrets (issue 17): a relative ``[auth] api_key_file`` in a worker
started elsewhere; an ACL user with only what bulksend needs; ``rediss://`` with a CA of the
test's own. Real ``redis-server``, sandbox and bulksend processes.

In every case no secret -- the provider's key, the Redis password -- is in Redis, in any
output of any process (stdout, stderr) or in any file the send wrote (report, summary, dead
letters).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import cast

import pytest

pytest.importorskip("redis", reason="REDIS CLIENT MISSING: pip install 'bulksend[redis]'")

import redis

from bulksend.config import load_settings
from bulksend.distributed.keys import redact_url, remedy
from bulksend.distributed.testing import Certificates, RedisServer, make_certificates
from bulksend.errors import ConfigError
from bulksend.sandbox.testing import wait_until
from bulksend.workers.shipped import candidates, missing_file, shipped_text
from bulksend.workers.worker import settings_of
from tests.conftest import ROOT, minimal_campaign, write_recipients
from tests.test_workers_redis import NO_REDIS, Campaign, _no_process_left  # noqa: F401

PASSWORD = "s3cret-Pa55word"
ADMIN = "admin-Pa55word"

# -- pure: what the planner ships, where a worker looks ------------------------------------------


def test_the_shipped_campaign_text_holds_no_redis_password() -> None:
    text = (
        '[send]\nstate = "redis://sender:hunter2@redis:6379/0"\n'
        "limiter = 'rediss://:hunter2@redis:6380/1?ssl_ca_certs=/etc/ca.pem'\n"
        'base_url = "http://127.0.0.1:8080"\n# plain: redis://redis:6379/0\n'
    )
    shipped = shipped_text(text)
    assert "hunter2" not in shipped
    assert 'state = "redis://sender:***@redis:6379/0"' in shipped
    assert "limiter = 'rediss://:***@redis:6380/1?ssl_ca_certs=/etc/ca.pem'" in shipped
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


def test_a_ca_path_is_shown_as_given_and_an_untrusted_certificate_says_what_to_do() -> None:
    url = "rediss://bulksend:hunter2@redis:6380/0?ssl_ca_certs=/etc/redis/ca.pem"
    assert redact_url(url) == "rediss://bulksend:***@redis:6380/0?ssl_ca_certs=/etc/redis/ca.pem"
    failed = "Error 1 connecting to redis:6380. [SSL: CERTIFICATE_VERIFY_FAILED] certificate..."
    assert "?ssl_ca_certs=/path/to/ca.pem" in remedy(failed, "start Redis")
    assert remedy("Connection refused.", "start Redis") == "start Redis"


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


# (the casts below: these clients do not decode, so every reply is bytes, which redis-py's
# types cannot tell from str)


def worker_names(client: redis.Redis) -> set[bytes]:
    """The workers that ever showed up in a campaign's counts."""
    keys = client.scan_iter(match="*:workers")
    return {n for key in keys for n in cast("list[bytes]", client.hkeys(key))}


def without_key(env: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k != "MAXTRAFFIC_API_KEY"}


def everything_in(client: redis.Redis) -> bytes:
    """Every key and value in the Redis ``client`` talks to, as one blob."""
    out: list[bytes] = []
    for key in cast("Iterator[bytes]", client.scan_iter(count=1000)):
        out.append(key)
        kind = client.type(key)
        if kind == b"string":
            out.append(cast("bytes | None", client.get(key)) or b"")
        elif kind == b"hash":
            out += [
                x for pair in cast("dict[bytes, bytes]", client.hgetall(key)).items() for x in pair
            ]
        elif kind == b"stream":
            for _, fields in cast("list[tuple[bytes, dict[bytes, bytes]]]", client.xrange(key)):
                out += [x for pair in fields.items() for x in pair]
        elif kind == b"zset":
            out += cast("list[bytes]", client.zrange(key, 0, -1))
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


# -- an ACL user with only what bulksend needs ---------------------------------------------------


def documented_acl(password: str) -> list[str]:
    """The ``ACL SETUSER`` line docs/scaling.md shows, as arguments, with ``password``."""
    text = (ROOT / "docs/scaling.md").read_text()
    (line,) = re.findall(r"^\s*(ACL SETUSER bulksend .*)$", text, re.M)
    args = shlex.split(line)
    assert ">PASSWORD" in args, line
    return [f">{password}" if a == ">PASSWORD" else a for a in args]


def acl_server(tls: Certificates | None = None) -> RedisServer:
    """A redis-server whose default user is off and whose admin can set users up."""
    if not RedisServer.available():
        pytest.skip(NO_REDIS)
    admin = ("--user", "default", "off", "--user", "admin", "on", f">{ADMIN}", "~*", "&*", "+@all")
    return RedisServer(extra=admin, tls=tls)


def admin_client(server: RedisServer, ssl_ca_certs: str | None = None) -> redis.Redis:
    return redis.Redis(
        host=server.host, port=server.port, username="admin", password=ADMIN,
        ssl=ssl_ca_certs is not None, ssl_ca_certs=ssl_ca_certs,
    )  # fmt: skip


def other_commands(
    folder: Path, url: str, env: Mapping[str, str]
) -> list[subprocess.CompletedProcess[str]]:
    """What else bulksend does with a Redis URL: a send keeping its journal there and sharing
    its quota through it, then the same send again (it resumes), a pause and a resume."""
    folder.mkdir()
    campaign = minimal_campaign(folder, "r.csv")
    write_recipients(folder / "r.csv", [(f"v{i}", f"u{i}") for i in range(30)])
    send = ["send", str(campaign), "--sandbox", "--state", url, "--limiter", url, "-q"]
    send += ["--progress", "never", "--summary-json", str(folder / "s.json")]
    done = [once(send, folder, env), once(send, folder, env)]
    done += [once([verb, url, "--campaign", "c"], folder, env) for verb in ("pause", "resume")]
    return done


def test_an_acl_user_with_the_documented_rights_plans_sends_and_shows_status(
    tmp_path: Path,
) -> None:
    """The documented least-privilege user: planner, 2 workers and status work, and so do a
    send with ``--state`` and ``--limiter`` (twice: it resumes), ``pause`` and ``resume``;
    Redis denied nothing but ``CONFIG GET`` (said in one note); the password is in no output,
    no file and not in Redis."""
    with acl_server() as server:
        admin = admin_client(server)
        admin.execute_command(*documented_acl(PASSWORD))
        url = f"redis://bulksend:{PASSWORD}@127.0.0.1:{server.port}/0"
        run = Campaign(tmp_path, n_unique=1_500, limit=50)
        with run.campaign.open("a") as f:  # a password in the campaign file is not shipped
            f.write(f'state = "{url}"\n')
        for i in range(2):
            run.worker(url, f"w{i}")
        run.plan(url)
        wait_until(lambda: run.delivered() > 300, timeout=20, interval=0.1)
        shown = once(["status", url, "E2E"], tmp_path, run.env)
        during = everything_in(admin)
        wrong = once(["worker", url.replace(PASSWORD, "wrong"), "--wait", "1"], tmp_path, run.env)
        status, codes, printed = finish(run)
        others = other_commands(tmp_path / "single", url, run.env)
        denied = [(e["reason"], e["object"]) for e in admin.acl_log() if e["reason"] != "auth"]
        after = everything_in(admin)
        admin.close()
    err = printed["planner"]
    assert status == 0, err[-3000:]
    assert codes == {"w0": 0, "w1": 0}, printed
    run.check()
    assert shown.returncode == 0, shown.stderr
    assert "worker w0" in shown.stdout
    assert "settled" in shown.stdout
    assert denied == [("command", "config|get")], denied
    note = [x for x in err.splitlines() if "CONFIG GET" in x]
    assert len(note) == 1, err
    assert note[0].startswith(
        "bulksend: note: cannot check whether state redis://bulksend:***@127.0.0.1:"
    )
    assert wrong.returncode == 4, wrong.stderr
    assert one_line(wrong.stderr) == (
        f"bulksend: redis://bulksend:***@127.0.0.1:{server.port}/0 refused the connection "
        "(invalid username-password pair or user is disabled.); check the user name and password"
    )
    assert [r.returncode for r in others] == [0, 0, 0, 0], [r.stderr for r in others]
    outputs = [*printed.values(), shown.stdout, shown.stderr, wrong.stdout, wrong.stderr]
    outputs += [r.stdout + r.stderr for r in others]
    assert not [o for o in outputs if PASSWORD in o]
    assert PASSWORD not in written_files(tmp_path)
    assert PASSWORD.encode() not in during + after
    assert b"redis://bulksend:***@127.0.0.1" in during  # the campaign text, masked


# -- rediss:// with a CA of the test's own ---------------------------------------------------------


@pytest.fixture
def certificates(tmp_path: Path) -> Certificates:
    if shutil.which("openssl") is None:
        pytest.skip("OPENSSL UNAVAILABLE -- the rediss:// test did NOT run: install openssl")
    return make_certificates(tmp_path / "certs")


def tls_server(certificates: Certificates) -> RedisServer:
    server = acl_server(tls=certificates)
    try:
        server.start()
    except RuntimeError as exc:
        server.close()
        pytest.skip(f"REDIS TLS UNAVAILABLE -- the rediss:// test did NOT run: {exc}")
    return server


def test_rediss_with_the_ca_in_the_url_plans_sends_and_shows_status(
    tmp_path: Path, certificates: Certificates
) -> None:
    """TLS only (no plain port), an ACL user, the CA named in each process's URL
    (``?ssl_ca_certs=``) or as ``SSL_CERT_FILE``; without it, one line saying so (exit 4); a
    CA path that is not there, one line (exit 2). The password is in no output."""
    with tls_server(certificates) as server:
        admin = admin_client(server, ssl_ca_certs=str(certificates.ca))
        admin.execute_command(*documented_acl(PASSWORD))
        bare = f"rediss://bulksend:{PASSWORD}@127.0.0.1:{server.port}/0"
        ca = str(certificates.ca)
        url = f"{bare}?ssl_ca_certs={ca}"
        run = Campaign(tmp_path, n_unique=1_000, limit=50)
        run.worker(url, "w0")
        run.plan(url)
        wait_until(lambda: run.delivered() > 200, timeout=20, interval=0.1)
        shown = once(["status", url, "E2E"], tmp_path, run.env)
        by_env = once(["status", bare, "E2E"], tmp_path, {**run.env, "SSL_CERT_FILE": ca})
        during = everything_in(admin)
        admin.close()
        untrusted = once(["worker", bare, "--wait", "1"], tmp_path, run.env)
        no_ca = once(["status", f"{bare}?ssl_ca_certs=/nowhere/ca.pem", "E2E"], tmp_path, run.env)
        status, codes, printed = finish(run)
    assert status == 0, printed["planner"][-3000:]
    assert codes == {"w0": 0}, printed
    run.check()
    assert shown.returncode == 0, shown.stderr
    assert "worker w0" in shown.stdout
    assert by_env.returncode == 0, by_env.stderr  # the CA as SSL_CERT_FILE instead
    assert "worker w0" in by_env.stdout
    shown_url = f"rediss://bulksend:***@127.0.0.1:{server.port}/0"
    assert untrusted.returncode == 4, untrusted.stderr
    line = one_line(untrusted.stderr)
    assert line.startswith(f"bulksend: {shown_url} is unreachable (")
    assert "CERTIFICATE_VERIFY_FAILED" in line
    assert line.endswith("name the CA that signed it at the end of the URL, "
                         "?ssl_ca_certs=/path/to/ca.pem (docs/scaling.md)")  # fmt: skip
    assert no_ca.returncode == 2, no_ca.stderr
    assert one_line(no_ca.stderr) == (
        f"bulksend: error: bulksend status: {shown_url}?ssl_ca_certs=/nowhere/ca.pem: "
        "ssl_ca_certs=/nowhere/ca.pem does not exist on this machine; give the path of the "
        "file (for ssl_ca_certs, the PEM certificate of the CA that signed the Redis server's "
        "certificate)"
    )
    outputs = [*printed.values(), shown.stdout, shown.stderr, untrusted.stderr, no_ca.stderr]
    outputs += [by_env.stdout, by_env.stderr]
    assert not [o for o in outputs if PASSWORD in o]
    assert PASSWORD not in written_files(tmp_path)
    assert b"campaign_text" in during
    assert PASSWORD.encode() not in during


def test_pause_and_resume_over_rediss_say_what_to_do_about_the_ca_in_one_line(
    tmp_path: Path, certificates: Certificates
) -> None:
    """``bulksend pause/resume rediss://...`` as the other commands: a CA file that is not
    there is one line (exit 2) before connecting; a server whose certificate is not trusted
    here, one line saying to name the CA (exit 4); with the CA, they pause and resume. The
    password is in no output."""
    with tls_server(certificates) as server:
        admin = admin_client(server, ssl_ca_certs=str(certificates.ca))
        admin.execute_command(*documented_acl(PASSWORD))
        admin.close()
        bare = f"rediss://bulksend:{PASSWORD}@127.0.0.1:{server.port}/0"
        no_ca = f"{bare}?ssl_ca_certs=/nowhere/ca.pem"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop("SSL_CERT_FILE", None)
        done = {
            (verb, how): once([verb, url, "--campaign", "E2E"], tmp_path, env)
            for verb in ("pause", "resume")
            for how, url in (("untrusted", bare), ("no CA", no_ca))
        }
        trusted = f"{bare}?ssl_ca_certs={certificates.ca}"
        with_ca = [
            once([verb, trusted, "--campaign", "E2E"], tmp_path, env)
            for verb in ("pause", "resume")
        ]
    shown = f"rediss://bulksend:***@127.0.0.1:{server.port}/0"
    for verb in ("pause", "resume"):
        untrusted = done[verb, "untrusted"]
        assert untrusted.returncode == 4, untrusted.stderr
        (line,) = untrusted.stderr.splitlines()
        assert line.startswith(f"bulksend: {shown} (campaign 'E2E'): cannot {verb}: Redis is "
                               "unreachable (ConnectionError: ")  # fmt: skip
        assert "CERTIFICATE_VERIFY_FAILED" in line
        assert line.endswith("; the server's TLS certificate is not trusted here: name the CA "
                             "that signed it at the end of the URL, ?ssl_ca_certs=/path/to/ca.pem "
                             "(docs/scaling.md)")  # fmt: skip
        missing = done[verb, "no CA"]
        assert missing.returncode == 2, missing.stderr
        assert missing.stderr.splitlines() == [
            f"bulksend: error: bulksend {verb}: {shown}?ssl_ca_certs=/nowhere/ca.pem: "
            "ssl_ca_certs=/nowhere/ca.pem does not exist on this machine; give the path of the "
            "file (for ssl_ca_certs, the PEM certificate of the CA that signed the Redis "
            "server's certificate)"
        ]
    assert [r.returncode for r in with_ca] == [0, 0], [r.stderr for r in with_ca]
    assert with_ca[0].stderr.startswith(f"bulksend: paused {shown}?ssl_ca_certs=")
    assert with_ca[1].stderr.startswith(f"bulksend: resumed {shown}?ssl_ca_certs=")
    outputs = [r.stdout + r.stderr for r in [*done.values(), *with_ca]]
    assert not [o for o in outputs if PASSWORD in o]
