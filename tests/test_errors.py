"""One exception tree: every exception class bulksend defines is a ``BulksendError`` and is
drawn in ``bulksend.errors``' docstring (the sandbox, a separate server whose exceptions only
build its HTTP answers, is the documented exception)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import bulksend
from bulksend import errors
from bulksend.errors import BulksendError


def defined_exceptions() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(bulksend.__path__, "bulksend."):
        if info.name.startswith("bulksend.sandbox") or info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__.startswith("bulksend")
            ):
                found[f"{value.__module__}.{name}"] = value
    return found


def test_every_exception_is_a_bulksend_error_defined_in_errors() -> None:
    found = defined_exceptions()
    assert len(found) >= 10  # the walk sees the package
    for where, cls in found.items():
        assert issubclass(cls, BulksendError), where
        assert cls.__module__ == "bulksend.errors", f"{where} is defined outside errors.py"


def test_the_tree_in_the_docstring_names_every_class() -> None:
    doc = errors.__doc__ or ""
    for cls in {c for c in defined_exceptions().values()}:
        assert f" {cls.__name__}\n" in doc or f" {cls.__name__} " in doc, cls.__name__
