"""Hugging Face models end to end through the exporters: ModelOutput results, decoders
without a KV cache, encoder-decoders' encoders, and models slimkit already made int8.

Every model is a tiny random config (hidden 32, 2 layers, 4 heads) built offline.
"""
from __future__ import annotations

import os
from typing import Any

import onnx
import pytest
import torch
from prune.models import FACTORIES  # the pruning suite's architectures (tests/ is on sys.path)
from torch import nn

import slimkit
from slimkit.core import Context, MethodError, Targets
from slimkit.core.context import select_output
from slimkit.export.onnx import OrtModel, check_onnx, export_onnx, write_onnx
from slimkit.quantize.int8_modules import Int8Linear
from slimkit.quantize.ptq import DynamicQuant

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

_DEC = {"vocab_size": 50, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 48, "max_position_embeddings": 32}


def _build(cfg_cls: str, model_cls: str, **cfg: Any) -> nn.Module:
    torch.manual_seed(0)
    return getattr(transformers, model_cls)(getattr(transformers, cfg_cls)(**cfg)).eval()


def _ids(b: int, t: int, seed: int, vocab: int = 50, mask: bool = True) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {"input_ids": torch.randint(0, vocab, (b, t), generator=g)}
    if mask:
        out["attention_mask"] = torch.ones(b, t, dtype=torch.long)
    return out


DECODERS = {  # default configs: use_cache is on, as in a real checkpoint
    "qwen2": lambda: _build("Qwen2Config", "Qwen2Model", num_key_value_heads=2, **_DEC),
    "mistral": lambda: _build("MistralConfig", "MistralModel", num_key_value_heads=2, **_DEC),
    "gpt_neox": lambda: _build("GPTNeoXConfig", "GPTNeoXModel", **_DEC),
    "gpt2": lambda: _build("GPT2Config", "GPT2Model", vocab_size=50, n_embd=32, n_layer=2, n_head=4, n_positions=32),
}


def _bart() -> nn.Module:
    return _build("BartConfig", "BartModel", vocab_size=50, d_model=32, encoder_layers=2, decoder_layers=2,
                  encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48,
                  max_position_embeddings=32)


def _outputs(path: Any) -> list[str]:
    return [o.name for o in onnx.load(str(path)).graph.output]


@pytest.mark.parametrize("name", ["bert", "roberta", "distilbert", "gpt2", "llama_gqa", "t5_encoder", "vit"])
def test_pruning_suite_architectures_export_their_model_output(name: str, tmp_path) -> None:
    model, batch = FACTORIES[name]()
    path = export_onnx(model, batch, tmp_path / "m.onnx")
    assert _outputs(path) == ["output"]
    batches = [batch]
    if isinstance(batch, dict):  # another batch size and length through the same file
        batches.append({"input_ids": torch.randint(0, 50, (3, 9), generator=torch.Generator().manual_seed(1))})
    assert check_onnx(path, model, batches, atol=1e-4) < 1e-4
    with torch.no_grad():
        ref = model(**batch) if isinstance(batch, dict) else model(batch)
    got = OrtModel(path)(**batch) if isinstance(batch, dict) else OrtModel(path)(batch)
    torch.testing.assert_close(got, ref.last_hidden_state, atol=1e-4, rtol=1e-4)  # auto: last_hidden_state


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_decoders_export_without_kv_cache(name: str, tmp_path) -> None:
    model = DECODERS[name]()
    assert model.config.use_cache  # the model itself would build a cache
    with torch.no_grad():
        assert model(**_ids(2, 6, 0)).past_key_values is not None
    path = export_onnx(model, _ids(2, 6, 0), tmp_path / "m.onnx")
    assert _outputs(path) == ["output"]  # no present.* cache outputs
    assert [i.name for i in onnx.load(str(path)).graph.input] == ["input_ids", "attention_mask"]
    assert check_onnx(path, model, [_ids(2, 6, 0), _ids(1, 11, 1)], atol=1e-4) < 1e-4
    assert model.config.use_cache and not model.training  # the model is left as it was


