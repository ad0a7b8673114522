"""Shared test setup: deterministic, single-process-friendly torch, and the data folder."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real data sets; a test that needs them fails (never skips) when they are missing."""
    value = os.environ.get("SLIMKIT_DATA")
    if not value or not Path(value).is_dir():
        pytest.fail(
            "SLIMKIT_DATA is not set to the data folder (../shared/data); run the tests with `make test`, "
            "which sets it, or export SLIMKIT_DATA=/path/to/shared/data"
        )
    return Path(value)
