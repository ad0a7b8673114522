"""Tiny models for the structured-pruning generality suite (random weights, built offline).

Each factory returns ``(model, example_inputs)``; ``example_inputs`` is what
``slimkit.core.context.call_model`` takes (a tensor or a dict of kwargs). Sizes are
small so tracing and pruning every architecture stays within a few seconds.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")


class ResidualConcatNet(nn.Module):
    """Hand-written CNN exercising residual adds, concatenation, depthwise convs and flatten."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.branch_a = nn.Sequential(nn.Conv2d(8, 6, 1), nn.BatchNorm2d(6), nn.ReLU())
        self.branch_b = nn.Sequential(nn.Conv2d(8, 10, 3, padding=1), nn.ReLU())
        # concat(6 + 10) -> depthwise -> pointwise back to 8 for the residual add
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.dw_bn = nn.BatchNorm2d(16)
        self.pw = nn.Conv2d(16, 8, 1)
        self.head_conv = nn.Conv2d(8, 12, 3, stride=2, padding=1)
        self.fc1 = nn.Linear(12 * 4 * 4, 20)
        self.fc2 = nn.Linear(20, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stem(x)                                             # [B, 8, 8, 8]
        c = torch.cat([self.branch_a(s), self.branch_b(s)], dim=1)   # [B, 16, 8, 8]
        y = self.pw(torch.relu(self.dw_bn(self.dw(c)))) + s          # residual: couples pw out with stem
        y = torch.relu(self.head_conv(y))                            # [B, 12, 4, 4]
        return self.fc2(torch.relu(self.fc1(torch.flatten(y, 1))))


class DigitsLikeCNN(nn.Module):
    """Conv-BN-ReLU x3, flatten -> Linear -> Linear (like zoo:digits-cnn)."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 1
        for cout in (8, 16, 16):
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]
            cin = cout
        layers.insert(6, nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(16 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _ids(vocab: int = 50, batch: int = 2, seq: int = 6) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"input_ids": torch.randint(0, vocab, (batch, seq), generator=g)}


def _text(cls_name: str, model_cls: str, **cfg: Any) -> Callable[[], tuple[nn.Module, Any]]:
    def make() -> tuple[nn.Module, Any]:
        import transformers

        torch.manual_seed(0)
        config = getattr(transformers, cls_name)(**cfg)
        model = getattr(transformers, model_cls)(config).eval()
        return model, _ids()

    return make


def _image(cls_name: str, model_cls: str, size: int, **cfg: Any) -> Callable[[], tuple[nn.Module, Any]]:
    def make() -> tuple[nn.Module, Any]:
        import transformers

        torch.manual_seed(0)
        config = getattr(transformers, cls_name)(**cfg)
        model = getattr(transformers, model_cls)(config).eval()
        return model, torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))

    return make


def _cnn(cls: type[nn.Module], shape: tuple[int, ...]) -> Callable[[], tuple[nn.Module, Any]]:
    def make() -> tuple[nn.Module, Any]:
        torch.manual_seed(0)
        return cls().eval(), torch.randn(*shape, generator=torch.Generator().manual_seed(0))

    return make


def _efficientnet() -> tuple[nn.Module, Any]:
    from efficientnet_lite_pytorch import EfficientNet

    torch.manual_seed(0)
    model = EfficientNet.from_name("efficientnet-lite0").eval()
    return model, torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))


_T: dict[str, Any] = {"vocab_size": 50, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                      "intermediate_size": 48, "max_position_embeddings": 16}

FACTORIES: dict[str, Callable[[], tuple[nn.Module, Any]]] = {
    "bert": _text("BertConfig", "BertModel", **_T),
    "roberta": _text("RobertaConfig", "RobertaModel", **{**_T, "max_position_embeddings": 20, "pad_token_id": 1}),
    "distilbert": _text("DistilBertConfig", "DistilBertModel", vocab_size=50, dim=32, n_layers=2, n_heads=4,
                        hidden_dim=48, max_position_embeddings=16),
    "gpt2": _text("GPT2Config", "GPT2Model", vocab_size=50, n_embd=32, n_layer=2, n_head=4, n_positions=16, use_cache=False),
    "llama_gqa": _text("LlamaConfig", "LlamaModel", vocab_size=50, hidden_size=32, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, intermediate_size=48,
                       max_position_embeddings=16, use_cache=False),
    "t5_encoder": _text("T5Config", "T5EncoderModel", vocab_size=50, d_model=32, d_kv=8, d_ff=48, num_layers=2,
                        num_heads=4, use_cache=False),
    "vit": _image("ViTConfig", "ViTModel", 16, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=48, image_size=16, patch_size=4),
    "convnext": _image("ConvNextConfig", "ConvNextModel", 32, hidden_sizes=[8, 16], depths=[1, 1], num_stages=2),
    "resnet": _image("ResNetConfig", "ResNetModel", 32, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                     layer_type="bottleneck"),
    "mobilenet_v2": _image("MobileNetV2Config", "MobileNetV2Model", 16, depth_multiplier=0.35),
    "efficientnet_lite0": _efficientnet,
    "residual_concat_cnn": _cnn(ResidualConcatNet, (2, 3, 8, 8)),
    "digits_cnn": _cnn(DigitsLikeCNN, (2, 1, 8, 8)),
}
