"""Every command that README.md, docs/*.md, samples/github-actions.yml and the ``--help``
examples show is run here, by bash, as it is written.

The commands are read from the texts themselves, so a new example is run without anyone adding it
to this file. Each text runs in a scratch workspace where the names the examples use exist
(``campaign.toml``, ``list.csv``, ``my-visitors.csv``, ...), the provider's API is a sandbox
process (``BULKSEND_BASE_URL`` and the key variables point at it) and Redis a private
redis-server. What is changed in a command to run it here is only what needs the world outside
or hours: listed in ``adapt`` (ports, the Redis host, bench sizes, ``KEY=...`` placeholders).
A command is expected to exit 0 unless ``EXPECTED`` says otherwise, and none may print a
traceback.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bulksend import cli
from bulksend.distributed.testing import RedisServer, free_port
from bulksend.sandbox.testing import SandboxProcess, stop_process
from tests.conftest import ROOT

#: commands (matched by a regular expression) that are documented to exit with another status
EXPECTED: list[tuple[str, int]] = [
    (r"--strict --sandbox", 0),
]
#: long-running servers: started, checked to answer, then stopped with SIGTERM
SERVERS = ("bulksend sandbox ", "bulksend traitly-webhooks ")
#: bench runs are cut to this many recipients or seconds (the examples measure longer sends)
BENCH_RECIPIENTS = 2_000
BENCH_SECONDS = 1.0
KEYS = {  # provider -> (variables, the value the sandbox flag accepts)
    "maxtraffic": {"MAXTRAFFIC_API_KEY": "--api-key"},
    "traitly": {"TRAITLY_TOKEN": "--token"},
}
SHELL_INFO = {"", "sh", "bash", "shell", "console"}


@dataclass
class Example:
    where: str  # file:line
    text: str  # one shell command (continuations joined)


@dataclass
class Workspace:
    root: Path
    env: dict[str, str] = field(default_factory=dict)
    redis_url: str | None = None


# -- reading the examples --------------------------------------------------------------------


def _logical_lines(lines: list[tuple[int, str]]) -> Iterator[tuple[int, str]]:
    """Join backslash continuations; strip comments and a ``$`` prompt."""
    parts: list[str]
    start, parts = 0, []
    for number, raw in lines:
        line = re.sub(r"(^|\s)#.*$", "", raw).rstrip()
        if not parts:
            start = number
        if line.endswith("\\"):
            parts.append(line[:-1].strip())
            continue
        parts.append(line.strip())
        text = " ".join(p for p in parts if p)
        parts = []
        if text:
            yield start, text.removeprefix("$ ")


def _commands(lines: list[tuple[int, str]], where: str) -> Iterator[Example]:
    """The bulksend commands among shell lines; a ``for ... done`` loop (and a ``wait`` after
    it) is one command."""
    group: list[str] = []
    group_start = 0
    for number, text in _logical_lines(lines):
        if group:
            group.append(text)
            if text == "done":  # then wait for every job the loop started, failing with it
                group.append('for job in $(jobs -p); do wait "$job" || exit $?; done')
                yield Example(f"{where}:{group_start}", "\n".join(group))
                group = []
            continue
        if text.startswith("for "):
            group, group_start = [text], number
        elif text == "wait":
            continue  # the loop's background jobs are waited for by the loop's command
        elif re.match(r"^(\w+=\S+\s+)*bulksend\s", text):
            yield Example(f"{where}:{number}", text)


def markdown_examples(path: Path) -> list[Example]:
    found: list[Example] = []
    block: list[tuple[int, str]] | None = None
    info = ""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fence = re.match(r"^\s*```(\w*)", line)
        if fence and block is None:
            block, info = [], fence.group(1)
        elif fence and block is not None:
            lines = (
                block if info in SHELL_INFO else [(n, t) for n, t in block if t.startswith("$ ")]
            )
            found += _commands(lines, path.relative_to(ROOT).as_posix())
            block = None
        elif block is not None:
            block.append((number, line))
    return found


def help_examples() -> list[Example]:
    """The ``examples:`` section of ``bulksend --help`` and of every command's help."""
    parser = cli.build_parser(full=True)
    parsers = [("bulksend --help", parser)]
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, child in sub.choices.items():
        parsers.append((f"bulksend {name} --help", child))
        for action in child._actions:
            if isinstance(action, argparse._SubParsersAction):
                for inner, grandchild in action.choices.items():
                    parsers.append((f"bulksend {name} {inner} --help", grandchild))
    found: list[Example] = []
    for where, p in parsers:
        epilog = (p.epilog or "").splitlines()
        if "examples:" not in epilog:
            continue
        section = []
        for number, line in enumerate(epilog[epilog.index("examples:") + 1 :], 1):
            if not line.startswith("  "):
                break
            section.append((number, line))
        found += _commands(section, where)
    return found