def test_ids_only_batch_exports_a_decoder(tmp_path) -> None:
    """A batch without attention_mask used to fail: HF's packed-sequence check uses aten::diff."""
    model = DECODERS["qwen2"]()
    path = export_onnx(model, _ids(2, 6, 0, mask=False), tmp_path / "m.onnx")
    assert [i.name for i in onnx.load(str(path)).graph.input] == ["input_ids"]
    assert check_onnx(path, model, [_ids(2, 6, 0, mask=False), _ids(3, 5, 2, mask=False)], atol=1e-4) < 1e-4


def test_onnx_node_names_follow_the_module_names(tmp_path) -> None:
    model, batch = FACTORIES["bert"]()
    names = [n.name for n in onnx.load(str(export_onnx(model, batch, tmp_path / "m.onnx"))).graph.node]
    assert any(n.startswith("/encoder/layer.0/attention/") for n in names)
    assert not any(n.startswith("/inner") for n in names)
    assert len(set(names)) == len(names)


def test_output_selection_and_its_errors(tmp_path) -> None:
    model, batch = FACTORIES["bert"]()
    path = export_onnx(model, batch, tmp_path / "pool.onnx", output="pooler_output")
    with torch.no_grad():
        torch.testing.assert_close(OrtModel(path)(**batch), model(**batch).pooler_output, atol=1e-4, rtol=1e-4)
    with pytest.raises(MethodError, match="no tensor 'logitz'.*last_hidden_state"):
        export_onnx(model, batch, tmp_path / "bad.onnx", output="logitz")
    out = {"logits": torch.ones(1), "last_hidden_state": torch.zeros(1)}
    assert select_output(out) is out["logits"]  # auto prefers logits
    assert select_output((None, torch.ones(2), torch.zeros(3)), "2").shape == (3,)
    with pytest.raises(MethodError, match="tensor items: \\[1\\]"):
        select_output((None, torch.ones(2)), "0")


def test_encoder_decoder_exports_its_encoder_and_refuses_the_full_model(tmp_path) -> None:
    model = _bart()
    batch = _ids(2, 7, 0)
    info = write_onnx(model, batch, tmp_path / "enc.onnx")
    assert info["part"] == "encoder" and info["max_abs_diff_float"] < 1e-4
    with torch.no_grad():
        ref = model.get_encoder()(**batch).last_hidden_state
    torch.testing.assert_close(OrtModel(tmp_path / "enc.onnx")(**_ids(2, 7, 0)), ref, atol=1e-4, rtol=1e-4)
    names = [n.name for n in onnx.load(str(tmp_path / "enc.onnx")).graph.node]
    assert any(n.startswith("/encoder/layers.0/") for n in names)  # the model's names, not the encoder's
    with pytest.raises(MethodError, match="encoder-decoder.*part: encoder"):
        export_onnx(model, batch, tmp_path / "full.onnx", part="model")
    t5 = _build("T5Config", "T5Model", vocab_size=50, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4)
    path = export_onnx(t5, batch, tmp_path / "t5.onnx")
    assert check_onnx(path, t5, batch, atol=1e-4) < 1e-4


@pytest.mark.slow
def test_whisper_encoder_takes_audio_features(tmp_path) -> None:
    model = _build("WhisperConfig", "WhisperModel", vocab_size=50, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                   decoder_start_token_id=0, num_mel_bins=8, d_model=32, encoder_layers=2,
                   decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=48,
                   decoder_ffn_dim=48, max_source_positions=16, max_target_positions=16)
    feats = {"input_features": torch.randn(2, 8, 32, generator=torch.Generator().manual_seed(0))}  # [B, mel, 2*16]
    info = write_onnx(model, feats, tmp_path / "w.onnx")
    assert info["part"] == "encoder" and info["inputs"] == ["input_features"]
    with torch.no_grad():
        ref = model.get_encoder()(**feats).last_hidden_state
    torch.testing.assert_close(OrtModel(tmp_path / "w.onnx")(**feats), ref, atol=1e-4, rtol=1e-4)


def test_int8_quantized_hf_model_exports_those_layers_as_int8(tmp_path) -> None:
    model, batch = FACTORIES["bert"]()
    q = slimkit.apply(model, DynamicQuant(), Targets(include=("encoder.*",)), Context())
    n_int8 = sum(isinstance(m, Int8Linear) for m in q.modules())
    info = write_onnx(q, batch, tmp_path / "q.onnx")  # int8="auto"
    assert info["int8"] == "dynamic" and info["int8_nodes"] == n_int8 == 12  # not the pooler
    assert info["max_abs_diff_float"] < 1e-4  # float graph == the dequantized layers, exactly
    assert info["mean_cosine"] > 0.999  # ORT int8 vs torch int8: same weight codes
    flt = write_onnx(q, batch, tmp_path / "f.onnx", int8="none")
    assert flt["int8"] == "none" and "int8_nodes" not in flt and flt["mean_cosine"] > 0.999
    assert all(isinstance(q.get_submodule(n), Int8Linear) for n in ("encoder.layer.0.attention.self.query",))


