"""The int8 ISA decision (slimkit.core.cpu) and the settings every int8 path takes from it,
with both CPU answers faked so each choice is checked on any machine."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import slimkit
from slimkit.core import Targets, cpu
from slimkit.core.errors import ConfigError
from slimkit.quantize.ptq import DynamicQuant, StaticQuant

pytestmark = pytest.mark.int8

ZEN2 = {"fpu", "sse4_2", "avx", "avx2", "fma"}  # AMD EPYC Zen 2: AVX2, no VNNI
ZEN4 = ZEN2 | {"avx512f", "avx512bw", "avx512_vnni", "avx512_bf16"}


def test_fake_cpu_answers_give_the_expected_choice() -> None:
    old = cpu.int8_isa(env={}, flags=ZEN2)
    assert (old.name, old.has_vnni, old.weight_qmax, old.source) == ("avx2", False, 63, "cpu")
    assert old.ort_precision_option == cpu._is_x86()
    new = cpu.int8_isa(env={}, flags=ZEN4)
    assert (new.name, new.has_vnni, new.weight_qmax) == ("avx512_vnni", True, 127)
    assert not new.ort_precision_option
    assert cpu.int8_isa(env={}, flags=ZEN2 | {"avx_vnni"}).has_vnni  # Alder Lake-style AVX-VNNI
    assert cpu.int8_isa(env={}, flags=ZEN4 - {"avx512_vnni"}).name == "avx512"  # Skylake-SP: AVX-512, no VNNI
    assert "avx512_vnni" in new.flags and "fpu" not in new.flags  # only the flags that matter are shown
    assert set(new.to_dict()) >= {"name", "has_vnni", "weight_qmax", "flags", "cpu_model", "versions"}
    assert "torch" in new.to_dict()["versions"]


@pytest.mark.parametrize("env, vnni", [
    ({"FBGEMM_ENABLE_INSTRUCTIONS": "AVX2"}, False),
    ({"FBGEMM_ENABLE_INSTRUCTIONS": "avx512"}, False),
    ({"FBGEMM_ENABLE_INSTRUCTIONS": "AVX512_E1"}, True),
    ({"ONEDNN_MAX_CPU_ISA": "AVX2"}, False),
    ({"DNNL_MAX_CPU_ISA": "AVX512_CORE"}, False),
    ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI"}, True),
    ({"ONEDNN_MAX_CPU_ISA": "ALL"}, True),
    ({"ATEN_CPU_CAPABILITY": "avx2"}, True),  # does not reach the int8 GEMMs (checked on the kernels)
    ({"SLIMKIT_INT8_ISA": "avx2"}, False),
    ({"SLIMKIT_INT8_ISA": "auto"}, True),
])
def test_forcing_variables_take_vnni_away_on_a_vnni_cpu(env: dict[str, str], vnni: bool) -> None:
    isa = cpu.int8_isa(env=env, flags=ZEN4)
    assert isa.has_vnni is vnni, isa.line()
    if not vnni:
        assert isa.source != "cpu" and isa.weight_qmax == cpu.SAFE_QMAX


def test_override_can_claim_vnni_and_rejects_unknown_values() -> None:
    assert cpu.int8_isa(env={"SLIMKIT_INT8_ISA": "vnni"}, flags=ZEN2).has_vnni
    with pytest.raises(ConfigError, match="SLIMKIT_INT8_ISA"):
        cpu.int8_isa(env={"SLIMKIT_INT8_ISA": "avx9"}, flags=ZEN2)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()


@pytest.mark.parametrize("answer, qmax", [("avx2", 63), ("vnni", 127)])
def test_torch_int8_methods_follow_the_answer_and_record_it(monkeypatch: pytest.MonkeyPatch, answer: str,
                                                           qmax: int) -> None:
    monkeypatch.setenv(cpu.OVERRIDE_ENV, answer)
    x = torch.randn(4, 16)
    for config, ctx in ((DynamicQuant(), None), (StaticQuant(), slimkit.Context(calib_data=[x]))):
        q = slimkit.apply(_mlp(), config, Targets(), ctx)
        assert int(q[0].weight_int8.abs().max()) == qmax
        rec = slimkit.records(q)[-1]
        assert rec.summary["weight_qmax"] == qmax and rec.data["int8_isa"]["has_vnni"] is (answer == "vnni")
        assert rec.data["int8_isa"]["source"] == f"{cpu.OVERRIDE_ENV}={answer}"
    fixed = slimkit.apply(_mlp(), DynamicQuant(weight_bits=8), Targets())  # the config can fix it
    assert int(fixed[0].weight_int8.abs().max()) == 127


def test_restoring_an_8bit_artifact_without_vnni_warns(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv(cpu.OVERRIDE_ENV, "vnni")
    q = slimkit.apply(_mlp(), DynamicQuant(), Targets())
    slimkit.save(q, tmp_path / "vnni")
    monkeypatch.setenv(cpu.OVERRIDE_ENV, "avx2")
    with pytest.warns(cpu.Int8IsaWarning, match="saturate"):
        slimkit.restore(tmp_path / "vnni", model=_mlp)
    safe = slimkit.apply(_mlp(), DynamicQuant(), Targets())  # 7-bit codes: fine anywhere
    slimkit.save(safe, tmp_path / "safe")
    monkeypatch.setenv(cpu.OVERRIDE_ENV, "vnni")
    with warnings.catch_warnings():
        warnings.simplefilter("error", cpu.Int8IsaWarning)
        slimkit.restore(tmp_path / "safe", model=_mlp)
        slimkit.restore(tmp_path / "vnni", model=_mlp)


@pytest.mark.parametrize("answer", ["avx2", "vnni"])
def test_ort_sessions_and_pt2e_quantizer_follow_the_answer(monkeypatch: pytest.MonkeyPatch, answer: str) -> None:
    pytest.importorskip("onnxruntime")
    from slimkit.export.onnx import X64_QUANT_PRECISION, session_options
    from slimkit.export.pt2e import _quantizer, _torchao_pt2e

    monkeypatch.setenv(cpu.OVERRIDE_ENV, answer)
    entry = session_options().get_session_config_entry(X64_QUANT_PRECISION) if answer == "avx2" else None
    if answer == "avx2" and cpu._is_x86():
        assert entry == "1"
    else:
        with pytest.raises(Exception):  # noqa: B017 - ORT raises a bare RuntimeError for an unset key
            session_options().get_session_config_entry(X64_QUANT_PRECISION)
    _, xiq = _torchao_pt2e()
    q = _quantizer(xiq, True, (), cpu.weight_qmax())
    spec = q.global_config.weight
    assert (spec.quant_min, spec.quant_max) == ((-63, 63) if answer == "avx2" else (-128, 127))


def test_pt2e_program_records_its_weight_range_and_warns_when_loaded_without_vnni(
        monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    pytest.importorskip("torchao")
    from slimkit.export.pt2e import Pt2eModel, program_weight_qmax, quantize_pt2e, save_pt2

    x = torch.randn(4, 16)
    monkeypatch.setenv(cpu.OVERRIDE_ENV, "avx2")
    assert program_weight_qmax(quantize_pt2e(_mlp(), (x,), [(x,)])) == 63  # follows the answer
    wide = quantize_pt2e(_mlp(), (x,), [(x,)], weight_qmax=127)
    assert program_weight_qmax(wide) == 127
    save_pt2(wide, tmp_path / "wide.pt2")
    with pytest.warns(cpu.Int8IsaWarning, match="saturate"):
        Pt2eModel(tmp_path / "wide.pt2", compile=False)
    monkeypatch.setenv(cpu.OVERRIDE_ENV, "vnni")
    with warnings.catch_warnings():
        warnings.simplefilter("error", cpu.Int8IsaWarning)
        Pt2eModel(tmp_path / "wide.pt2", compile=False)
