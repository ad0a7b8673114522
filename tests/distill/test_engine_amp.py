"""Mixed precision in the distillation engine: bf16 autocast trains on CPU, fp16 is CUDA-only."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from slimkit.core import MethodError
from slimkit.distill.engine import distill
from slimkit.distill.losses import kd_loss


def _mlp(seed: int, width: int = 16) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, width), nn.ReLU(), nn.Linear(width, 4))


def _data(n_batches: int = 4, bs: int = 16, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(bs, 6, generator=g), torch.randint(0, 4, (bs,), generator=g)) for _ in range(n_batches)]


def test_bf16_on_cpu_trains_and_keeps_float32_weights():
    teacher = _mlp(7, width=32)
    student = _mlp(0)
    dtypes: set[torch.dtype] = set()

    def loss(s_out, t_out, batch):
        dtypes.update({s_out.dtype, t_out.dtype})
        return kd_loss(s_out, t_out, batch[1], temperature=2.0, alpha=0.5)

    with torch.no_grad():  # labels the teacher agrees with, so the whole loss is learnable
        data = [(x, teacher(x).argmax(-1)) for x, _ in _data()]
    res = distill(student, teacher, data, loss=loss, steps=30, lr=1e-2, schedule="constant",
                  clip_norm=1.0, amp="bf16")
    assert dtypes == {torch.bfloat16}  # both forwards really ran under autocast
    assert all(p.dtype == torch.float32 for p in student.parameters())
    assert all(p.dtype == torch.float32 for p in teacher.parameters())
    first, last = sum(res.losses[:5]) / 5, sum(res.losses[-5:]) / 5
    assert last < 0.8 * first, (first, last)


def test_none_runs_in_float32_without_warnings():
    seen: list[torch.dtype] = []

    def loss(s_out, t_out, batch):
        seen.append(s_out.dtype)
        return nn.functional.cross_entropy(s_out, batch[1])

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a disabled GradScaler on CPU must not warn
        distill(_mlp(0), None, _data(), loss=loss, steps=2)
    assert seen == [torch.float32, torch.float32]


def test_fp16_on_cpu_is_refused():
    with pytest.raises(MethodError, match="fp16.*CUDA"):
        distill(_mlp(0), None, _data(), loss=lambda s, t, b: s.sum(), steps=1, amp="fp16")


def test_unknown_amp_is_refused():
    with pytest.raises(MethodError, match="amp must be"):
        distill(_mlp(0), None, _data(), loss=lambda s, t, b: s.sum(), steps=1, amp="int8")  # type: ignore[arg-type]
