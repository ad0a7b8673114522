"""attention.linformer and attention.linear on tiny random encoders: shapes, padding, init, replay, export."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import slimkit
from slimkit.attention import LinearAttention, LinearSelfAttention, LinformerAttention, LinformerSelfAttention
from slimkit.core import ConfigError, MethodError, Targets, config_class

from .conftest import padded_batch, tiny_bert, tiny_vit

CONFIGS = {
    "linformer": LinformerAttention(k=8, max_len=32),
    "favor": LinearAttention(feature_map="favor", features=16, seed=3),
    "elu": LinearAttention(feature_map="elu"),
}


def hidden(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).last_hidden_state


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_padding_changes_nothing(name: str, impl: str) -> None:
    """Each padded row equals the same sentence run alone, unpadded (eager and SDPA masks)."""
    model = slimkit.apply(tiny_bert(impl), CONFIGS[name])
    batch = padded_batch()
    out = hidden(model, batch)
    assert out.shape == (3, 9, 32) and torch.isfinite(out).all()
    for row, length in ((0, 9), (1, 6), (2, 3)):
        alone = hidden(model, {"input_ids": batch["input_ids"][row:row + 1, :length]})
        torch.testing.assert_close(out[row:row + 1, :length], alone, atol=2e-5, rtol=1e-4)


def test_modules_keep_the_hf_interface() -> None:
    model = slimkit.apply(tiny_bert(), CONFIGS["linformer"])
    att = model.encoder.layer[0].attention.self
    assert isinstance(att, LinformerSelfAttention)
    assert isinstance(att.query, nn.Linear) and att.num_attention_heads == 4 and att.attention_head_size == 8
    x = torch.randn(2, 5, 32)
    context, weights = att(x, attention_mask=None)
    assert context.shape == (2, 5, 32) and weights is None
    keys = set(model.state_dict())
    assert {"encoder.layer.0.attention.self.query.weight", "encoder.layer.0.attention.self.proj_e"} <= keys


def test_linformer_is_the_original_when_k_equals_max_len() -> None:
    """The pooling init with one position per slot is the identity: the original model, padding included."""
    dense = tiny_bert(max_pos=16)
    batch = padded_batch()
    model = slimkit.apply(dense, LinformerAttention(k=16))
    assert model.encoder.layer[1].attention.self.max_len == 16  # from max_position_embeddings
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(hidden(model, batch)[real], hidden(dense, batch)[real], atol=1e-5, rtol=1e-4)


def test_favor_approaches_softmax_with_more_features() -> None:
    """FAVOR+ estimates the softmax kernel: the error to the original shrinks as features grow; elu+1 makes no claim."""
    dense = tiny_bert()
    batch = padded_batch()
    real = batch["attention_mask"].bool()
    want = hidden(dense, batch)[real]

    def err(config: LinearAttention) -> float:
        got = hidden(slimkit.apply(dense, config), batch)[real]
        return float((got - want).norm() / want.norm())

    few, many = err(LinearAttention(features=4)), err(LinearAttention(features=512))
    assert many < 0.02 and many < few / 2, (few, many)


def test_vit_converts(tmp_path: Path) -> None:
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    for config in (LinformerAttention(k=17), LinearAttention(features=8)):
        model = slimkit.apply(tiny_vit(), config)
        with torch.no_grad():
            out = model(pixel_values=x).last_hidden_state
        assert out.shape == (2, 17, 32) and torch.isfinite(out).all()
    model = slimkit.apply(tiny_vit(), LinformerAttention(k=17))  # 16 patches + CLS: identity pooling
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values=x).last_hidden_state,
                                   tiny_vit()(pixel_values=x).last_hidden_state, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_save_restore_is_bit_exact(name: str, tmp_path: Path) -> None:
    model = slimkit.apply(tiny_bert(), CONFIGS[name])
    # some training moves E/F (linformer) so the restore has to load them, not rebuild the init
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 1e-3)
    slimkit.save(model, tmp_path)
    restored = slimkit.restore(tmp_path, model=lambda: tiny_bert(seed=5))
    batch = padded_batch()
    assert torch.equal(hidden(restored, batch), hidden(model, batch))
    kinds = {type(m).__name__ for m in restored.modules()}
    assert ("LinformerSelfAttention" if name == "linformer" else "LinearSelfAttention") in kinds


def test_favor_features_are_saved_and_seeded() -> None:
    a = slimkit.apply(tiny_bert(), LinearAttention(features=16, seed=3))
    b = slimkit.apply(tiny_bert(), LinearAttention(features=16, seed=3))
    w0 = a.encoder.layer[0].attention.self.random_features
    assert w0.shape == (16, 8) and "encoder.layer.0.attention.self.random_features" in a.state_dict()
    assert torch.equal(w0, b.encoder.layer[0].attention.self.random_features)
    assert not torch.equal(w0, a.encoder.layer[1].attention.self.random_features)  # seed + layer index


def test_errors_are_slimkit_errors() -> None:
    with pytest.raises(MethodError, match="no supported self-attention"):
        slimkit.apply(nn.Sequential(nn.Linear(4, 4)), LinearAttention())
    with pytest.raises(ConfigError, match="max_len"):
        LinformerAttention(k=64, max_len=32)
    with pytest.raises(MethodError, match="more than max_len"):
        slimkit.apply(tiny_bert(), LinformerAttention(k=64))  # max_position_embeddings is 32
    model = slimkit.apply(tiny_bert(), LinformerAttention(k=4, max_len=8))
    with pytest.raises(MethodError, match="longer than max_len=8"):
        hidden(model, padded_batch())
    with pytest.raises(ConfigError, match="feature_map"):
        LinearAttention.from_dict({"feature_map": "relu"})
    with pytest.raises(MethodError, match="already converted"):
        slimkit.apply(model, LinearAttention())


def test_targets_select_layers() -> None:
    model = slimkit.apply(tiny_bert(), LinearAttention(), Targets(include=("encoder.layer.1.*",)))
    assert type(model.encoder.layer[0].attention.self).__name__ == "BertSelfAttention"
    assert isinstance(model.encoder.layer[1].attention.self, LinearSelfAttention)
    assert list(slimkit.records(model)[0].data["layers"]) == ["encoder.layer.1.attention.self"]


def test_composes_with_dynamic_quantization() -> None:
    """quantize.dynamic swaps the adopted query/key/value Linears; the converted module calls whatever is there."""
    model = slimkit.apply(tiny_bert(), LinformerAttention(k=8, max_len=32))
    q = slimkit.apply(model, config_class("quantize.dynamic")(), Targets(types=("Linear",)))
    batch = padded_batch()
    assert type(q.encoder.layer[0].attention.self.query).__name__ != "Linear"
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(hidden(q, batch)[real], hidden(model, batch)[real], atol=0.1, rtol=0.1)


def _attention_macs(n: int, heads: int, d: int, layers: int, kind: str, m: int = 0, slots: int = 0) -> int:
    """The contraction MACs of the attention computation alone, for one sequence of ``n`` tokens."""
    if kind == "dense":
        per_head = 2 * n * n * d  # scores + weighted sum
    elif kind == "linformer":
        per_head = 4 * n * slots * d  # E^T k, F^T v, scores, weighted sum
    else:  # linear: phi(q), phi(k) projections (favor only), phi(k)^T v, phi(q) kv, phi(q) z
        per_head = (2 * n * d * m if kind == "favor" else 0) + 2 * n * m * d + n * m
    return layers * heads * per_head


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_profile_counts_the_new_attention(name: str) -> None:
    """measure.profile: the converted model's MACs = the dense model's minus dense attention plus the new formula."""
    from slimkit.measure import profile

    n = 32
    example = {"input_ids": torch.randint(1, 60, (1, n), generator=torch.Generator().manual_seed(0))}
    dense = tiny_bert()
    model = slimkit.apply(dense, CONFIGS[name])
    base = profile(dense, example).macs - _attention_macs(n, 4, 8, 2, "dense")
    kind = {"linformer": "linformer", "favor": "favor", "elu": "elu"}[name]
    new = _attention_macs(n, 4, 8, 2, kind, m=16 if name == "favor" else 8, slots=8)
    assert profile(model, example).macs == base + new


@pytest.mark.slow
def test_torch_export_keeps_batch_and_length_dynamic() -> None:
    """pt2: torch.export with symbolic batch and sequence length; the program matches eager at another shape."""
    dims = {"input_ids": {0: torch.export.Dim("batch", max=64), 1: torch.export.Dim("seq", min=2, max=32)},
            "attention_mask": {0: torch.export.Dim("batch", max=64), 1: torch.export.Dim("seq", min=2, max=32)}}
    batch = padded_batch()
    other = {k: v[:2, :7] for k, v in batch.items()}
    for config in CONFIGS.values():
        model = slimkit.apply(tiny_bert(), config)
        program = torch.export.export(model, (), batch, dynamic_shapes=dims).module()
        with torch.no_grad():
            torch.testing.assert_close(program(**other).last_hidden_state, hidden(model, other), atol=1e-5, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_exports_onnx(name: str, tmp_path: Path) -> None:
    """export.onnx (checks the file against torch; optimize=auto skips ORT's Attention fusion here)."""
    from slimkit.core import Context

    model = slimkit.apply(tiny_bert(), CONFIGS[name])
    batch = padded_batch()
    ctx = Context(example_inputs=batch, calib_data=[batch], extras={"export_dir": str(tmp_path)}, progress=False)
    slimkit.apply(model, config_class("export.onnx")(file="m.onnx"), ctx=ctx)
    assert (tmp_path / "m.onnx").stat().st_size > 0
    if name == "linformer":  # the int8 PT2E path too (one kind: it takes a while)
        slimkit.apply(model, config_class("export.pt2e")(file="m.pt2", calib_batches=1), ctx=ctx)
        assert (tmp_path / "m.pt2").stat().st_size > 0


def test_head_pruning_goes_before_the_conversion(tmp_path: Path) -> None:
    """prune.heads then a conversion: the converted modules adopt the pruned projections; the reverse is refused."""
    from slimkit.core import Context

    batch = padded_batch()
    ctx = Context(example_inputs=batch, calib_data=[batch], progress=False)
    heads = config_class("prune.heads")(heads_per_group=1, importance="head", calib_batches=1)
    pruned = slimkit.apply(tiny_bert(), heads, ctx=ctx)
    model = slimkit.apply(pruned, CONFIGS["linformer"])
    att = model.encoder.layer[0].attention.self
    assert att.num_attention_heads == 3 and att.query.weight.shape == (24, 32)
    slimkit.save(model, tmp_path)
    restored = slimkit.restore(tmp_path, model=lambda: tiny_bert(seed=4))
    assert torch.equal(hidden(restored, batch), hidden(model, batch))
    with pytest.raises(MethodError, match="before the attention"):
        slimkit.apply(slimkit.apply(tiny_bert(), CONFIGS["favor"]), heads, ctx=ctx)
