"""attention.window on tiny random BERTs: exactness, padding, replay, profile MACs, composition, errors."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers
from torch import nn

import slimkit
from slimkit.attention.window import WindowAttention, WindowSelfAttention
from slimkit.attention.window_math import dense_window_mask, window_macs
from slimkit.core import ConfigError, MethodError, Targets
from slimkit.measure import profile


def _bert(impl: str = "eager", seed: int = 0, max_pos: int = 64) -> nn.Module:
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=max_pos, attn_implementation=impl)
    return transformers.BertModel(cfg).eval()


def _batch(n: int = 21, lengths: tuple[int, ...] = (21, 14, 5)) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 60, (len(lengths), n), generator=gen)
    mask = torch.zeros(len(lengths), n, dtype=torch.long)
    for i, length in enumerate(lengths):
        mask[i, :length] = 1
    return {"input_ids": ids, "attention_mask": mask}


def _hidden(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).last_hidden_state


def _masked_original(model: nn.Module, batch: dict[str, torch.Tensor], window: int, glob: list[int]) -> torch.Tensor:
    """The ORIGINAL eager model with the window pattern folded into a dense 4-D additive mask."""
    n = batch["input_ids"].shape[1]
    allowed = dense_window_mask(n, window, glob)[None, None] & batch["attention_mask"].bool()[:, None, None, :]
    additive = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=additive).last_hidden_state


@pytest.mark.parametrize("window,glob", [(3, [0]), (4, []), (2, [0, 9])])
def test_converted_model_equals_the_dense_masked_original(window: int, glob: list[int]) -> None:
    model, batch = _bert(), _batch()
    want = _masked_original(model, batch, window, glob)
    conv = slimkit.apply(model, WindowAttention(window=window, global_tokens=tuple(glob)))
    got = _hidden(conv, batch)
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(got[real], want[real], atol=2e-5, rtol=1e-4)
    assert not torch.allclose(got[real], _hidden(model, batch)[real], atol=1e-3)  # the window changed something


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_wide_window_is_the_original_model(impl: str) -> None:
    model, batch = _bert(impl), _batch()
    conv = slimkit.apply(model, WindowAttention(window=20))
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(_hidden(conv, batch)[real], _hidden(model, batch)[real], atol=2e-5, rtol=1e-4)
    assert torch.isfinite(_hidden(conv, batch)).all()  # padding rows too


def test_padding_changes_nothing_for_real_tokens() -> None:
    conv = slimkit.apply(_bert(), WindowAttention(window=3))
    batch = _batch()
    padded = _hidden(conv, batch)
    alone = _hidden(conv, {"input_ids": batch["input_ids"][1:2, :14]})
    torch.testing.assert_close(padded[1, :14], alone[0], atol=2e-5, rtol=1e-4)


def test_modules_keep_projections_and_record_options() -> None:
    model = _bert()
    q = model.encoder.layer[0].attention.self.query
    conv = slimkit.apply(model, WindowAttention(window=5, global_tokens=(0, 3)), inplace=True)
    mod = conv.encoder.layer[0].attention.self
    assert isinstance(mod, WindowSelfAttention) and mod.query is q
    assert sum(p.numel() for p in conv.parameters()) == sum(p.numel() for p in _bert().parameters())
    rec = slimkit.records(conv)[-1]
    assert rec.data["layers"]["encoder.layer.1.attention.self"] == {"family": "bert", "window": 5,
                                                                   "global_tokens": [0, 3]}
    assert rec.summary["window"] == 5


def test_save_restore_replays_strictly(tmp_path: Path) -> None:
    conv = slimkit.apply(_bert(), WindowAttention(window=3, global_tokens=(0,)))
    slimkit.save(conv, tmp_path)
    back = slimkit.restore(tmp_path, model=lambda: _bert(seed=7))
    assert isinstance(back.encoder.layer[1].attention.self, WindowSelfAttention)
    batch = _batch()
    assert torch.equal(_hidden(back, batch), _hidden(conv, batch))


def test_replay_refuses_bad_record_values() -> None:
    from slimkit.core import Record
    from slimkit.core.registry import entry_for_kind

    replay = entry_for_kind("attention.window").replay
    assert replay is not None
    for bad in ({"family": "bert", "window": 0, "global_tokens": []},
                {"family": "bert", "window": 3, "global_tokens": [-1]},
                {"family": "bert", "window": "3", "global_tokens": []}):
        rec = Record(kind="attention.window", data={"layers": {"encoder.layer.0.attention.self": bad}})
        with pytest.raises(MethodError):
            replay(_bert(), rec)


def test_profile_counts_the_banded_cost() -> None:
    """profile's MACs drop by exactly dense attention minus the blockwise kernel's MACs."""
    n, w, heads, d, layers = 40, 4, 4, 8, 2
    ids = {"input_ids": torch.randint(1, 60, (1, n), generator=torch.Generator().manual_seed(0))}
    model = _bert("sdpa")
    dense = profile(model, ids).macs
    conv = slimkit.apply(model, WindowAttention(window=w, global_tokens=(0,)))
    banded = profile(conv, ids).macs
    dense_attn = layers * 2 * heads * n * n * d
    assert dense - banded == dense_attn - layers * window_macs(n, w, 1, d, heads)
    assert window_macs(n, w, 1, d, heads) < dense_attn / 2


def test_composes_with_dynamic_quantization() -> None:
    from slimkit.quantize.ptq import DynamicQuant

    conv = slimkit.apply(_bert(), WindowAttention(window=3))
    q = slimkit.apply(conv, DynamicQuant())
    batch = _batch()
    assert isinstance(q.encoder.layer[0].attention.self, WindowSelfAttention)
    torch.testing.assert_close(_hidden(q, batch), _hidden(conv, batch), atol=0.1, rtol=0.1)


@pytest.mark.slow
def test_torch_export_runs_the_window_graph() -> None:
    conv = slimkit.apply(_bert(), WindowAttention(window=3))
    ids = _batch()["input_ids"]
    with torch.no_grad():
        ep = torch.export.export(conv, (), {"input_ids": ids})
        torch.testing.assert_close(ep.module()(input_ids=ids).last_hidden_state, _hidden(conv, {"input_ids": ids}))


def test_bad_options_and_models_are_slimkit_errors() -> None:
    with pytest.raises(ConfigError, match="window"):
        WindowAttention(window=0)
    with pytest.raises(ConfigError, match="global_tokens"):
        WindowAttention(global_tokens=(0, 0))
    with pytest.raises(MethodError):
        slimkit.apply(nn.Sequential(nn.Linear(4, 4)), WindowAttention())
    twice = slimkit.apply(_bert(), WindowAttention(window=3))
    with pytest.raises(MethodError, match="already converted"):
        slimkit.apply(twice, WindowAttention(window=3))


def test_targets_select_layers() -> None:
    conv = slimkit.apply(_bert(), WindowAttention(window=3), Targets(include=["encoder.layer.0.*"]))
    assert isinstance(conv.encoder.layer[0].attention.self, WindowSelfAttention)
    assert not isinstance(conv.encoder.layer[1].attention.self, WindowSelfAttention)


@pytest.mark.slow
def test_onnx_graph_traced_once_serves_every_length(tmp_path: Path) -> None:
    """export.onnx (auto: no BERT fusion for a converted attention) at 22 tokens; ORT at other lengths."""
    from slimkit.core import Context
    from slimkit.export.onnx import OnnxExport, OrtModel

    conv = slimkit.apply(_bert(), WindowAttention(window=3, global_tokens=(0,)))
    ids = torch.randint(1, 60, (2, 22), generator=torch.Generator().manual_seed(0))
    ctx = Context(example_inputs={"input_ids": ids, "attention_mask": torch.ones_like(ids)},
                  extras={"export_dir": str(tmp_path)})
    out = slimkit.apply(conv, OnnxExport(int8="none"), Targets(), ctx)
    assert slimkit.records(out)[-1].summary["max_abs_diff_float"] < 1e-4
    ort_model = OrtModel(tmp_path / "model.onnx")
    for n in (8, 13, 30):  # shorter than a slab, not a multiple of the window, longer
        x = {"input_ids": torch.randint(1, 60, (1, n), generator=torch.Generator().manual_seed(n)),
             "attention_mask": torch.ones(1, n, dtype=torch.long)}
        got = ort_model(**x)
        torch.testing.assert_close(torch.as_tensor(got), _hidden(conv, x), atol=1e-4, rtol=1e-4)


def test_vit_converts_and_a_wide_window_is_the_original() -> None:
    torch.manual_seed(0)
    cfg = transformers.ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
                                 num_attention_heads=4, intermediate_size=64)
    vit = transformers.ViTModel(cfg, add_pooling_layer=False).eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    wide = slimkit.apply(vit, WindowAttention(window=16))  # 17 tokens: the band covers them all
    narrow = slimkit.apply(vit, WindowAttention(window=2))
    with torch.no_grad():
        want = vit(pixel_values=x).last_hidden_state
        torch.testing.assert_close(wide(pixel_values=x).last_hidden_state, want, atol=2e-5, rtol=1e-4)
        assert not torch.allclose(narrow(pixel_values=x).last_hidden_state, want, atol=1e-3)
