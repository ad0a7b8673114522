"""Structured pruning of ``zoo:minilm-l6`` with the Torch-Pruning library (``torch_pruning``).

Whole attention heads (``prune_num_heads=True``, ``prune_head_dims=False``) and FFN
neurons (``intermediate.dense`` outputs) are removed with L1 magnitude importance
(``tp.importance.MagnitudeImportance(p=1)``), the same ``ratio`` for heads and FFN, per
layer (``global_pruning=False``: every layer keeps the same number of heads / neurons).
The hidden width (384) is kept: embeddings, LayerNorms, the attention output dense's and
the FFN output dense's outputs and the pooler (if any) are ignored layers. No recovery
training is done here.

Run ``python benchmarks/tp_minilm.py`` for the ratio-0.5 figures.
"""
from __future__ import annotations

import copy

import torch
import torch_pruning as tp
from torch import nn


def _bert_layers(encoder: nn.Module) -> list[nn.Module]:
    """The transformer blocks of a HF BERT-like encoder (modules with ``.attention.self``)."""
    return [m for m in encoder.encoder.layer]


def _fix_attention(model: nn.Module, num_heads: dict[nn.Module, int]) -> None:
    """Update the HF self-attention modules' head bookkeeping after pruning (and the config)."""
    encoder = model.encoder
    heads, ffn = [], []
    for layer in _bert_layers(encoder):
        att = layer.attention.self
        n = int(num_heads[att.query])
        if att.query.out_features % n:
            raise RuntimeError(f"query width {att.query.out_features} is not a multiple of {n} heads")
        att.num_attention_heads = n
        att.attention_head_size = att.query.out_features // n
        att.all_head_size = att.query.out_features
        if hasattr(att, "scaling"):  # head size is unchanged (whole heads), so this stays the same
            att.scaling = att.attention_head_size ** -0.5
        heads.append(n)
        ffn.append(layer.intermediate.dense.out_features)
    cfg = encoder.config
    if len(set(heads)) == 1:
        cfg.num_attention_heads = heads[0]
    if len(set(ffn)) == 1:
        cfg.intermediate_size = ffn[0]


def prune_minilm_tp(model: nn.Module, example_inputs: dict, ratio: float,
                    *, global_pruning: bool = False) -> nn.Module:
    """Return a pruned copy of the MiniLM ``SentenceEmbedder`` (the input is left untouched).

    ``ratio`` is the fraction of attention heads and of FFN neurons removed (per layer
    unless ``global_pruning``). Importance is L1 weight magnitude (Torch-Pruning's
    ``MagnitudeImportance(p=1)``), so no data beyond ``example_inputs`` (used for tracing) is
    needed.
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio must be in [0, 1), got {ratio}")
    pruned = copy.deepcopy(model)
    if ratio == 0.0:
        return pruned
    was_training = pruned.training
    pruned.eval()
    encoder = pruned.encoder

    num_heads: dict[nn.Module, int] = {}
    ignored: list[nn.Module] = [encoder.embeddings]
    for layer in _bert_layers(encoder):
        att = layer.attention.self
        for lin in (att.query, att.key, att.value):
            num_heads[lin] = att.num_attention_heads
        ignored += [layer.attention.output.dense, layer.output.dense]
    ignored += [m for m in pruned.modules() if isinstance(m, nn.LayerNorm)]
    if getattr(encoder, "pooler", None) is not None:
        ignored.append(encoder.pooler)

    # Inputs on the model's device; tracing needs autograd.
    device = next(pruned.parameters()).device
    inputs = {k: v.to(device) for k, v in example_inputs.items()}
    pruner = tp.pruner.MetaPruner(
        pruned,
        inputs,
        importance=tp.importance.MagnitudeImportance(p=1),
        global_pruning=global_pruning,
        pruning_ratio=ratio,  # FFN neurons (intermediate.dense outputs)
        num_heads=num_heads,
        prune_num_heads=True,
        prune_head_dims=False,
        head_pruning_ratio=ratio,  # whole heads
        ignored_layers=ignored,
    )
    with torch.enable_grad():
        pruner.step()
    _fix_attention(pruned, pruner.num_heads)
    pruned.train(was_training)
    return pruned


def _main() -> None:
    import time
    from pathlib import Path

    from slimkit import zoo
    from slimkit.export.onnx import OrtModel, export_onnx
    from slimkit.measure import profile

    torch.set_num_threads(1)
    zm = zoo.load("zoo:minilm-l6")
    model = zm.model.eval()
    ex = zm.example_inputs(1, 128)
    small = zm.example_inputs(2, 16)
    with torch.no_grad():
        ref_small = model(**small)

    t0 = time.time()
    pruned = prune_minilm_tp(model, ex, 0.5).eval()
    print(f"pruning took {time.time() - t0:.1f}s")
    with torch.no_grad():
        assert torch.equal(model(**small), ref_small), "input model was modified"
        out = pruned(**small)

    nparams = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    print(f"params: {nparams(model):,} -> {nparams(pruned):,}")
    print(f"MACs (1x128): {profile(model, ex).macs:,} -> {profile(pruned, ex).macs:,}")
    for i, layer in enumerate(pruned.encoder.encoder.layer):
        a = layer.attention.self
        print(f"layer {i}: heads {a.num_attention_heads} x {a.attention_head_size}, "
              f"FFN {layer.intermediate.dense.out_features}")
    print(f"config: num_attention_heads={pruned.config.num_attention_heads}, "
          f"intermediate_size={pruned.config.intermediate_size}")
    print(f"forward on 2x16 ok: shape {tuple(out.shape)}, finite={bool(torch.isfinite(out).all())}, "
          f"max|pruned - unpruned| = {(out - ref_small).abs().max().item():.4f}, "
          f"mean cosine to unpruned = {nn.functional.cosine_similarity(out, ref_small).mean().item():.4f}")

    path = Path("/tmp/tpm/x.onnx")
    export_onnx(pruned, ex, path)
    ort_out = OrtModel(path)(**small)
    print(f"ONNX: {path} ({path.stat().st_size / 1e6:.1f} MB), "
          f"max|ORT - torch| on 2x16 = {(ort_out - out).abs().max().item():.2e}")

    t0 = time.time()
    res = zoo.get_task("stsb").evaluate(pruned, zm)
    print(f"STS-B test Spearman x100 (pruned, no recovery): {res['spearman_x100']:.2f} "
          f"(unpruned 81.03) [{time.time() - t0:.0f}s]")


if __name__ == "__main__":
    _main()
