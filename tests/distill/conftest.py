"""Distillation tests run single-threaded: the engine's results are compared bit for bit, and
one thread keeps float summation order (and the timing of the whole folder) stable."""
from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="module")
def _one_thread_per_module(one_thread_module: None) -> None:
    """Every module here uses the shared module-scoped single-thread fixture."""
