#!/usr/bin/env python3
"""One-command set-up and tasks for bulksend, needing only Python 3.11+.

    python3 dev.py demo    # create .venv, install bulksend, send the sample campaign to the sandbox
    python3 dev.py test    # create .venv, install bulksend[dev,plot,metrics], run ruff and mypy
                           # (strict) over all the code, then the whole suite
    python3 dev.py bench   # create .venv, run the benchmarks in benchmarks/

The virtual environment is reused; bulksend is reinstalled when pyproject.toml, setup.py or the
C extension's source changes (an editable install does not recompile C by itself).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("BULKSEND_VENV", ROOT / ".venv"))
#: what the installed environment is built from: a change to any of them reinstalls
BUILD_INPUTS = (
    "pyproject.toml",
    "setup.py",
    "bulksend/dedup/_keyset.c",
    "bulksend/sources/_split.c",
)
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / "python"


def run(*args: str | Path, check: bool = True) -> int:
    print("+", " ".join(str(a) for a in args), flush=True)
    return subprocess.run([str(a) for a in args], cwd=ROOT, check=check).returncode


def ensure_venv(extras: str) -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 - dev.py may run on an older Python
        sys.exit(f"bulksend needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    stamp = VENV / f".bulksend-{extras or 'base'}"
    digest = hashlib.sha256()
    for name in BUILD_INPUTS:
        path = ROOT / name
        digest.update(name.encode() + b"\0" + (path.read_bytes() if path.exists() else b""))
    stamp_text = digest.hexdigest()
    if stamp.exists() and stamp.read_text() == stamp_text and PY.exists():
        return
    if not PY.exists():
        print(f"+ creating virtual environment in {VENV}", flush=True)
        venv.create(VENV, with_pip=True)
    run(PY, "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    # an extension built earlier would stay if this build failed (it is optional): remove it,
    # so a failed build shows (tests/test_dedup.py and tests/test_split.py fail where a C
    # compiler exists)
    for folder, name in (("dedup", "_keyset"), ("sources", "_split")):
        for built in (ROOT / "bulksend" / folder).glob(f"{name}.*.*"):
            if built.suffix in {".so", ".pyd"}:
                built.unlink()
    target = f".[{extras}]" if extras else "."
    run(PY, "-m", "pip", "install", "--quiet", "-e", target)
    stamp.write_text(stamp_text)


def demo() -> int:
    ensure_venv("")
    return run(
        BIN / "bulksend",
        "send",
        "samples/maxtraffic/campaign.toml",
        "--sandbox",
        "--report",
        "out/demo-report.csv",
        check=False,
    )


def test(pytest_args: list[str]) -> int:
    ensure_venv("dev,plot,metrics")
    run(BIN / "ruff", "check", "bulksend", "tests", "benchmarks", "dev.py", "setup.py")
    run(BIN / "ruff", "format", "--check", "bulksend", "tests", "benchmarks", "dev.py", "setup.py")
    run(BIN / "mypy")
    return run(PY, "-m", "pytest", *pytest_args, check=False)


def bench(args: list[str]) -> int:
    ensure_venv("dev,plot,metrics")
    return run(PY, "-m", "benchmarks", *args, check=False)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"demo", "test", "bench"}:
        print(__doc__)
        return 2
    task, rest = argv[0], argv[1:]
    try:
        if task == "demo":
            return demo()
        if task == "test":
            return test(rest)
        return bench(rest)
    except subprocess.CalledProcessError as exc:
        return exc.returncode or 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
