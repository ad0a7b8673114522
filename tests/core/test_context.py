"""``core.context.forward_batches``: the one calibration loop (eval mode, no gradients, hooks removed)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from slimkit.core.context import forward_batches


def test_forward_batches_runs_in_eval_without_grad_and_restores_mode_and_hooks() -> None:
    model = nn.Sequential(nn.Linear(3, 2)).train()
    seen: list[tuple[bool, bool]] = []
    hook = model.register_forward_hook(lambda m, i, o: seen.append((m.training, torch.is_grad_enabled())))
    n = forward_batches(model, [torch.randn(4, 3) for _ in range(3)], [hook])
    assert n == 3 and seen == [(False, False)] * 3
    assert model.training
    model(torch.randn(1, 3))
    assert len(seen) == 3  # the hook was removed


def test_forward_batches_run_replaces_the_forward_and_mode_survives_a_failure() -> None:
    model = nn.Linear(3, 2).train()
    calls: list[tuple[bool, torch.Tensor]] = []

    def loss_fn(m: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        calls.append((m.training, batch[1]))
        return ((m(batch[0]) - batch[1]) ** 2).mean()

    data = [(torch.randn(4, 3), torch.randn(4, 2)) for _ in range(2)]
    assert forward_batches(model, data, run=loss_fn) == 2
    assert [t for t, _ in calls] == [False, False] and calls[1][1] is data[1][1]
    assert model.training

    def boom(m: nn.Module, batch: object) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        forward_batches(model, data, run=boom)
    assert model.training
