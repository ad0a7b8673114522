"""The engine's StepHook protocol: extra loss terms, after-step calls, and what it refuses."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from slimkit.core import MethodError
from slimkit.train import Checkpoint, TrainOptions, outputs_loss, train

pytestmark = pytest.mark.usefixtures("one_thread")


def _data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(8, 4, generator=g), torch.randn(8, 1, generator=g)) for _ in range(3)]


def _mse(out: torch.Tensor, t_out: object, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return nn.functional.mse_loss(out, batch[1])


class Recorder:
    """A hook adding ``c * sum(w^2)`` and logging each after-step call with the weight's gradient seen."""

    def __init__(self, weight: torch.Tensor, c: float) -> None:
        self.weight, self.c = weight, c
        self.calls: list[tuple[int, bool]] = []

    def loss(self, model: nn.Module) -> torch.Tensor:
        return self.c * self.weight.pow(2).sum()

    def step(self, t: int) -> None:
        self.calls.append((t, self.weight.grad is not None))


@pytest.mark.parametrize("accum", [1, 3])
def test_hook_loss_counts_once_per_step_and_step_sees_the_gradients(accum: int) -> None:
    torch.manual_seed(0)
    twin = nn.Linear(4, 1)
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    w0 = model.weight.detach().clone()
    plain = train(twin, outputs_loss(_mse), _data(), TrainOptions(steps=1, grad_accum=accum, schedule="constant"))
    hook = Recorder(model.weight, 0.5)
    res = train(model, outputs_loss(_mse), _data(), TrainOptions(steps=4, grad_accum=accum, schedule="constant"),
                hooks=[hook])
    assert hook.calls == [(0, True), (1, True), (2, True), (3, True)]
    # the penalty enters the step's loss once, whatever the accumulation
    assert res.losses[0] - plain.losses[0] == pytest.approx(0.5 * float(w0.pow(2).sum()), rel=1e-5)


def test_engine_refuses_non_hooks_and_checkpointing_hook_state(tmp_path: Path) -> None:
    opts = TrainOptions(steps=2)
    with pytest.raises(MethodError, match="step hook"):
        train(nn.Linear(4, 1), outputs_loss(_mse), _data(), opts, hooks=[object()])  # type: ignore[list-item]
    with pytest.raises(MethodError, match="checkpoint"):
        train(nn.Linear(4, 1), outputs_loss(_mse), _data(), opts, hooks=[Recorder(torch.zeros(1), 0.0)],
              checkpoint=Checkpoint(tmp_path))
    with pytest.raises(MethodError, match="eval_fn"):
        train(nn.Linear(4, 1), outputs_loss(_mse), _data(), TrainOptions(steps=2, keep_best=True))
