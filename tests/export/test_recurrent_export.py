"""LSTM/GRU models through the exporters: float ONNX works at any length; what cannot export says why."""
from __future__ import annotations

import pytest
import torch

import slimkit
from slimkit.core import MethodError
from slimkit.export.onnx import OrtModel, write_onnx
from slimkit.export.pt2e import write_pt2e
from slimkit.quantize.ptq import DynamicQuant
from slimkit.zoo.bilstm import BiLSTMClassifier

pytestmark = pytest.mark.usefixtures("one_thread")


def _batch(b: int, t: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(b * 100 + t)
    return {"input_ids": torch.randint(1, 50, (b, t), generator=g), "attention_mask": torch.ones(b, t, dtype=torch.long)}


@pytest.fixture
def tiny() -> BiLSTMClassifier:
    torch.manual_seed(0)
    return BiLSTMClassifier(vocab_size=50, embed_dim=8, hidden=12).eval()


def test_float_bilstm_exports_to_onnx_for_any_batch_and_length(tiny, tmp_path) -> None:
    info = write_onnx(tiny, _batch(1, 7), tmp_path / "m.onnx")
    assert info["max_abs_diff_float"] < 1e-4
    ort = OrtModel(tmp_path / "m.onnx")
    b = _batch(3, 11)
    with torch.no_grad():
        torch.testing.assert_close(ort(**b), tiny(**b), rtol=1e-4, atol=1e-5)


def test_int8_rnn_refuses_onnx_naming_the_layer(tiny, tmp_path) -> None:
    q = slimkit.apply(tiny, DynamicQuant(), slimkit.Targets())
    with pytest.raises(MethodError, match="'lstm' is an int8 LSTM"):
        write_onnx(q, _batch(1, 7), tmp_path / "q.onnx")


@pytest.mark.parametrize("int8", [False, True])
def test_pt2e_refuses_recurrent_layers_naming_them(tiny, tmp_path, int8) -> None:
    model = slimkit.apply(tiny, DynamicQuant(), slimkit.Targets()) if int8 else tiny
    with pytest.raises(MethodError, match="export.pt2e: 'lstm' is a LSTM layer"):
        write_pt2e(model, _batch(1, 7), tmp_path / "m.pt2", calib=[_batch(1, 7)])