def workflow_examples(path: Path) -> list[Example]:
    """The ``run:`` steps of a GitHub Actions workflow, inputs replaced by their defaults."""
    text = path.read_text()
    defaults = dict(re.findall(r"^\s{6}(\w+):\n(?:\s{8}.*\n)*?\s{8}default: (.+)$", text, re.M))
    lines = text.splitlines()
    found: list[Example] = []
    for number, line in enumerate(lines, 1):
        m = re.match(r"^(\s*)(?:- )?run: (>|\|)?\s*(.*)$", line)
        if not m:
            continue
        indent = len(m.group(1))
        body = [m.group(3)] if m.group(3) else []
        for follow in lines[number:]:
            if not follow.strip() or len(follow) - len(follow.lstrip()) <= indent:
                break
            body.append(follow.strip())
        command = re.sub(r"\s*#.*$", "", " ".join(body))
        command = re.sub(
            r"\$\{\{\s*inputs\.(\w+)\s*\}\}", lambda g: defaults[g.group(1)].strip(), command
        )
        found += _commands([(number, command)], path.relative_to(ROOT).as_posix())
    return found


TEXTS: dict[str, Callable[[], list[Example]]] = {
    "README.md": lambda: markdown_examples(ROOT / "README.md"),
    **{
        f"docs/{p.name}": functools.partial(markdown_examples, p)
        for p in sorted((ROOT / "docs").glob("*.md"))
    },
    "--help": help_examples,
    "samples/github-actions.yml": lambda: workflow_examples(ROOT / "samples/github-actions.yml"),
}


# -- running them ------------------------------------------------------------------------------


def adapt(command: str, ws: Workspace) -> str | None:
    """The command as it can run here (None: it needs something this machine lacks)."""
    command = re.sub(r"^(\w+=\.\.\.\s+)+", "", command)  # KEY=... : the key is in the env
    command = re.sub(r"--port \d+", lambda _: f"--port {free_port()}", command)
    command = re.sub(r"--metrics-port \d+", "--metrics-port 0", command)  # a free one
    command = re.sub(r"http://127\.0\.0\.1:\d+", ws.env["BULKSEND_BASE_URL"], command)
    command = re.sub(r"--metrics-push \S+", f"--metrics-push {ws.env['DOCS_PUSHGATEWAY']}", command)
    if _is_server(command) and "--port" not in command:  # its default may be taken
        command += f" --port {free_port()}"
    if "redis://" in command:
        if ws.redis_url is None:
            return None
        command = re.sub(r"redis://[^\s]+", ws.redis_url, command)
    if command.startswith("bulksend bench"):
        command = _shorter_bench(command)
    return command


def _shorter_bench(command: str) -> str:
    """A bench as documented, cut to ``BENCH_RECIPIENTS`` recipients or ``BENCH_SECONDS``."""
    command = re.sub(
        r"--recipients (\d+)",
        lambda g: f"--recipients {min(int(g.group(1)), BENCH_RECIPIENTS)}",
        command,
    )
    command = re.sub(
        r"--seconds ([\d.]+)",
        lambda g: f"--seconds {min(float(g.group(1)), BENCH_SECONDS):g}",
        command,
    )
    if not re.search(r"--(recipients|seconds|file|campaign) ", command):  # 5 s by default
        command = command.replace("bulksend bench", f"bulksend bench --seconds {BENCH_SECONDS:g}")
    return command


def _is_server(command: str) -> bool:
    return re.sub(r"^(\w+=\S+\s+)*", "", command).startswith(SERVERS)


def expected_status(command: str) -> int:
    return next((status for pattern, status in EXPECTED if re.search(pattern, command)), 0)


def _bin_path() -> str:
    return os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


def run_server(command: str, ws: Workspace) -> tuple[int, str]:
    """Start a documented server, wait until its port answers, stop it."""
    port = int(re.search(r"--port (\d+)", command).group(1))  # type: ignore[union-attr]
    process = subprocess.Popen(
        ["bash", "-c", re.sub(r"^((?:\w+=\S+\s+)*)", r"\1exec ", command)],
        cwd=ws.root,
        env=ws.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and process.poll() is None:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.05)
    answered = process.poll() is None
    status = stop_process(process, signal.SIGTERM)
    output = ""
    if process.stdout is not None:
        with process.stdout:
            output = process.stdout.read()
    if not answered:
        return status or 1, output
    return 0 if status in (0, -signal.SIGTERM, 128 + signal.SIGTERM) else status or 1, output


SHARDS = (
    "for i in 0 1; do bulksend send campaign.toml --shard $i/2 --journal out/shard-$i.journal "
    "--report out/shard-$i.csv --summary-json out/shard-$i.summary.json -q || exit 1; done"
)


def _prepare(command: str, ws: Workspace) -> None:
    """What an example takes as already done: the shards' outputs for ``report merge``."""
    if "out/shard-*" in command and not list(ws.root.glob("out/shard-*.summary.json")):
        (ws.root / "out").mkdir(exist_ok=True)
        done = subprocess.run(["bash", "-c", SHARDS], cwd=ws.root, env=ws.env, check=False)
        assert done.returncode == 0, SHARDS


