"""zoo:efficientnet-lite0: the packaged ImageNet weights, ReLU6 network, and top-1 on the ImageNet sample."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from slimkit import zoo
from slimkit.zoo.efficientnet import normalize_images


@pytest.fixture(scope="module")
def effnet() -> zoo.ZooModel:
    return zoo.load("zoo:efficientnet-lite0")


def test_structure_and_inputs(effnet: zoo.ZooModel) -> None:
    m = effnet.model
    assert effnet.family == "image" and effnet.default_task == "imagenet-sample" and not m.training
    assert sum(p.numel() for p in m.parameters()) == 4_652_008
    acts = {type(mod).__name__ for mod in m.modules()}
    assert "ReLU6" in acts and not acts & {"MemoryEfficientSwish", "Swish"}  # lite: traceable ReLU6 only
    x = effnet.example_inputs(1)
    assert x.shape == (1, 3, 224, 224) and -1.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert torch.equal(effnet.example_inputs(2)[:1], x)  # deterministic
    graph = torch.fx.symbolic_trace(m)  # no custom autograd function in the way of tracing
    with torch.no_grad():
        y = m(x)
        assert y.shape == (1, 1000) and torch.allclose(graph(x), y, atol=1e-5)


def test_normalisation_maps_pixels_to_plus_minus_one() -> None:
    px = torch.tensor([0, 255, 128], dtype=torch.uint8).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    out = normalize_images(px)
    assert out[0, :, 0, 0].tolist() == pytest.approx([-1.0, 1.0, 128 / 127.5 - 1.0], abs=1e-6)


@pytest.mark.slow
@pytest.mark.data
def test_top1_on_the_imagenet_eval_half(effnet: zoo.ZooModel, data_dir: Path) -> None:
    task = zoo.get_task("imagenet-sample")
    m = task.evaluate(effnet, limit=100)
    assert m["n"] == 100 and m["accuracy"] > 0.6 and m["top5"] >= m["accuracy"]
    calib = task.calibration_batches(effnet, 1, 4)
    assert calib[0].shape == (4, 3, 224, 224) and calib[0].dtype == torch.float32
    x, y = next(iter(task.train_batches(effnet, 2)))
    assert x.shape == (2, 3, 224, 224) and int(y.max()) < 500  # training uses the calibration half only
    assert isinstance(task.loss_fn(effnet.model, (x, y)), torch.Tensor)
    with pytest.raises(zoo.data.DataError, match="input"):
        zoo.get_task("digits").check_model(effnet)
