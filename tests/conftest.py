"""Shared test setup: deterministic, single-process-friendly torch, and the data folder."""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from slimkit.core import Context

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "int8: checks an int8 kernel or the int8 ISA choice (rerun under forced "
                                       "lower ISAs by `make test-int8-avx2`)")


def pytest_report_header(config: pytest.Config) -> list[str]:
    """The CPU's int8 capability: int8 results legitimately depend on it (see docs/quantization.md)."""
    from slimkit.core.cpu import FORCING_ENVS, int8_isa

    forced = [f"{k}={os.environ[k]}" for k in (*FORCING_ENVS, "ATEN_CPU_CAPABILITY", "SLIMKIT_INT8_ISA")
              if os.environ.get(k)]
    return [int8_isa().line(), f"torch CPU capability: {torch.backends.cpu.get_cpu_capability()}; "
            f"forcing: {' '.join(forced) or 'none'}"]


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


def _single_thread() -> Iterator[None]:
    """One intra-op thread: tiny tensors are fastest there, and on a shared machine two
    threads waiting for each other can make a 10 ms step take 300 ms."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# one test at a time, or a whole module (``pytestmark = pytest.mark.usefixtures("one_thread_module")``)
one_thread = pytest.fixture(_single_thread)
one_thread_module = pytest.fixture(_single_thread, scope="module")


@pytest.fixture
def digits_finetune_ctx() -> Context:
    """Context for fine-tuning on the digits train split: batches of 64 in a fixed order, CE loss."""
    from slimkit.zoo.digits import digits_split

    x_tr, y_tr, _, _ = digits_split()
    perm = torch.randperm(len(y_tr), generator=torch.Generator().manual_seed(0))
    batches = [(x_tr[perm[i:i + 64]], y_tr[perm[i:i + 64]]) for i in range(0, len(perm), 64)]
    return Context(train_data=batches, progress=False,
                   loss_fn=lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]))
