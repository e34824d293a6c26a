from __future__ import annotations

from pathlib import Path

import pytest

from bulksend.config import load_settings, parse_rate, resolve_secrets
from bulksend.errors import ConfigError, MissingSecretError
from bulksend.providers.base import Limit

CAMPAIGN = """
provider = "maxtraffic"
name = "Test"
[message]
messages = [{ title = "t" }]
[recipients]
path = "r.csv"
id = "vid"
[send]
batch_size = 100
rate = "300/min"
"""


MT = "provider = 'maxtraffic'\n[recipients]\npath = 'r.csv'\n"


def write(tmp_path: Path, text: str = CAMPAIGN) -> Path:
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    ("text", "limit"),
    [
        ("300/min", Limit(300, 60)),
        ("50/1s", Limit(50, 1)),
        ("10/s", Limit(10, 1)),
        ("1000/h", Limit(1000, 3600)),
        ("600 / 60s", Limit(600, 60)),
        ("0.5/s", Limit(30, 60)),
    ],
)
def test_parse_rate(text: str, limit: Limit) -> None:
    assert parse_rate(text) == limit


@pytest.mark.parametrize("text", ["fast", "10", "10/fortnight", "-1/s", "0/s"])
def test_parse_rate_rejects(text: str) -> None:
    with pytest.raises(ConfigError, match="rate"):
        parse_rate(text)


def test_file_then_env_then_flags(tmp_path: Path) -> None:
    path = write(tmp_path)
    s = load_settings(path, env={})
    assert s.batch_size == 100
    assert s.recipients.path == str(tmp_path / "r.csv")
    assert s.recipients.id_column == "vid"
    assert s.recipients.uid_column == "uid"
    assert s.rate == Limit(300, 60)
    assert s.base_url == "https://api.maxtraffic.com"
    s = load_settings(path, env={"BULKSEND_BATCH_SIZE": "200", "BULKSEND_BASE_URL": "http://x/"})
    assert (s.batch_size, s.base_url) == (200, "http://x")
    s = load_settings(
        path,
        env={"BULKSEND_BATCH_SIZE": "200"},
        overrides={"batch_size": 300, "recipients": "other.csv"},
    )
    assert s.batch_size == 300
    assert s.recipients.path == "other.csv"  # a flag path is relative to the working directory


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("provider = 'nope'", "unknown provider 'nope'"),
        ("name = 'x'", "'provider' is required"),
        (f"{MT}[send]\nbatch_size = 0", r"c.toml: \[send\] batch_size must be at least 1, got 0"),
        (f"{MT}[send]\ntimeout = 'soon'", "timeout must be a number of seconds, got 'soon'"),
        ("provider = 'maxtraffic'\n[send]\nbatchsize = 5", r"unknown key\(s\) in \[send\]"),
        (f"{MT}[auth]\napi_key = 'abc'", r"unknown key \[auth\].api_key"),
        ("provider = 'maxtraffic'\n[recipients]\npath='r'\nformat='xls'", "'xls' is not one of"),
        ("provider = 'maxtraffic'\nfoo = 1", "unknown top-level"),
        ("provider = ", "invalid TOML"),
        ("provider = 'maxtraffic'", "no recipient file"),
    ],
)
def test_bad_campaign_files(tmp_path: Path, text: str, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        load_settings(write(tmp_path, text), env={})


def test_missing_campaign_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="campaign file not found"):
        load_settings(tmp_path / "missing.toml", env={})


def test_secrets_from_env_or_file(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path), env={})
    with pytest.raises(MissingSecretError, match="MAXTRAFFIC_API_KEY is not set"):
        resolve_secrets(s, {})
    assert resolve_secrets(s, {"MAXTRAFFIC_API_KEY": " k1 "}) == {"api_key": "k1"}
    (tmp_path / "key.txt").write_text("k2\n")
    (tmp_path / "key.txt").chmod(0o600)
    s = load_settings(write(tmp_path, CAMPAIGN + "[auth]\napi_key_file = 'key.txt'\n"), env={})
    assert resolve_secrets(s, {}) == {"api_key": "k2"}
    s = load_settings(write(tmp_path, CAMPAIGN + "[auth]\napi_key_env = 'MY_KEY'\n"), env={})
    with pytest.raises(MissingSecretError, match="MY_KEY"):
        resolve_secrets(s, {"MAXTRAFFIC_API_KEY": "k"})


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o660])
def test_a_secret_file_others_can_open_is_refused_as_ssh_does(tmp_path: Path, mode: int) -> None:
    key = tmp_path / "my key.txt"
    key.write_text("k2\n")
    key.chmod(mode)
    s = load_settings(write(tmp_path, CAMPAIGN + "[auth]\napi_key_file = 'my key.txt'\n"), env={})
    with pytest.raises(MissingSecretError) as exc:
        resolve_secrets(s, {})
    assert str(exc.value) == (
        f"api_key: secret file {key} is open to group or others (mode {mode:04o}): "
        f"run chmod 600 '{key}' (or set BULKSEND_ALLOW_OPEN_SECRETS=1 to use it as it is)"
    )
    assert "k2" not in str(exc.value)
    assert resolve_secrets(s, {"BULKSEND_ALLOW_OPEN_SECRETS": "1"}) == {"api_key": "k2"}
    with pytest.raises(MissingSecretError):
        resolve_secrets(s, {"BULKSEND_ALLOW_OPEN_SECRETS": "yes"})  # only 1 says so
    key.chmod(0o400)
    assert resolve_secrets(s, {}) == {"api_key": "k2"}


def test_secrets_can_depend_on_the_api_table(tmp_path: Path) -> None:
    """NotifyVisitors partner apps: [api] auth = "bearer" needs one token, not key + brand."""
    text = """
provider = "notifyvisitors"
[recipients]
path = "r.csv"
[api]
auth = "bearer"
"""
    s = load_settings(write(tmp_path, text), env={})
    assert s.secret_sources == {"token": "NOTIFYVISITORS_TOKEN"}
    assert resolve_secrets(s, {"NOTIFYVISITORS_TOKEN": "t"}) == {"token": "t"}
    s = load_settings(write(tmp_path, text.replace('"bearer"', '"key"')), env={})
    assert set(s.secret_sources) == {"api_key", "brand_id"}


def test_send_refuses_an_open_secret_file_in_one_line(tmp_path: Path) -> None:
    from tests.conftest import run_cli

    (tmp_path / "r.csv").write_text("vid\n1\n")
    key = tmp_path / "key.txt"
    key.write_text("k-123456789\n")
    key.chmod(0o644)
    campaign = write(tmp_path, CAMPAIGN + "[auth]\napi_key_file = 'key.txt'\n")
    sent = run_cli("send", str(campaign), "--base-url", "http://127.0.0.1:9", "--no-journal")
    assert sent.status == 2
    assert sent.stderr == (
        f"bulksend: error: api_key: secret file {key} is open to group or others (mode 0644): "
        f"run chmod 600 {key} (or set BULKSEND_ALLOW_OPEN_SECRETS=1 to use it as it is)\n"
    )
