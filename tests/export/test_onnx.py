"""ONNX export round trip, the ORT module wrapper, ORT int8 (dynamic and static QDQ) and the export.onnx step."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import slimkit
from slimkit.core import Context, MethodError, Targets
from slimkit.core.errors import ArtifactError, ConfigError
from slimkit.export.onnx import OnnxExport, OrtModel, check_onnx, export_onnx, write_onnx
from slimkit.export.ort_quant import describe_ops, match_nodes, quantizable_nodes, quantize_dynamic_onnx

pytestmark = pytest.mark.usefixtures("one_thread")


class TwoInput(nn.Module):
    """Dict-batch model like the text zoo models: (ids [B, T], mask [B, T]) -> [B, H]."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 8)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.fc2(torch.relu(self.fc1(self.emb(input_ids))))  # [B, T, 8]
        m = attention_mask.unsqueeze(-1).float()  # [B, T, 1]
        return (h * m).sum(1) / m.sum(1)  # [B, 8]


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10)).eval()


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1, groups=16),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()


def _batch(b: int = 3, t: int = 7) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(b * 100 + t)
    mask = torch.ones(b, t, dtype=torch.long)
    mask[0, t // 2:] = 0
    return {"input_ids": torch.randint(0, 50, (b, t), generator=gen), "attention_mask": mask}


def test_export_round_trip_dict_inputs_with_dynamic_batch_and_seq(tmp_path) -> None:
    torch.manual_seed(0)
    m = TwoInput().eval()
    path = export_onnx(m, _batch(), tmp_path / "m.onnx")
    ort = OrtModel(path)
    assert ort.input_names == ["input_ids", "attention_mask"]
    # other batch sizes and lengths than the export example, dict and positional calls
    diff = check_onnx(path, m, [_batch(1, 5), _batch(4, 11)], atol=1e-5)
    assert diff < 1e-5
    b = _batch(2, 9)
    assert torch.allclose(ort(b["input_ids"], b["attention_mask"]), m(**b), atol=1e-5)


def test_check_onnx_catches_a_wrong_file(tmp_path) -> None:
    m = _mlp()
    path = export_onnx(m, torch.randn(2, 32), tmp_path / "m.onnx")
    other = _mlp()
    with torch.no_grad():
        other[0].weight.mul_(1.5)
    with pytest.raises(ArtifactError, match="differs"):
        check_onnx(path, other, torch.randn(2, 32), atol=1e-4)


def test_ort_model_rejects_unknown_inputs(tmp_path) -> None:
    path = export_onnx(TwoInput().eval(), _batch(), tmp_path / "m.onnx")
    with pytest.raises(MethodError, match="no input"):
        OrtModel(path)(input_ids=torch.zeros(1, 3, dtype=torch.long), token_type_ids=torch.zeros(1, 3))


@pytest.mark.int8
def test_ort_dynamic_int8_close_and_uses_int8_kernels(tmp_path) -> None:
    m = _mlp()
    x = torch.randn(64, 32)
    src = export_onnx(m, x[:2], tmp_path / "f.onnx")
    nodes = quantizable_nodes(src)
    assert len(nodes) == 3
    q = quantize_dynamic_onnx(src, tmp_path / "q.onnx", per_channel=True, exclude=[nodes[-1]])
    assert q == nodes[:2]
    ops = describe_ops(tmp_path / "q.onnx")
    assert ops.get("MatMulInteger", 0) + ops.get("DynamicQuantizeMatMul", 0) == 2  # the excluded one stays float
    y, ref = OrtModel(tmp_path / "q.onnx")(x), m(x)
    err = float((y - ref).norm() / ref.norm())
    assert 0.0 < err < 0.03


def test_match_nodes_uses_fnmatch() -> None:
    names = ["/l.0/attention/output/dense/MatMul", "/l.0/output/dense/MatMul", "/l.0/intermediate/dense/MatMul"]
    assert match_nodes(names, ["*l.[0-9]/output/dense*"]) == ["/l.0/output/dense/MatMul"]


@pytest.mark.int8
def test_static_qdq_int8_cnn_close_to_float(tmp_path) -> None:
    m = _cnn()
    calib = [torch.randn(8, 3, 12, 12) for _ in range(4)]
    info = write_onnx(m, calib[0], tmp_path / "s.onnx", int8="static", calib=calib)
    assert info["int8_nodes"] == 3
    assert info["ops"].get("QuantizeLinear", 0) > 0 and info["ops"].get("DequantizeLinear", 0) > 0
    x = torch.randn(16, 3, 12, 12)
    y, ref = OrtModel(tmp_path / "s.onnx")(x), m(x)
    assert 0.0 < float((y - ref).norm() / ref.norm()) < 0.08
    assert info["mean_cosine"] > 0.99


def test_static_export_without_calibration_is_an_error(tmp_path) -> None:
    with pytest.raises(MethodError, match="calibration"):
        write_onnx(_cnn(), torch.randn(1, 3, 8, 8), tmp_path / "s.onnx", int8="static")


@pytest.mark.int8
def test_export_step_writes_into_export_dir_and_records(tmp_path) -> None:
    m = _mlp()
    ctx = Context(example_inputs=torch.randn(2, 32), extras={"export_dir": str(tmp_path)})
    out = slimkit.apply(m, OnnxExport(int8="dynamic"), Targets(), ctx)
    rec = slimkit.records(out)[-1]
    assert (tmp_path / "model.onnx").is_file()
    assert rec.kind == "export.onnx" and rec.summary["max_abs_diff_float"] < 1e-3
    assert 0.99 < rec.summary["mean_cosine"] <= 1.0 + 1e-9
    assert isinstance(out[0], nn.Linear)  # the torch model itself is unchanged
    with pytest.raises(MethodError, match="export_dir"):
        slimkit.apply(m, OnnxExport(), Targets(), Context(example_inputs=torch.randn(2, 32)))
    with pytest.raises(ConfigError):
        OnnxExport(file="model.pt")


def test_torch_int8_model_exports_float_file_is_rejected_cleanly(tmp_path) -> None:
    # Int8Linear runs quantized:: kernels the ONNX exporter does not know: a clear MethodError, not a crash.
    from slimkit.quantize.ptq import DynamicQuant

    q = slimkit.apply(_mlp(), DynamicQuant(), Targets())
    with pytest.raises(MethodError, match="ONNX export"):
        export_onnx(q, torch.randn(2, 32), tmp_path / "q.onnx")


def test_cli_export_static_int8_of_a_saved_zoo_model(tmp_path, data_dir, capsys) -> None:
    import json

    from slimkit import zoo
    from slimkit.cli.main import main

    zm = zoo.load("zoo:digits-cnn")
    slimkit.save(zm.model, tmp_path / "m")
    assert main(["export", str(tmp_path / "m"), "--int8", "static", "--task", "digits", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (tmp_path / "m" / "model.onnx").is_file()
    assert doc["int8"] == "static" and doc["int8_nodes"] >= 3 and doc["mean_cosine"] > 0.99
    assert main(["export", str(tmp_path / "m"), "--int8", "static"]) == 2  # no calibration data
    assert "--task" in capsys.readouterr().err


def test_layer_sensitivity_ranks_the_layer_with_a_weight_outlier_first(tmp_path) -> None:
    from slimkit.export.ort_quant import layer_sensitivity

    m = _mlp()
    with torch.no_grad():
        m[2].weight[0, 0] = 50.0  # one outlier stretches the per-tensor int8 grid of this layer only
    x = torch.randn(32, 32)
    src = export_onnx(m, x[:2], tmp_path / "f.onnx")
    sens = layer_sensitivity(src, [x], lambda path, b: OrtModel(path)(b), per_channel=False)
    nodes = quantizable_nodes(src)
    assert set(sens) == set(nodes) and all(v >= 0 for v in sens.values())
    assert max(sens, key=sens.get) == nodes[1]
