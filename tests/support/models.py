"""Tiny models for the support matrix (random weights, built offline, seconds to build).

Every architecture of the structured-pruning generality suite (``tests/prune/models.py``)
plus the ones the support matrix adds: HF Qwen2, Mistral, GPT-NeoX, BART, the Whisper and
wav2vec2 encoders, DeiT, Swin, and plain-torch DenseNet, U-Net, LSTM / GRU classifiers and a
model built around ``nn.MultiheadAttention``. Sizes follow one rule where the architecture
has them: hidden 32, 2 layers, 4 heads, images 32x32 (or 16x16 for the ViT family).

A :class:`Spec` is ``(factory, notes)``: ``factory()`` returns ``(model, example_inputs)``
(``example_inputs`` as :func:`slimkit.core.context.call_model` takes it), and the notes say
what a cell must check beyond the generic rules (the module that must shrink, the block
list that ``prune.layers`` acts on).
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from prune.models import FACTORIES as PRUNE_FACTORIES  # noqa: E402  (tests/ is on sys.path)

Factory = Callable[[], tuple[nn.Module, Any]]


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- hand-written torch models -------------------------------------------------------------
def _bn_relu_conv(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, cout, k, padding=k // 2, bias=False))


class DenseLayer(nn.Module):
    """DenseNet-BC layer: BN-ReLU-Conv1x1 (bottleneck) then BN-ReLU-Conv3x3; output concatenated to the input."""

    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.bottleneck = _bn_relu_conv(cin, 2 * growth, 1)
        self.conv = _bn_relu_conv(2 * growth, growth, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv(self.bottleneck(x))], dim=1)  # [B, cin + growth, H, W]


class DenseNet(nn.Module):
    """A two-block DenseNet-BC (Huang et al. 2017) for 32x32 images, written out in torch."""

    def __init__(self, growth: int = 8, num_classes: int = 10) -> None:
        super().__init__()
        c = 16
        self.stem = nn.Conv2d(3, c, 3, padding=1, bias=False)
        blocks: list[nn.Module] = []
        for i in range(2):
            for _ in range(2):
                blocks.append(DenseLayer(c, growth))
                c += growth
            if i == 0:  # transition: compress to half the channels, halve the resolution
                blocks += [_bn_relu_conv(c, c // 2, 1), nn.AvgPool2d(2)]
                c //= 2
        self.features = nn.Sequential(*blocks)
        self.norm = nn.BatchNorm2d(c)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.norm(self.features(self.stem(x))))     # [B, C, 16, 16]
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())


class UNet(nn.Module):
    """A two-level U-Net (Ronneberger et al. 2015): skip concatenations and transposed-conv upsampling."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.enc1, self.enc2, self.mid = _double_conv(3, 8), _double_conv(8, 16), _double_conv(16, 32)
        self.up2, self.dec2 = nn.ConvTranspose2d(32, 16, 2, stride=2), _double_conv(32, 16)
        self.up1, self.dec1 = nn.ConvTranspose2d(16, 8, 2, stride=2), _double_conv(16, 8)
        self.head = nn.Conv2d(8, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)                                    # [B, 8, 32, 32]
        e2 = self.enc2(nn.functional.max_pool2d(e1, 2))      # [B, 16, 16, 16]
        m = self.mid(nn.functional.max_pool2d(e2, 2))        # [B, 32, 8, 8]
        d2 = self.dec2(torch.cat([self.up2(m), e2], 1))      # [B, 16, 16, 16]
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))     # [B, 8, 32, 32]
        return self.head(d1)                                 # [B, classes, 32, 32]


class RecurrentClassifier(nn.Module):
    """Embedding -> LSTM / GRU -> last step -> Linear-ReLU-Linear head (a text classifier)."""

    def __init__(self, cell: str = "LSTM", vocab: int = 50, dim: int = 16, hidden: int = 32,
                 num_classes: int = 5) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.rnn = getattr(nn, cell)(dim, hidden, batch_first=True)
        self.fc1 = nn.Linear(hidden, 24)
        self.fc2 = nn.Linear(24, num_classes)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.embed(input_ids))            # [B, T, hidden]
        return self.fc2(torch.relu(self.fc1(out[:, -1])))   # [B, classes]


