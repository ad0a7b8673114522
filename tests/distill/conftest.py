"""Distillation tests run single-threaded: the engine's results are compared bit for bit, and
one thread keeps float summation order (and the timing of the whole folder) stable."""
from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread_per_module() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
