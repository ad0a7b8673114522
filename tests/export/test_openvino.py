"""The OpenVINO wrapper (``slimkit.export.openvino``): conversion through slimkit's ONNX export,
NNCF int8, and an ``OvModel`` that task code and ``measure.compare`` drive like a torch module."""
from __future__ import annotations

import builtins
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from slimkit.core.context import call_model
from slimkit.core.errors import ArtifactError, ConfigError, MethodError
from slimkit.export import openvino as ovx

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval()


def _images(seed: int, b: int = 4) -> torch.Tensor:
    return torch.rand(b, 3, 16, 16, generator=torch.Generator().manual_seed(seed))  # [B, 3, 16, 16]


def test_missing_openvino_is_a_slimkit_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real = builtins.__import__

    def no_openvino(name: str, *args: Any, **kw: Any) -> Any:
        if name == "openvino" or name.startswith("openvino.") or name == "nncf":
            raise ImportError(f"No module named {name!r}")
        return real(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_openvino)
    assert not ovx.available()
    with pytest.raises(MethodError, match=r"needs openvino: pip install 'slimkit\[openvino\]'"):
        ovx.OvModel("model.xml")
    with pytest.raises(MethodError, match="needs nncf"):
        ovx.quantize_ov(object(), [torch.zeros(1)])


@pytest.fixture
def ov() -> Any:
    return pytest.importorskip("openvino")


def test_fp32_cnn_matches_torch_at_every_batch_size(tmp_path: Path, ov: Any) -> None:
    model = _cnn()
    f = ovx.save_ov(ovx.convert_ov(model, _images(0, 1)), tmp_path / "cnn.xml")
    assert f.with_suffix(".bin").is_file() and ovx.ov_bytes(f) > f.stat().st_size
    served = ovx.OvModel(f, threads=1)
    for b in (1, 3):
        x = _images(b, b)
        with torch.no_grad():
            assert torch.allclose(served(x), model(x), atol=1e-4)


def test_int8_nncf_stays_close_and_shrinks(tmp_path: Path, ov: Any) -> None:
    pytest.importorskip("nncf")
    model = _cnn()
    fp32 = ovx.convert_ov(model, _images(0))
    q = ovx.save_ov(ovx.quantize_ov(fp32, [_images(s) for s in range(4)]), tmp_path / "q.xml")
    f = ovx.save_ov(fp32, tmp_path / "f.xml")
    x = _images(9)
    with torch.no_grad():
        ref = model(x)
    got = ovx.OvModel(q)(x)
    cos = nn.functional.cosine_similarity(got, ref).min()
    assert cos > 0.98, float(cos)
    assert not torch.equal(got, ovx.OvModel(f)(x))  # it is not the float model
    assert any("FakeQuantize" in op.get_type_name() or "Convert" in op.get_type_name()
               for op in ov.Core().read_model(str(q)).get_ops())


def test_hf_encoder_dict_batches_and_feed_errors(tmp_path: Path, ov: Any) -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=48, max_position_embeddings=32)
    model = transformers.BertModel(cfg).eval()
    g = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(0, 50, (2, 12), generator=g), "attention_mask": torch.ones(2, 12).long()}
    served = ovx.OvModel(ovx.convert_ov(model, batch))
    assert served.input_names == ["input_ids", "attention_mask"]
    other = {"input_ids": torch.randint(0, 50, (3, 7), generator=g), "attention_mask": torch.ones(3, 7).long()}
    with torch.no_grad():
        ref = model(**other).last_hidden_state
    assert torch.allclose(call_model(served, other), ref, atol=1e-4)  # dynamic batch and sequence
    with pytest.raises(MethodError, match="missing input"):
        served(input_ids=other["input_ids"])
    with pytest.raises(MethodError, match=r"no input\(s\) \['token_type_ids'\]"):
        served(**other, token_type_ids=other["input_ids"])


