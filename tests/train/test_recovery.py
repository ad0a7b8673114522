from __future__ import annotations

import pytest
import torch
from torch import nn

import slimkit
from slimkit.core import Context, MethodError
from slimkit.train import BnRecalibrateTrain


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.5),
                         nn.Conv2d(8, 4, 3, padding=1), nn.BatchNorm2d(4))


def test_running_stats_become_the_calibration_statistics() -> None:
    model = _net().eval()
    x = torch.randn(16, 3, 6, 6) * 3 + 1
    out = slimkit.apply(model, BnRecalibrateTrain(batches=4), ctx=Context(calib_data=[x]))
    with torch.no_grad():
        h = out[0](x)  # [16, 8, 6, 6] input of the first BN
    torch.testing.assert_close(out[1].running_mean, h.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(out[1].running_var, h.var(dim=(0, 2, 3), unbiased=True))
    assert out[1].momentum == model[1].momentum and not out.training  # settings restored
    assert not torch.equal(out[1].running_mean, model[1].running_mean)  # the caller's model is untouched
    assert slimkit.records(out)[0].summary == {"batches": 1, "layers": 2}


def test_needs_calibration_data_and_batchnorm() -> None:
    with pytest.raises(MethodError, match="calib_data"):
        slimkit.apply(_net(), BnRecalibrateTrain())
    with pytest.raises(MethodError, match="no BatchNorm"):
        slimkit.apply(nn.Sequential(nn.Linear(2, 2)), BnRecalibrateTrain(), ctx=Context(calib_data=[torch.randn(1, 2)]))
