"""Every key of a campaign file, given a value of the wrong type: one line naming it, exit 2.

The keys and their types are listed here, apart from the code, and checked against the keys
``bulksend.config`` accepts, so a new key cannot go untested.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bulksend import config
from tests.conftest import run_cli

#: a TOML value of each type, and how the error shows it
VALUES = {
    "integer": ("5", "5"),
    "boolean": ("true", "true"),
    "float": ("1.5", "1.5"),
    "string": ('"300/min"', "'300/min'"),
    "array": ("[1, 2]", "an array"),
    "table": ("{ a = 1 }", "a table"),
    "date-time": ("1979-05-27T07:32:00Z", "a date-time"),
    "date": ("1979-05-27", "a date"),
}
TEXT, WHOLE, SECONDS = {"string"}, {"integer"}, {"integer", "float"}
DURATION = {"integer", "float", "string"}

#: (table or None for the top level, key) -> the value types it accepts
KEYS: dict[tuple[str | None, str], set[str]] = {
    (None, "provider"): TEXT,
    (None, "operation"): TEXT,
    (None, "name"): TEXT,
    **{("recipients", k): TEXT for k in ("path", "format", "delimiter", "encoding", "id", "uid")},
    **{("recipients", k): TEXT for k in ("exclude_id", "exclude_uid")},
    ("recipients", "exclude"): TEXT,  # or an array of text ([1, 2] is refused)
    **{("send", k): TEXT for k in ("base_url", "rate", "limit", "report", "limiter", "state")},
    ("send", "window"): TEXT,  # or an array of texts (tests/test_windows.py)
    ("send", "timezone"): TEXT,
    **{
        ("send", k): WHOLE
        for k in ("batch_size", "in_flight", "max_attempts", "max_unexpected", "metrics_port")
    },
    ("send", "timeout"): SECONDS,
    ("send", "state_ttl"): DURATION,
    ("auth", "api_key_env"): TEXT,
    ("auth", "api_key_file"): TEXT,
}
TABLES = ("recipients", "auth", "send", "message", "api")


def campaign(tmp_path: Path, top: str = "", tables: dict[str, str] | None = None) -> Path:
    (tmp_path / "r.csv").write_text("id,uid\n1,a\n")
    parts = {
        "message": 'messages = [{ title = "t" }]',
        "recipients": 'path = "r.csv"',
        **(tables or {}),
    }
    text = top + "".join(f"\n[{name}]\n{body}\n" for name, body in parts.items())
    if "provider =" not in top:
        text = 'provider = "maxtraffic"\n' + text
    path = tmp_path / "campaign.toml"
    path.write_text(text)
    return path


def assert_one_line_error(path: Path, message: str) -> None:
    result = run_cli("validate", str(path), env={})
    assert result.status == 2, (result.stdout, result.stderr)
    assert result.stderr == f"bulksend: error: {path}: {message}\n"
    assert "Traceback" not in result.stdout + result.stderr


def test_the_list_here_is_every_key_bulksend_reads() -> None:
    known: set[tuple[str | None, str]] = {
        (None, key) for key in config._TOP if key not in config._TABLES
    }
    known |= {(table, key) for table, keys in config._TABLES.items() for key in keys}
    known |= {("auth", "api_key_env"), ("auth", "api_key_file")}  # by suffix, per secret
    assert set(KEYS) == known
    assert set(TABLES) == set(config._TABLES)


CASES = [
    pytest.param(table, key, kind, id=f"{table or 'top'}.{key}={kind}")
    for (table, key), accepted in KEYS.items()
    for kind in VALUES
    if kind not in accepted
]


@pytest.mark.parametrize(("table", "key", "kind"), CASES)
def test_a_wrong_type_is_one_line_naming_the_key(
    tmp_path: Path, table: str | None, key: str, kind: str
) -> None:
    literal, shown = VALUES[kind]
    if table is None:
        path = campaign(tmp_path, top=f"{key} = {literal}\n")
        where = key
    else:
        body = f"{key} = {literal}"
        if table == "recipients" and key != "path":
            body = f'path = "r.csv"\n{body}'
        path = campaign(tmp_path, tables={table: body})
        where = f"[{table}] {key}"
    if table == "auth":
        what = config.AUTH_KINDS["_" + key.rsplit("_", 1)[1]].what
    else:
        what = config.KINDS[(table, key)].what
    result = run_cli("validate", str(path), env={})
    assert result.status == 2, (result.stdout, result.stderr)
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(f"bulksend: error: {path}: {where} must be {what}")
    assert result.stderr.endswith(f", got {shown}\n")


@pytest.mark.parametrize("table", TABLES)
@pytest.mark.parametrize("kind", ["integer", "boolean", "string", "array"])
def test_a_value_where_a_table_belongs(tmp_path: Path, table: str, kind: str) -> None:
    literal, shown = VALUES[kind]
    path = tmp_path / "campaign.toml"
    (tmp_path / "r.csv").write_text("id\n1\n")
    path.write_text(f'provider = "maxtraffic"\n{table} = {literal}\n')
    assert_one_line_error(path, f"[{table}] must be a table, got {shown}")


def test_a_table_where_a_value_belongs(tmp_path: Path) -> None:
    path = campaign(tmp_path, tables={"send": "[send.batch_size]\nsize = 5"})
    assert_one_line_error(path, "[send] batch_size must be a whole number, got a table")


def test_booleans_are_not_numbers_anywhere(tmp_path: Path) -> None:
    for key in ("batch_size", "in_flight", "max_attempts", "timeout"):
        path = campaign(tmp_path, tables={"send": f"{key} = false"})
        result = run_cli("validate", str(path), env={})
        assert result.status == 2
        assert f"[send] {key} must be a " in result.stderr
        assert result.stderr.endswith(", got false\n")


def test_environment_variables_and_flags_are_named_when_wrong(tmp_path: Path) -> None:
    path = campaign(tmp_path)
    result = run_cli("validate", str(path), env={"BULKSEND_IN_FLIGHT": "true"})
    assert (result.status, result.stderr) == (
        2,
        "bulksend: error: BULKSEND_IN_FLIGHT must be a whole number, got 'true'\n",
    )
    result = run_cli("validate", str(path), "--batch-size", "0", env={})
    assert (result.status, result.stderr) == (
        2,
        "bulksend: error: --batch-size must be at least 1, got 0\n",
    )
    result = run_cli("validate", str(path), "--rate", "fast", env={})
    assert result.status == 2
    assert result.stderr.startswith("bulksend: error: --rate: cannot read 'fast'")


def test_right_types_still_load(tmp_path: Path) -> None:
    path = campaign(
        tmp_path,
        top='name = "n"\n',
        tables={
            "send": 'batch_size = 10\nin_flight = 2\ntimeout = 1\nmax_attempts = 3\nrate = "5/s"',
            "recipients": 'path = "r.csv"\nid = "id"\nuid = ""\nformat = "csv"\nencoding = "utf-8"',
            "auth": 'api_key_env = "MY_KEY"',
        },
    )
    settings = config.load_settings(path, env={})
    assert (settings.batch_size, settings.in_flight, settings.timeout) == (10, 2, 1.0)
    assert settings.recipients.uid_column is None
    assert settings.secret_sources == {"api_key": "MY_KEY"}


def test_whole_numbers_are_whole_in_the_file_as_in_a_variable(tmp_path: Path) -> None:
    """``10.0`` is refused from the file as ``BULKSEND_BATCH_SIZE=10.0`` is (docs: whole)."""
    path = campaign(tmp_path, tables={"send": "batch_size = 10.0"})
    assert_one_line_error(path, "[send] batch_size must be a whole number, got 10.0")
    path = campaign(tmp_path)
    result = run_cli("validate", str(path), env={"BULKSEND_BATCH_SIZE": "10.0"})
    assert result.status == 2
    assert "BULKSEND_BATCH_SIZE must be a whole number, got '10.0'" in result.stderr


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("127.0.0.1:8765", "is not an http(s) URL with a host"),
        ("notaurl", "is not an http(s) URL with a host"),
        ("ftp://files.example.com", "is not an http(s) URL with a host"),
        ("http://", "is not an http(s) URL with a host"),
        ("http://127.0.0.1:99999", "is not a URL (Port out of range"),
        ("http://[::1", "is not a URL (Invalid IPv6 URL)"),
    ],
)
def test_a_base_url_that_cannot_be_sent_to_is_refused_before_anything(
    tmp_path: Path, url: str, why: str
) -> None:
    path = campaign(tmp_path)
    for args, where in (
        (["--base-url", url], "--base-url"),
        ([], "BULKSEND_BASE_URL"),
    ):
        env = {} if args else {"BULKSEND_BASE_URL": url}
        result = run_cli(
            "send", str(path), *args, "--no-journal", env={**env, "MAXTRAFFIC_API_KEY": "k"}
        )
        assert result.status == 2, result.stderr
        (line,) = result.stderr.splitlines()
        assert line.startswith(f"bulksend: error: {where}: "), line
        assert why in line
    file_url = campaign(tmp_path, tables={"send": f'base_url = "{url}"'})
    result = run_cli("validate", str(file_url), env={})
    assert result.status == 2
    assert "[send] base_url" in result.stderr
    assert why in result.stderr


def test_a_password_in_a_bad_base_url_is_not_shown(tmp_path: Path) -> None:
    path = campaign(tmp_path)
    result = run_cli("send", str(path), "--base-url", "ftp://user:s3cret@host", env={})
    assert result.status == 2
    assert "s3cret" not in result.stderr
    assert "'ftp://host'" in result.stderr
    result = run_cli("send", str(path), "--base-url", "https://user:s3cret@host", env={})
    assert result.status == 2
    assert "s3cret" not in result.stderr
    assert "'https://host' carries a user name or password" in result.stderr