def test_bad_paths_are_slimkit_errors(tmp_path: Path, ov: Any) -> None:
    with pytest.raises(ArtifactError, match="not found"):
        ovx.OvModel(tmp_path / "nothing.xml")
    with pytest.raises(ArtifactError, match="not found"):
        ovx.convert_ov(tmp_path / "nothing.onnx")
    with pytest.raises(MethodError, match=r"\.xml file"):
        ovx.save_ov(ovx.convert_ov(_cnn(), _images(0)), tmp_path / "m.bin")
    with pytest.raises(MethodError, match="needs example inputs"):
        ovx.convert_ov(_cnn())


def test_low_bit_embedding_tables_convert_as_float_lookups(ov: Any) -> None:
    """quantize.embedding's 4-bit tables have no ONNX export; OpenVINO gets their dequantized rows."""
    transformers = pytest.importorskip("transformers")
    import slimkit
    from slimkit.core import Context, Targets
    from slimkit.quantize.embedding import EmbeddingQuant, QuantEmbedding

    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                  intermediate_size=48, max_position_embeddings=32)
    g = torch.Generator().manual_seed(1)
    batch = {"input_ids": torch.randint(0, 50, (2, 9), generator=g), "attention_mask": torch.ones(2, 9).long()}
    model = slimkit.apply(transformers.BertModel(cfg).eval(), EmbeddingQuant(bits=4),
                          Targets(include=("*word_embeddings",)), ctx=Context(example_inputs=batch)).eval()
    table = model.embeddings.word_embeddings
    assert isinstance(table, QuantEmbedding)
    served = ovx.OvModel(ovx.convert_ov(model, batch))
    assert model.embeddings.word_embeddings is table  # swapped back
    with torch.no_grad():
        ref = model(**batch).last_hidden_state
    assert torch.allclose(call_model(served, batch), ref, atol=1e-4)


def test_export_openvino_step_fp32_and_int8(tmp_path: Path, ov: Any) -> None:
    pytest.importorskip("nncf")
    import slimkit
    from slimkit.core import Context, config_class
    from slimkit.export.openvino import OpenvinoExport

    assert config_class("export.openvino") is OpenvinoExport
    model = _cnn()
    ctx = Context(example_inputs=_images(0), calib_data=[_images(s) for s in range(3)],
                  extras={"export_dir": tmp_path})
    out = slimkit.apply(model, OpenvinoExport(int8="none", file="f.xml"), ctx=ctx)
    rec = slimkit.records(out)[-1]
    assert rec.kind == "export.openvino" and rec.data["max_abs_diff"] < 1e-4
    out = slimkit.apply(model, OpenvinoExport(), ctx=ctx)
    data = slimkit.records(out)[-1].data
    assert data["int8"] == "static" and data["nncf_scheme"] == "default" and data["mean_cosine"] > 0.98
    assert (tmp_path / "model.xml").is_file() and (tmp_path / "model.bin").is_file()
    x = _images(7)
    with torch.no_grad():
        assert torch.allclose(ovx.OvModel(tmp_path / "f.xml")(x), model(x), atol=1e-4)
    with pytest.raises(MethodError, match="needs calibration batches"):
        slimkit.apply(model, OpenvinoExport(), ctx=Context(example_inputs=_images(0), extras={"export_dir": tmp_path}))
    with pytest.raises(ConfigError, match="ending in .xml"):
        OpenvinoExport(file="model.onnx")


def test_cli_export_openvino(tmp_path: Path, ov: Any, capsys: Any) -> None:
    import json

    import slimkit
    from slimkit.cli.main import main

    folder = tmp_path / "digits"
    from slimkit import zoo

    slimkit.save(zoo.load("zoo:digits-cnn").model, folder, spec="zoo:digits-cnn")
    assert main(["export", str(folder), "--format", "openvino", "--int8", "none", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["max_abs_diff"] < 1e-4 and (folder / "model.bin").is_file()
    assert "model.xml" in json.loads((folder / "manifest.json").read_text())["files"]  # sealed
    slimkit.restore(folder)  # the sealed folder still loads
    assert main(["export", str(folder), "--format", "openvino"]) == 2  # static int8 needs --task
    assert "--int8 none" in capsys.readouterr().err
    assert main(["export", str(folder), "--format", "openvino", "--int8", "dynamic"]) == 2
