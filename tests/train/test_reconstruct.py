from __future__ import annotations

import pytest
import torch
from torch import nn

import slimkit
from slimkit.core import Context, MethodError, Targets
from slimkit.prune import ChannelPrune
from slimkit.train import ReconstructTrain, ridge_refit


def test_ridge_refit_recovers_a_linear_map_and_ridge_pulls_to_w0() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 6, generator=g)  # [N, I]
    w, b = torch.randn(3, 6, generator=g), torch.randn(3, generator=g)
    y = x @ w.T + b  # [N, O]
    w0 = torch.zeros(3, 6)
    got_w, got_b = ridge_refit(x, y, w0, torch.zeros(3), ridge=0.0)
    torch.testing.assert_close(got_w, w, atol=1e-5, rtol=1e-5)
    assert got_b is not None
    torch.testing.assert_close(got_b, b, atol=1e-5, rtol=1e-5)
    far_w, _ = ridge_refit(x, y, w0, None, ridge=1e9)  # an enormous pull keeps W0
    assert far_w.abs().max() < 1e-6
    with pytest.raises(ValueError, match="w0"):
        ridge_refit(x, y, torch.zeros(6, 3), None, ridge=0.1)


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(16, 5)).eval()


def test_refit_after_channel_pruning_moves_outputs_back_towards_the_unpruned_model() -> None:
    g = torch.Generator().manual_seed(1)
    calib = [torch.randn(32, 3, 8, 8, generator=g) for _ in range(4)]
    held_out = torch.randn(64, 3, 8, 8, generator=g)
    teacher = _net()
    pruned = slimkit.apply(teacher, ChannelPrune(ratio=0.5), Targets(include=("0",)),
                           Context(example_inputs=calib[0]))
    assert pruned[4].in_features == 8  # physically pruned
    fixed = slimkit.apply(pruned, ReconstructTrain(ridge=1e-3), Targets(include=("4",)),
                          Context(teacher=teacher, calib_data=calib))
    with torch.no_grad():
        ref = teacher(held_out)
        err_pruned = float(((pruned(held_out) - ref) ** 2).mean())
        err_fixed = float(((fixed(held_out) - ref) ** 2).mean())
    assert err_fixed < 0.5 * err_pruned  # on inputs the fit never saw
    (rec,) = [r for r in slimkit.records(fixed) if r.kind == "train.reconstruct"]
    layer = rec.data["layers"]["4"]
    assert layer["samples"] == 128 and layer["mse_after"] < layer["mse_before"]
    assert not torch.equal(pruned[4].weight, fixed[4].weight)  # the input model is untouched


def test_clear_errors() -> None:
    calib = [torch.randn(4, 3, 8, 8)]
    with pytest.raises(MethodError, match="teacher"):
        slimkit.apply(_net(), ReconstructTrain(), Targets(include=("4",)), Context(calib_data=calib))
    with pytest.raises(MethodError, match="only input channels"):
        other = nn.Sequential(*list(_net())[:4], nn.Linear(16, 7)).eval()
        slimkit.apply(_net(), ReconstructTrain(), Targets(include=("4",)), Context(teacher=other, calib_data=calib))
    with pytest.raises(MethodError, match="1x1"):
        slimkit.apply(_net(), ReconstructTrain(), Targets(include=("0",)), Context(teacher=_net(), calib_data=calib))
