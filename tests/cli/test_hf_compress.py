"""``slimkit compress --model hf:DIR`` end to end on save_pretrained folders without a
tokenizer: prune.heads + quantize.dynamic + export.onnx, and the file checked against the
restored PyTorch model."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

import slimkit
from slimkit import zoo
from slimkit.cli.main import main
from slimkit.export.onnx import OrtModel
from slimkit.export.view import export_view
from slimkit.quantize.int8_modules import Int8Linear

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

# the configs keep their default use_cache=True, as a user's saved folder does: the pruning
# tracer and the exporters both run the model without a KV cache
_QWEN2 = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              intermediate_size=48, max_position_embeddings=64)
_BART = dict(vocab_size=64, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
             decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48, max_position_embeddings=64)

RECIPE = """
name: hf-end-to-end
steps:
  - kind: prune.heads
    with: {ratio: 0.25}
  - kind: quantize.dynamic
  - kind: export.onnx
"""


def _folder(tmp: Path, arch: str) -> Path:
    torch.manual_seed(0)
    if arch == "qwen2":
        model = transformers.Qwen2Model(transformers.Qwen2Config(**_QWEN2))
    else:
        model = transformers.BartModel(transformers.BartConfig(**_BART))
    path = tmp / arch
    model.save_pretrained(path)  # config.json + model.safetensors, no tokenizer
    assert (path / "model.safetensors").is_file() and not (path / "tokenizer.json").exists()
    return path


def test_hf_folder_without_tokenizer_gets_ids_from_the_config_vocabulary(tmp_path: Path) -> None:
    zm = zoo.load(f"hf:{_folder(tmp_path, 'qwen2')}")
    assert zm.family == "text" and zm.tokenizer is None
    batch = zm.example_inputs(2, 128)
    assert batch["input_ids"].shape == (2, 64)  # capped at max_position_embeddings
    assert int(batch["input_ids"].max()) < 64 and torch.equal(batch["input_ids"], zm.example_inputs(2, 128)["input_ids"])


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["qwen2", "bart"])
def test_compress_hf_folder_prune_quantize_export(arch: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _folder(tmp_path, arch)
    (tmp_path / "r.yaml").write_text(RECIPE)
    out = tmp_path / "out"
    code = main(["compress", "--model", f"hf:{src}", "--recipe", str(tmp_path / "r.yaml"), "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    heads = report["steps"][0]["record"]["summary"]
    export = report["steps"][-1]["record"]["summary"]
    assert heads and export["int8"] == "dynamic" and export["max_abs_diff_float"] < 1e-4
    assert export["mean_cosine"] > 0.999  # ORT int8 vs the PyTorch int8 model
    assert export.get("part") == ("encoder" if arch == "bart" else None)

    # the file against the restored model on inputs it was not exported with
    restored = slimkit.restore(out)
    assert any(isinstance(m, Int8Linear) for m in restored.modules())
    g = torch.Generator().manual_seed(5)
    batch = {"input_ids": torch.randint(0, 64, (3, 11), generator=g), "attention_mask": torch.ones(3, 11, dtype=torch.long)}
    view, vb = export_view(restored, batch)
    with torch.no_grad():
        ref = view(**vb)
    got = OrtModel(out / "model.onnx")(**batch)
    assert got.shape == ref.shape
    cos = nn.functional.cosine_similarity(got.flatten(1), ref.flatten(1)).min()
    assert float(cos) > 0.999


@pytest.mark.slow
def test_compress_hf_folder_float_export_matches(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _folder(tmp_path, "qwen2")
    (tmp_path / "r.yaml").write_text("steps:\n  - kind: prune.heads\n    with: {ratio: 0.25}\n  - kind: export.onnx\n")
    out = tmp_path / "out"
    assert main(["compress", "--model", f"hf:{src}", "--recipe", str(tmp_path / "r.yaml"), "--out", str(out)]) == 0, capsys.readouterr().err
    restored = slimkit.restore(out)
    batch = {"input_ids": torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(3))}
    with pytest.raises(slimkit.core.MethodError, match="missing input"):
        OrtModel(out / "model.onnx")(**batch)  # the file takes the mask the example inputs had
    batch["attention_mask"] = torch.ones(2, 9, dtype=torch.long)
    view, vb = export_view(restored, batch)
    with torch.no_grad():
        ref = view(**vb)
    torch.testing.assert_close(OrtModel(out / "model.onnx")(**batch), ref, atol=1e-4, rtol=1e-4)


def test_hf_folder_with_a_saved_tokenizer_uses_it(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=48, max_position_embeddings=24)
    path = tmp_path / "bert"
    transformers.BertModel(cfg).save_pretrained(path)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(35)]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    transformers.BertTokenizer(vocab_file=str(tmp_path / "vocab.txt")).save_pretrained(path)
    zm = zoo.load(f"hf:{path}")
    assert zm.tokenizer is not None
    batch = zm.example_inputs(2, 128)
    assert batch["input_ids"].shape == (2, 24)  # capped at the position table
    assert (batch["input_ids"][:, 0] == 2).all() and (batch["input_ids"][:, -1] == 3).all()  # [CLS] ... [SEP]


def test_timing_an_encoder_export_pairs_it_with_the_encoder_of_the_baseline(tmp_path: Path) -> None:
    from slimkit.app.serving import baseline_for
    from slimkit.core.record import Manifest, Record

    zm = zoo.load(f"hf:{_folder(tmp_path, 'bart')}")
    batch = zm.example_inputs(1, 16)
    encoder_only = Manifest(records=[Record(kind="export.onnx", data={"file": "model.onnx", "part": "encoder"})])
    base = baseline_for(zm.model, encoder_only, "model.onnx", batch)
    with torch.no_grad():
        got = base(**batch)
        want = zm.model.get_encoder()(**batch).last_hidden_state
    assert torch.equal(got, want)  # the encoder, not the whole encoder-decoder
    whole = Manifest(records=[Record(kind="export.onnx", data={"file": "model.onnx"})])
    assert baseline_for(zm.model, whole, "model.onnx", batch) is zm.model
    assert baseline_for(zm.model, encoder_only, None, batch) is zm.model  # eager: the restored model itself
