"""The key sets under test: the numpy one always, the C one when its extension was built."""

from __future__ import annotations

import os
import shlex
import shutil
import sysconfig
from pathlib import Path
from typing import Any

import pytest

from bulksend.dedup import keyset_numpy

try:
    from bulksend.dedup import keyset_c as keyset_c  # re-exported to the tests
except ImportError:
    keyset_c = None  # type: ignore[assignment]


def c_compiler() -> str | None:
    """Why the C extension cannot be built here (no compiler, no Python headers), or None."""
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    program = shlex.split(cc)[0] if cc.strip() else "cc"
    if shutil.which(program) is None:
        return f"no C compiler ({program!r} not found)"
    include = sysconfig.get_paths().get("include")
    if not include or not (Path(include) / "Python.h").exists():
        return f"no Python headers (Python.h not in {include})"
    return None


#: why the C key set is missing, for the skip reason of its tests
C_MISSING = (
    "C EXTENSION NOT BUILT -- the C key set tests did NOT run: "
    + (c_compiler() or "a compiler is here, so reinstall: pip install -e .")
    if keyset_c is None
    else ""
)

needs_c = pytest.mark.skipif(keyset_c is None, reason=C_MISSING)

#: parameters for a fixture that runs a test against each key set
BACKENDS: list[str | pytest.ParameterSet] = ["numpy", pytest.param("c", marks=needs_c)]


def backend_class(name: str) -> Any:
    if name == "numpy":
        return keyset_numpy.KeySet
    assert keyset_c is not None
    return keyset_c.KeySet


def spill_fd(ks: Any) -> int:
    """The descriptor of a key set's spill file."""
    if isinstance(ks, keyset_numpy.KeySet):
        return ks._store._fd
    fd: int = ks._table.fileno
    return fd
