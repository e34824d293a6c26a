"""Small conventions: --version, NO_COLOR, and help texts people can read."""

from __future__ import annotations

import argparse
import io
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest

from bulksend import cli
from bulksend.cli import build_parser
from tests.conftest import ROOT, run_cli, write_campaign, write_recipients

SGR = re.compile(r"\x1b\[[0-9;]*m")  # a colour or style


def test_version_comes_from_the_package_metadata_and_is_quick() -> None:
    r = run_cli("--version")
    assert (r.status, r.stdout, r.stderr) == (0, f"bulksend {metadata.version('bulksend')}\n", "")
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "bulksend", "--version"],
        capture_output=True, text=True, cwd=ROOT, check=False, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == r.stdout
    assert time.perf_counter() - started < 5  # no command module, no event loop


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def console_logs(tmp_path: Path, env: dict[str, str], *flags: str) -> str:
    rows = [(f"v{i}", f"u{i}") for i in range(20)]
    campaign = write_campaign(tmp_path, write_recipients(tmp_path / "r.csv", rows))
    err = Terminal()
    argv = ["send", str(campaign), "--sandbox", "-v", *flags]
    status = cli.run(argv, env=env, stdout=io.StringIO(), stderr=err)
    assert status == 0, err.getvalue()
    return err.getvalue()


def test_no_color_turns_colour_off_on_a_terminal(tmp_path: Path) -> None:
    assert SGR.search(console_logs(tmp_path, {}, "--progress", "never"))  # coloured by default
    plain = console_logs(tmp_path, {"NO_COLOR": "1"}, "--progress", "never")
    assert "send_finished" in plain
    assert not SGR.search(plain)
    drawn = console_logs(tmp_path, {"NO_COLOR": "yes"}, "--progress", "always")
    assert "\r\x1b[2K" in drawn  # the live line still redraws itself, without colour
    assert not SGR.search(drawn)
    assert SGR.search(console_logs(tmp_path, {"NO_COLOR": ""}, "--progress", "never"))


def parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """``parser`` and every subcommand's parser under it."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                yield from parsers(sub)


def test_every_help_reads_well(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    seen = []
    for parser in parsers(build_parser(full=True)):
        seen.append(parser.prog)
        text = parser.format_help()
        assert "``" not in text, parser.prog  # reStructuredText quotes are for docstrings
        too_long = [line for line in text.splitlines() if len(line) > 100]
        assert too_long == [], parser.prog
        for action in parser._actions:
            takes_value = action.nargs != 0 and not isinstance(
                action, argparse._SubParsersAction | argparse._HelpAction
            )
            if takes_value:  # not the flag's name in capitals: say what the value is
                named = action.metavar is not None or action.choices is not None
                assert named, f"{parser.prog} {action.option_strings or action.dest}"
    assert "bulksend report merge" in seen
    assert len(seen) == 1 + len(cli.COMMANDS) + 1


def test_docs_show_no_restructuredtext_quotes() -> None:
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        assert "``" not in doc.read_text().replace("```", ""), doc