def run_example(example: Example, ws: Workspace) -> str | None:
    """None when the example ran as documented, else what went wrong."""
    command = adapt(example.text, ws)
    if command is None:
        return None  # reported by the caller's skip
    _prepare(command, ws)
    if _is_server(command):
        status, output = run_server(command, ws)
    else:
        done = subprocess.run(
            ["bash", "-c", command],
            cwd=ws.root,
            env=ws.env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        status, output = done.returncode, done.stdout + done.stderr
    want = expected_status(command)
    if "Traceback" in output or status != want or "could not push the metrics" in output:
        return f"{example.where}: exit {status}, not {want}: {command}\n{output[-3000:]}"
    return None


# -- the workspace -----------------------------------------------------------------------------

FOLLOW_UP = """\
provider = "traitly"
operation = "events"
name = "Follow-up"
[message]
name = "Reached the threshold"
[recipients]
path = "audience.jsonl"
"""


def _write_workspace(root: Path) -> None:
    shutil.copytree(ROOT / "samples", root / "samples")
    sample = ROOT / "samples/maxtraffic/recipients.csv"
    campaign = (ROOT / "samples/maxtraffic/campaign.toml").read_text()
    campaign = campaign.replace('path = "recipients.csv"', f'path = "{sample}"')
    (root / "campaign.toml").write_text(campaign)
    for name in ("list.csv", "my-visitors.csv", "export.csv"):
        shutil.copy(sample, root / name)
    (root / "follow-up.toml").write_text(FOLLOW_UP)
    (root / "audience.jsonl").write_text(
        "".join(f'{{"id": "c{i}", "customer_id": "c{i}"}}\n' for i in range(20))
    )


class _Pushgateway(http.server.BaseHTTPRequestHandler):
    """Takes every push (``--metrics-push``) as a Pushgateway would, keeping nothing."""

    def do_PUT(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.end_headers()

    do_POST = do_PUT

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def pushgateway() -> Iterator[str]:
    """A stand-in for a Pushgateway on a loopback port; yields its URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Pushgateway)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def workspace(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Workspace]:
    _write_workspace(tmp_path)
    ws = Workspace(tmp_path)
    ws.env = {k: v for k, v in os.environ.items() if not k.startswith(("BULKSEND_", "GITHUB_"))}
    ws.env.update(PATH=_bin_path(), NO_COLOR="1", COLUMNS="100")
    with ExitStack() as stack:
        for provider, variables in KEYS.items():
            key = f"docs-{provider}-key"
            flag = next(iter(variables.values()))
            sandbox = stack.enter_context(SandboxProcess(provider, flag, key))
            ws.env.update({name: key for name in variables})
            ws.env[f"DOCS_{provider.upper()}_URL"] = sandbox.base_url
        ws.env["BULKSEND_BASE_URL"] = ws.env["DOCS_MAXTRAFFIC_URL"]
        ws.env["DOCS_PUSHGATEWAY"] = stack.enter_context(pushgateway())
        if RedisServer.available():
            ws.redis_url = stack.enter_context(RedisServer()).url
        yield ws


def _env_for(example: Example, ws: Workspace) -> None:
    """Point BULKSEND_BASE_URL at the sandbox of the provider the command's campaign names."""
    provider = "traitly" if "follow-up.toml" in example.text else "maxtraffic"
    ws.env["BULKSEND_BASE_URL"] = ws.env[f"DOCS_{provider.upper()}_URL"]


@pytest.mark.parametrize("text", list(TEXTS))
def test_every_documented_command_runs_as_shown(text: str, workspace: Workspace) -> None:
    examples = TEXTS[text]()
    assert examples or text.startswith("docs/"), f"no bulksend command found in {text}"
    failures, skipped = [], []
    for example in examples:
        _env_for(example, workspace)
        if adapt(example.text, workspace) is None:
            skipped.append(example.where)
            continue
        failure = run_example(example, workspace)
        if failure:
            failures.append(failure)
    assert not failures, "\n\n".join(failures)
    if skipped:
        pytest.skip(f"REDIS UNAVAILABLE: these examples did NOT run: {', '.join(skipped)}")


def test_the_examples_are_found() -> None:
    """The readers above see the commands the texts show (a reader that finds nothing passes
    everything)."""
    readme = [e.text for e in TEXTS["README.md"]()]
    assert "bulksend retry .bulksend/campaign.journal" in readme
    assert any(
        t.startswith("bulksend send samples/maxtraffic/campaign.toml --recipients") for t in readme
    )
    scaling = [e.text for e in TEXTS["docs/scaling.md"]()]
    loop = next(t for t in scaling if t.startswith("for i in 0 1 2 3; do"))
    assert "bulksend send campaign.toml --shard $i/4" in loop
    assert "\ndone\n" in loop
    helps = [e.where for e in TEXTS["--help"]()]
    assert {"bulksend send --help", "bulksend report merge --help"} <= {
        w.split(":")[0] for w in helps
    }
    workflow = [e.text for e in TEXTS["samples/github-actions.yml"]()]
    assert any("samples/maxtraffic/recipients.csv" in t for t in workflow), workflow
    assert shlex.split(readme[0])[0] == "bulksend"
