"""The quantisation tests use small tensors: run them on one intra-op thread.

On a shared 2-core machine, two spinning intra-op threads made small ops here up to
~50x slower (measured: MSEObserver 0.025 s on 1 thread vs 1.2-1.4 s on 2 threads under
load); the previous setting is restored afterwards.
"""
from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    """Every test in this folder uses the shared ``one_thread`` fixture."""
