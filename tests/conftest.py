"""Hypothesis profiles for the whole test suite.

``default`` keeps property tests small and deterministic (``derandomize``: the same
examples on every run, no deadline: CPU time is shared). ``nightly`` runs many more
examples, still without a deadline::

    pytest --hypothesis-profile nightly tests/test_invariants.py

Tests with their own ``@settings(max_examples=...)`` keep that count under every
profile and take the rest (deadline, derandomize) from the loaded profile.
"""

import os

from hypothesis import settings

settings.register_profile("default", max_examples=30, deadline=None, derandomize=True)
settings.register_profile("nightly", max_examples=2000, deadline=None, derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