class MHAEncoder(nn.Module):
    """One post-LN transformer block built from ``nn.MultiheadAttention``, mean-pooled into a classifier."""

    def __init__(self, vocab: int = 50, dim: int = 32, heads: int = 4, ffn: int = 48, num_classes: int = 5) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm1 = nn.LayerNorm(dim)
        self.ff1, self.ff2 = nn.Linear(dim, ffn), nn.Linear(ffn, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.classifier = nn.Linear(dim, num_classes)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(input_ids)                                     # [B, T, dim]
        x = self.norm1(x + self.attn(x, x, x, need_weights=False)[0])
        x = self.norm2(x + self.ff2(torch.relu(self.ff1(x))))
        return self.classifier(x.mean(dim=1))                         # [B, classes]


def _torch_model(make: Callable[[], nn.Module], inputs: Callable[[], Any]) -> Factory:
    def factory() -> tuple[nn.Module, Any]:
        torch.manual_seed(0)
        return make().eval(), inputs()

    return factory


def _ids(vocab: int = 50, batch: int = 2, seq: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, seq), generator=_gen(seed))


# -- HF models from small random configs -----------------------------------------------------
def _hf(config_cls: str, model_cls: str, inputs: Callable[[], Any], sub: str | None = None,
        post: Callable[[nn.Module], None] | None = None, **cfg: Any) -> Factory:
    def factory() -> tuple[nn.Module, Any]:
        import transformers

        torch.manual_seed(0)
        model = getattr(transformers, model_cls)(getattr(transformers, config_cls)(**cfg))
        if sub is not None:
            model = getattr(model, sub)
        if post is not None:
            with torch.no_grad():
                post(model)
        return model.eval(), inputs()

    return factory


_DECODER = {"vocab_size": 50, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "intermediate_size": 48, "max_position_embeddings": 16, "use_cache": False}
_VIT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 48,
        "image_size": 16, "patch_size": 4}


def _token_batch() -> dict[str, torch.Tensor]:
    return {"input_ids": _ids()}


def _image_batch(size: int) -> Callable[[], torch.Tensor]:
    return lambda: torch.randn(2, 3, size, size, generator=_gen())


def _random_tables(model: nn.Module) -> None:
    """Swin initialises its relative position bias tables to zero; random ones make a wrong
    slice of them visible in the output."""
    for name, p in model.named_parameters():
        if name.endswith("relative_position_bias_table"):
            p.normal_(0.0, 0.5)


