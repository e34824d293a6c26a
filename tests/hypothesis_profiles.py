"""Hypothesis profiles, loaded by conftest.

* ``ci`` (the default): derandomized -- every run draws the same examples, so the suite passes or
  fails the same way on every machine (a CI run that fails one time in a few hides real failures).
* ``explore`` (``BULKSEND_HYPOTHESIS=explore``): fresh random examples, 20 times as many, to look
  for new failures on demand; a failure prints the example and the blob to reproduce it.

Tests that set their own ``max_examples`` use ``examples(n)``, so the explore profile widens them.
"""

from __future__ import annotations

import os

from hypothesis import settings

PROFILE = os.environ.get("BULKSEND_HYPOTHESIS", "ci")
SCALE = 20 if PROFILE == "explore" else 1

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile(
    "explore", derandomize=False, deadline=None, print_blob=True, max_examples=2000
)
settings.load_profile(PROFILE)


def examples(n: int) -> int:
    """``n`` examples in CI, ``20 * n`` when exploring."""
    return n * SCALE
