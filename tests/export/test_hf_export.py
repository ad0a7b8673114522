"""HF-format export (``slimkit.export.hf``): pruned tiny random models written with an updated
config, reloaded by ``AutoModel.from_pretrained`` with the same outputs; what the config cannot
express is refused with a slimkit error naming it."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import slimkit
from slimkit.core import Context, MethodError, Targets
from slimkit.export.hf import write_hf
from slimkit.prune import ChannelPrune, HeadPrune, LayerPrune
from slimkit.prune.unstructured import NMPrune

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")


def _bert() -> nn.Module:
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                                  intermediate_size=48, max_position_embeddings=32)
    return transformers.BertModel(cfg).eval()


def _llama() -> nn.Module:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=60, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                   num_key_value_heads=2, intermediate_size=48, max_position_embeddings=32)
    return transformers.LlamaModel(cfg).eval()


def _batch(seed: int = 0, b: int = 2, t: int = 10) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, t, dtype=torch.long)
    mask[1, 7:] = 0  # a padded row
    return {"input_ids": torch.randint(0, 60, (b, t), generator=g), "attention_mask": mask}


def _ctx() -> Context:
    return Context(example_inputs=_batch(), calib_data=[_batch(1), _batch(2)])


def _reload_matches(model: nn.Module, out: Path) -> None:
    again = transformers.AutoModel.from_pretrained(str(out), local_files_only=True).eval()
    for seed in (3, 4):
        b = _batch(seed)
        with torch.no_grad():
            ref = model(**b).last_hidden_state
            got = again(**b).last_hidden_state
        assert torch.allclose(ref, got, atol=1e-5), float((ref - got).abs().max())


def test_bert_depth_and_uniform_ffn_round_trip(tmp_path: Path) -> None:
    model = slimkit.apply(_bert(), LayerPrune(drop=(0, 2)), ctx=_ctx())
    model = slimkit.apply(model, ChannelPrune(ratio=0.25), Targets(include=("*intermediate.dense",)), ctx=_ctx())
    info = write_hf(model, tmp_path / "hf", example_inputs=_batch())
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (cfg["num_hidden_layers"], cfg["intermediate_size"]) == (2, 36)
    assert info["max_abs_diff"] < 1e-4
    _reload_matches(model, tmp_path / "hf")


def test_llama_head_depth_ffn_round_trip(tmp_path: Path) -> None:
    """LLaMA stores head_dim in its config, so uniformly pruned (GQA) heads are expressible."""
    model = slimkit.apply(_llama(), LayerPrune(drop=(1,)), ctx=_ctx())
    model = slimkit.apply(model, HeadPrune(heads_per_group=1), ctx=_ctx())
    model = slimkit.apply(model, ChannelPrune(ratio=0.5), Targets(include=("*mlp.up_proj",)), ctx=_ctx())
    write_hf(model, tmp_path / "hf", example_inputs=_batch())
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 2
    assert cfg["intermediate_size"] == 24
    assert cfg["num_key_value_heads"] == 1 and cfg["num_attention_heads"] == 2
    _reload_matches(model, tmp_path / "hf")


def test_bert_pruned_heads_are_refused(tmp_path: Path) -> None:
    model = slimkit.apply(_bert(), HeadPrune(heads_per_group=1), ctx=_ctx())
    with pytest.raises(MethodError, match=r"3 attention heads of size 8.*derives the head size"):
        write_hf(model, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_per_layer_ffn_widths_are_refused(tmp_path: Path) -> None:
    model = slimkit.apply(_bert(), ChannelPrune(ratio=0.25), Targets(include=("encoder.layer.0.intermediate.dense",)),
                          ctx=_ctx())
    with pytest.raises(MethodError, match=r"per-layer FFN widths differ \(encoder.layer.0.intermediate.dense: 36, "
                                          r"encoder.layer.1.intermediate.dense: 48.*one intermediate_size"):
        write_hf(model, tmp_path / "hf")


def test_nm_sparsity_is_refused(tmp_path: Path) -> None:
    model = slimkit.apply(_bert(), NMPrune(n=2, m=4), Targets(include=("*intermediate.dense",)), ctx=_ctx())
    with pytest.raises(MethodError, match=r"prune\.nm: its sparsity .* dense"):
        write_hf(model, tmp_path / "hf")


def test_int8_layers_are_refused(tmp_path: Path) -> None:
    from slimkit.quantize.ptq import DynamicQuant

    model = slimkit.apply(_bert(), DynamicQuant(), ctx=_ctx())
    with pytest.raises(MethodError, match=r"quantize\.dynamic: quantized weights"):
        write_hf(model, tmp_path / "hf")


def test_slimkit_module_is_named(tmp_path: Path) -> None:
    """A module swap no record kind flags (here by hand) is caught by the structure check."""
    model = _bert()
    model.encoder.layer[0].intermediate.dense = nn.Sequential(nn.Linear(32, 8), nn.Linear(8, 48))  # low-rank
    with pytest.raises(MethodError, match=r"modules BertModel does not have: encoder.layer.0.intermediate.dense "
                                          r"\(Sequential\)"):
        write_hf(model, tmp_path / "hf")


def test_no_hf_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(MethodError, match="needs a transformers PreTrainedModel"):
        write_hf(nn.Linear(2, 2), tmp_path / "hf")


def test_wrapper_with_own_tensors_is_refused(tmp_path: Path) -> None:
    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = _bert()
            self.head = nn.Linear(32, 2)

    with pytest.raises(MethodError, match=r"head\.weight.*outside it"):
        write_hf(Head(), tmp_path / "hf")


def _saved_tiny_bert(tmp_path: Path) -> Path:
    src = tmp_path / "bert"
    _bert().save_pretrained(str(src))
    model = slimkit.apply(_bert(), LayerPrune(keep_every=2), ctx=_ctx())
    out = tmp_path / "pruned"
    slimkit.save(model, out, spec=f"hf:{src}")
    return out


def test_cli_export_hf(tmp_path: Path, capsys: Any) -> None:
    from slimkit.cli.main import main

    folder = _saved_tiny_bert(tmp_path)
    assert main(["export", str(folder), "--format", "hf", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["config"]["num_hidden_layers"] == 2 and doc["max_abs_diff"] < 1e-4
    again = transformers.AutoModel.from_pretrained(str(folder / "hf"), local_files_only=True)
    assert len(again.encoder.layer) == 2
    assert main(["export", str(folder), "--format", "hf"]) == 2  # exists: one-line error
    assert "exists" in capsys.readouterr().err
    assert main(["export", str(folder), "--format", "hf", "--int8", "static"]) == 2
    assert "--int8" in capsys.readouterr().err