@pytest.mark.slow
def test_pt2e_exports_model_outputs_and_encoders() -> None:
    pytest.importorskip("torchao")
    from slimkit.export.onnx import deviation
    from slimkit.export.pt2e import Pt2eModel, quantize_pt2e
    from slimkit.export.view import export_view

    for model, batch in ((FACTORIES["bert"]()[0], _ids(2, 6, 0)), (DECODERS["qwen2"](), _ids(2, 6, 0)),
                         (_bart(), _ids(2, 6, 0))):
        program = quantize_pt2e(model, batch, [batch, _ids(4, 8, 3)], static=True)  # export.pt2e's default
        view, vb = export_view(model, batch)
        dev = deviation(Pt2eModel(program, compile=False), view, vb)  # the ATen program, no Inductor compile
        assert dev["mean_cosine"] > 0.999, (type(model).__name__, dev)
        with torch.no_grad():
            other = _ids(3, 9, 1)  # the program serves other shapes
            assert program.module()(**other).shape == view(**other).shape


@pytest.mark.slow
@pytest.mark.parametrize("name", ["bert", "roberta", "distilbert", "gpt2", "llama_gqa", "t5_encoder", "vit", "convnext",
                                  "resnet", "mobilenet_v2"])
def test_hf_folders_of_the_pruning_suite_load_and_export(name: str, tmp_path) -> None:
    """``hf:DIR`` of a save_pretrained folder (no tokenizer): the class the folder names,
    the right family, example inputs, a checked ONNX file."""
    from slimkit import zoo

    model, _ = FACTORIES[name]()
    model.save_pretrained(tmp_path / name)
    zm = zoo.load(f"hf:{tmp_path / name}")
    assert type(zm.model) is type(model)  # T5EncoderModel stays an encoder (AutoModel would build T5Model)
    assert zm.family == ("image" if name in ("vit", "convnext", "resnet", "mobilenet_v2") else "text")
    batch = zm.example_inputs(2, 8)
    info = write_onnx(zm.model, batch, tmp_path / "m.onnx")
    assert info["max_abs_diff_float"] < 1e-4 and info["int8"] == "none"


@pytest.mark.slow
def test_pt2e_dynamic_int8_without_calibration_data_is_accurate() -> None:
    """Dynamic PT2E runs the example once so the weight observers see the weights (unrun,
    a tiny Qwen2's output cosine was 0.89)."""
    pytest.importorskip("torchao")
    from slimkit.export.onnx import deviation
    from slimkit.export.pt2e import Pt2eModel, quantize_pt2e
    from slimkit.export.view import export_view

    model = DECODERS["qwen2"]()
    program = quantize_pt2e(model, _ids(2, 6, 0), static=False)
    view, vb = export_view(model, _ids(2, 6, 0))
    assert deviation(Pt2eModel(program, compile=False), view, vb)["mean_cosine"] > 0.999


@pytest.mark.slow
def test_pt2e_of_an_int8_quantized_model_traces_the_float_twins(tmp_path) -> None:
    pytest.importorskip("torchao")
    from slimkit.export.pt2e import write_pt2e
    from slimkit.export.view import export_view

    model, batch = FACTORIES["bert"]()
    q = slimkit.apply(model, DynamicQuant(), Targets(include=("encoder.*",)), Context())
    info = write_pt2e(q, batch, tmp_path / "m.pt2", static=False, check=False)
    assert info["int8_ops"] > 0 and isinstance(q.get_submodule("encoder.layer.0.output.dense"), Int8Linear)
    program = torch.export.load(str(tmp_path / "m.pt2"))
    view, vb = export_view(q, batch)
    with torch.no_grad():
        cos = nn.functional.cosine_similarity(program.module()(**vb).flatten(1), view(**vb).flatten(1))
    assert float(cos.min()) > 0.999
