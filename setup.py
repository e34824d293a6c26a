"""Builds the optional C extensions; the project's metadata is in pyproject.toml.

``bulksend.dedup._keyset`` makes deduplication several times faster, ``bulksend.sources._split``
reads CSV blocks about twice as fast. They are optional: without a C compiler (or Python's
headers) the build prints a warning, the install still succeeds, and bulksend uses the numpy key
set and splits CSV with ``str`` methods and ``csv.reader`` instead (as it does with
``BULKSEND_NO_EXTENSIONS=1``).
"""

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class BuildExt(build_ext):
    """``-O2`` (``/O2`` for MSVC) for the extension, whatever Python itself was built with."""

    def build_extensions(self) -> None:
        flag = "/O2" if self.compiler.compiler_type == "msvc" else "-O2"
        for extension in self.extensions:
            extension.extra_compile_args = [*extension.extra_compile_args, flag]
        super().build_extensions()


setup(
    ext_modules=[
        Extension("bulksend.dedup._keyset", ["bulksend/dedup/_keyset.c"], optional=True),
        Extension("bulksend.sources._split", ["bulksend/sources/_split.c"], optional=True),
    ],
    cmdclass={"build_ext": BuildExt},
)
