"""Hypothesis profiles for the whole test suite, and the launcher of 2-process tests.

``default`` keeps property tests small and deterministic (``derandomize``: the same
examples on every run, no deadline: CPU time is shared). ``nightly`` runs many more
examples, still without a deadline::

    pytest --hypothesis-profile nightly tests/test_invariants.py

Tests with their own ``@settings(max_examples=...)`` keep that count under every
profile and take the rest (deadline, derandomize) from the loaded profile.
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import settings

settings.register_profile("default", max_examples=30, deadline=None, derandomize=True)
settings.register_profile("nightly", max_examples=2000, deadline=None, derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def free_port() -> int:
    """A TCP port nobody listens on now, for torchrun's rendezvous."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def fresh_accelerate_state():
    """Accelerate keeps one process-wide state whose mixed precision cannot change once set: a
    test that trains with another precision than the tests before it starts from a fresh one,
    and leaves a fresh one behind."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture
def run_two_processes():
    """Runs ``script *args`` as 2 CPU processes (torchrun, gloo); the test fails with their stderr if they fail."""

    def run(script: Path, *args) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                   "--master_port", str(free_port()), str(script), *map(str, args)]
        completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert completed.returncode == 0, completed.stderr[-3000:]

    return run


@pytest.fixture
def recording_search():
    """Makes real :class:`NeighborSearch` objects that also record every ``k`` asked of them (``.asked``)."""
    from softcontrast.components.neighbors import NeighborSearch

    class RecordingSearch(NeighborSearch):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.asked: list[int] = []

        def search(self, queries, k):
            self.asked.append(k)
            return super().search(queries, k)

    return RecordingSearch