def _kaiming_convs(model: nn.Module) -> None:
    """HF's MobileNetV2 init (std 0.02 convs) makes the random tiny model's output vanish
    (~1e-25), which would make every numeric check vacuous; He init keeps it O(1)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")


NEW_FACTORIES: dict[str, Factory] = {
    "mobilenet_v2": _hf("MobileNetV2Config", "MobileNetV2Model", _image_batch(16), post=_kaiming_convs,
                        depth_multiplier=0.35),
    "qwen2": _hf("Qwen2Config", "Qwen2Model", _token_batch, **_DECODER),
    "mistral": _hf("MistralConfig", "MistralModel", _token_batch, **_DECODER),
    "gpt_neox": _hf("GPTNeoXConfig", "GPTNeoXModel", _token_batch, vocab_size=50, hidden_size=32,
                    num_hidden_layers=2, num_attention_heads=4, intermediate_size=48, max_position_embeddings=16,
                    use_cache=False),
    "bart": _hf("BartConfig", "BartModel", _token_batch, vocab_size=50, d_model=32, encoder_layers=2,
                decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=48,
                decoder_ffn_dim=48, max_position_embeddings=16, use_cache=False),
    "whisper_encoder": _hf("WhisperConfig", "WhisperModel",
                           lambda: {"input_features": torch.randn(2, 8, 16, generator=_gen())}, sub="encoder",
                           d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                           decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48, num_mel_bins=8,
                           max_source_positions=8, max_target_positions=16, vocab_size=50, use_cache=False,
                           pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1),
    "wav2vec2": _hf("Wav2Vec2Config", "Wav2Vec2Model",
                    lambda: {"input_values": torch.randn(2, 400, generator=_gen())},
                    hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                    conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=8,
                    num_conv_pos_embedding_groups=4, vocab_size=50),
    "deit": _hf("DeiTConfig", "DeiTModel", _image_batch(16), **_VIT),
    "swin": _hf("SwinConfig", "SwinModel", _image_batch(32), post=_random_tables, image_size=32, patch_size=4, embed_dim=16,
                depths=[1, 1], num_heads=[2, 4], window_size=4),
    "densenet": _torch_model(DenseNet, _image_batch(32)),
    "unet": _torch_model(UNet, _image_batch(32)),
    "lstm": _torch_model(lambda: RecurrentClassifier("LSTM"), _ids),
    "gru": _torch_model(lambda: RecurrentClassifier("GRU"), _ids),
    "mha": _torch_model(MHAEncoder, _ids),
}


@dataclasses.dataclass(frozen=True)
class Spec:
    """One architecture of the matrix and what its cells check beyond the generic rules."""

    factory: Factory
    family: str  # "hf-text", "hf-vision", "hf-audio", "torch", ... (for the docs table)
    # modules whose parameter count must drop under prune.channel / prune.heads: the part of
    # the model the method is about (the recurrent layer, the attention module). Pruning only
    # the classifier around them does not count as support.
    must_shrink: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    layer_targets: tuple[str, ...] = ("*",)  # Targets.include for prune.layers (one list of an enc-dec)


_FAMILY = {"bert": "hf-text", "roberta": "hf-text", "distilbert": "hf-text", "gpt2": "hf-text",
           "llama_gqa": "hf-text", "t5_encoder": "hf-text", "vit": "hf-vision", "convnext": "hf-vision",
           "resnet": "hf-vision", "mobilenet_v2": "hf-vision", "efficientnet_lite0": "pip",
           "residual_concat_cnn": "torch", "digits_cnn": "torch", "qwen2": "hf-text", "mistral": "hf-text",
           "gpt_neox": "hf-text", "bart": "hf-text (enc-dec)", "whisper_encoder": "hf-audio",
           "wav2vec2": "hf-audio", "deit": "hf-vision", "swin": "hf-vision", "densenet": "torch",
           "unet": "torch", "lstm": "torch", "gru": "torch", "mha": "torch"}

_EXTRA: dict[str, dict[str, Any]] = {
    "lstm": {"must_shrink": {"prune.channel": ("rnn",)}},
    "gru": {"must_shrink": {"prune.channel": ("rnn",)}},
    "mha": {"must_shrink": {"prune.heads": ("attn",)}},
    "bart": {"layer_targets": ("encoder.layers",)},
}

MODELS: dict[str, Spec] = {
    name: Spec(factory=f, family=_FAMILY[name], **_EXTRA.get(name, {}))
    for name, f in {**PRUNE_FACTORIES, **NEW_FACTORIES}.items()
}



def tiny_minilm(seed: int = 0) -> nn.Module:
    """MiniLM's shape in miniature (for the MiniLM presets' tests): 6 layers, 12 heads of 4 dims,
    mean-pooled normalised embeddings, random weights."""
    import transformers

    from slimkit.zoo.minilm import SentenceEmbedder

    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=60, hidden_size=48, num_hidden_layers=6, num_attention_heads=12,
                                     intermediate_size=64, max_position_embeddings=16)
    return SentenceEmbedder(transformers.BertModel(config)).eval()


__all__ = ["MODELS", "Spec", "DenseNet", "UNet", "RecurrentClassifier", "MHAEncoder", "tiny_minilm"]
