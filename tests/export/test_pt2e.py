"""PT2E int8 (torchao x86 Inductor quantizer): real int8 kernels, saved programs, dynamic shapes."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import slimkit
from slimkit.core import ArtifactError, Context, MethodError, Targets
from slimkit.export.pt2e import (
    Pt2eExport,
    Pt2eModel,
    dynamic_shapes_for,
    has_token_inputs,
    quantize_pt2e,
    write_pt2e,
)

pytest.importorskip("torchao")


class TinyEncoder(nn.Module):
    """Embedding -> 2 Linear/GELU blocks -> masked mean: the shape of a sentence encoder."""

    def __init__(self, vocab: int = 50, d: int = 64) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d)) for _ in range(2))
        self.norm = nn.LayerNorm(d)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.emb(input_ids)  # [B, T, D]
        for b in self.blocks:
            h = self.norm(h + b(h))
        m = attention_mask.unsqueeze(-1).float()  # [B, T, 1]
        return (h * m).sum(1) / m.sum(1)  # [B, D]


def _tokens(b: int, t: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(0, 50, (b, t), generator=g), "attention_mask": torch.ones(b, t, dtype=torch.long)}


def test_dynamic_dims_only_for_token_inputs() -> None:
    assert has_token_inputs(_tokens(2, 5, 0)) and not has_token_inputs(torch.randn(2, 3, 8, 8))
    ds = dynamic_shapes_for(_tokens(2, 5, 0))
    assert set(ds["input_ids"]) == {0, 1}
    assert set(dynamic_shapes_for((torch.randn(2, 3, 8, 8),))[0]) == {0}


def test_static_int8_token_model_serves_any_shape_and_round_trips(tmp_path) -> None:
    torch.manual_seed(0)
    m = TinyEncoder().eval()
    calib = [_tokens(8, t, s) for s, t in enumerate((6, 9, 12, 7))]
    program = quantize_pt2e(m, calib[0], calib, static=True)
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert any("quantize_per_channel" in t for t in targets)  # int8 weights
    assert any("quantize_per_tensor" in t for t in targets)  # static uint8 activations
    stored = {k: v for k, v in [*program.state_dict.items(), *program.constants.items()] if isinstance(v, torch.Tensor)}
    float_mats = [k for k, v in stored.items() if v.is_floating_point() and v.dim() == 2 and "emb" not in k]
    assert not float_mats  # the float originals of the int8 weights are not carried along
    assert sum(v.dtype == torch.int8 and v.dim() == 2 for v in stored.values()) == 4
    q = Pt2eModel(program)
    for b, t in ((1, 5), (3, 11), (16, 20)):  # shapes never seen in calibration or export
        x = _tokens(b, t, 100 + b)
        with torch.no_grad():
            ref = m(**x)
        got = q(**x)
        assert got.shape == ref.shape
        cos = nn.functional.cosine_similarity(got, ref).mean()
        assert 0.98 < float(cos) and not torch.equal(got, ref)  # quantized, and close
    info = write_pt2e(m, calib[0], tmp_path / "m.pt2", static=True, calib=calib)
    assert info["bytes"] == (tmp_path / "m.pt2").stat().st_size and info["int8_ops"] == 4
    assert info["mean_cosine"] > 0.98
    again = Pt2eModel(tmp_path / "m.pt2")
    x = _tokens(4, 9, 7)
    assert torch.allclose(again(**x), q(**x), atol=1e-5)


def test_static_without_calibration_and_missing_file_are_errors(tmp_path) -> None:
    with pytest.raises(MethodError, match="calibration"):
        quantize_pt2e(TinyEncoder(), _tokens(2, 4, 0), None, static=True)
    with pytest.raises(ArtifactError, match="not found"):
        Pt2eModel(tmp_path / "nope.pt2")


def test_export_step_and_cli(tmp_path, data_dir, capsys) -> None:
    from slimkit import zoo
    from slimkit.cli.main import main

    zm = zoo.load("zoo:digits-cnn")
    x = zm.example_inputs(4)
    ctx = Context(example_inputs=x, calib_data=[x], extras={"export_dir": str(tmp_path / "e")})
    out = slimkit.apply(zm.model, Pt2eExport(), Targets(), ctx)
    rec = slimkit.records(out)[-1]
    assert (tmp_path / "e" / "model.pt2").is_file() and rec.summary["mean_cosine"] > 0.99
    slimkit.save(zm.model, tmp_path / "m")
    assert main(["export", str(tmp_path / "m"), "--format", "pt2e", "--task", "digits", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["int8"] == "static" and doc["int8_ops"] >= 3 and doc["mean_cosine"] > 0.99
    assert (tmp_path / "m" / "model.pt2").is_file()
    assert main(["export", str(tmp_path / "m"), "--format", "pt2e"]) == 2  # static needs --task


def test_batch_one_example_still_gives_a_symbolic_batch() -> None:
    # what `slimkit compress` hands the export step: Context.example_inputs at batch 1
    torch.manual_seed(0)
    m = TinyEncoder().eval()
    calib = [_tokens(4, t, s) for s, t in enumerate((6, 9))]
    q = Pt2eModel(quantize_pt2e(m, _tokens(1, 8, 0), calib, static=True))
    for b, t in ((1, 8), (5, 13)):
        x = _tokens(b, t, 50 + b)
        with torch.no_grad():
            ref = m(**x)
        assert float(nn.functional.cosine_similarity(q(**x), ref).mean()) > 0.98


def test_config_is_patched_only_for_new_input_signatures() -> None:
    """Inductor's freezing config wraps the calls that may compile (a new shape), not every call."""
    import contextlib

    torch.manual_seed(0)
    m = TinyEncoder().eval()
    calib = [_tokens(4, 6, 0)]
    q = Pt2eModel(quantize_pt2e(m, calib[0], calib, static=True), compile=False)
    patched: list[dict] = []

    class Recorder:  # stands in for torch._inductor.config
        @staticmethod
        def patch(cfg: dict) -> contextlib.AbstractContextManager:
            patched.append(cfg)
            return contextlib.nullcontext()

    q._inductor = Recorder()
    first = q(**_tokens(2, 5, 1))
    again = q(**_tokens(2, 5, 1))
    assert len(patched) == 1 and patched[0]["freezing"] is True and torch.equal(first, again)
    q(**_tokens(2, 5, 2))  # same shapes, other values: no patch
    q(**_tokens(3, 7, 3))  # a new shape: patched
    assert len(patched) == 2
