"""dynamic.early_exit on a tiny random BERT classifier: exits, skipped blocks, batch > 1, replay, errors, export."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import slimkit
from slimkit.core import ArtifactError, ConfigError, Context, MethodError, Targets, config_class
from slimkit.dynamic import EarlyExitDynamic, collect_exits, replay_exits

from .models import text_batches, tiny_bert_classifier

pytestmark = pytest.mark.usefixtures("one_thread_module")


def _early(threshold: float = 0.3, **options: Any) -> tuple[nn.Module, nn.Module, list[Any]]:
    model = tiny_bert_classifier()
    batches = text_batches()
    early = slimkit.apply(model, EarlyExitDynamic(steps=4, threshold=threshold, **options),
                          ctx=Context(train_data=batches, progress=False, seed=0))
    return model, early, batches


def _blocks_called(model: nn.Module) -> list[int]:
    """Per-block call counter (pre-hooks on the block list's modules)."""
    calls = [0] * len(model.bert.encoder.layer)
    for i, block in enumerate(model.bert.encoder.layer):
        block.register_forward_pre_hook(lambda _m, _a, i=i: calls.__setitem__(i, calls[i] + 1))
    return calls


def test_never_exits_at_threshold_zero_and_equals_the_full_model() -> None:
    model, early, batches = _early(threshold=0.0)
    with torch.no_grad():
        for inputs, _ in batches:
            assert torch.equal(early(**inputs).logits, model(**inputs).logits)
            assert early.exit_stats.last == [3] * inputs["input_ids"].shape[0]
    assert early.exit_stats.mean_blocks == 3.0


def test_every_row_exits_after_the_first_block_at_threshold_one_and_later_blocks_never_run() -> None:
    _, early, batches = _early(threshold=1.0)
    calls = _blocks_called(early)
    inputs = {k: v[:1] for k, v in batches[0][0].items()}  # batch 1
    with torch.no_grad():
        out = early(**inputs).logits
        exits, _ = collect_exits(early, **inputs)
    assert early.exit_stats.last == [1]
    assert torch.equal(out, exits[0])  # the first exit head's logits are the answer
    assert calls[0] >= 1 and calls[1:] == [1, 1]  # only collect_exits ran blocks 2 and 3
    assert early.exit_stats.batch_blocks == 1


def test_exits_off_run_the_full_model() -> None:
    model, early, batches = _early(threshold=1.0)
    early.exit_settings.enabled = False
    with torch.no_grad():
        assert torch.equal(early(**batches[0][0]).logits, model(**batches[0][0]).logits)


def test_batch_rows_exit_alone_and_the_batch_runs_until_its_last_row_exits() -> None:
    _, early, batches = _early()
    inputs = batches[1][0]
    with torch.no_grad():
        exits, final = collect_exits(early, **inputs)
        ent = torch.stack([slimkit.dynamic.exits.normalized_entropy(e) for e in exits])  # [2, B]
        early.exit_settings.threshold = float(ent.median())  # some rows exit, some do not
        batch_out = early(**inputs).logits
        batch_layers = list(early.exit_stats.last)
        rows = []
        for i in range(inputs["input_ids"].shape[0]):
            rows.append(early(**{k: v[i:i + 1] for k, v in inputs.items()}).logits)
            assert early.exit_stats.last == [batch_layers[i]]
    assert len(set(batch_layers)) > 1
    torch.testing.assert_close(torch.cat(rows), batch_out)
    for i, layer in enumerate(batch_layers):
        want = exits[layer - 1][i] if layer < 3 else final[i]
        torch.testing.assert_close(batch_out[i], want)
    early.exit_stats.reset()
    with torch.no_grad():
        early(**inputs)
    assert early.exit_stats.batch_blocks == max(batch_layers)


def test_patience_exits_once_heads_agree_and_never_with_impossible_patience() -> None:
    _, early, batches = _early(criterion="patience", exit_patience=1)
    inputs = batches[0][0]
    with torch.no_grad():
        exits, _ = collect_exits(early, **inputs)
        early(**inputs)
    agree = (exits[0].argmax(-1) == exits[1].argmax(-1)).tolist()
    assert early.exit_stats.last == [2 if a else 3 for a in agree]
    early.exit_settings.patience = 2  # 2 exit heads: a streak of 2 agreements cannot happen
    with torch.no_grad():
        early(**inputs)
    assert early.exit_stats.last == [3] * len(agree)


def test_entropy_patience_needs_confidence_and_agreement_unless_very_confident() -> None:
    from slimkit.dynamic.exits import normalized_entropy

    _, early, batches = _early(criterion="entropy_patience", exit_patience=1, solo_ratio=0.5)
    inputs = batches[0][0]
    with torch.no_grad():
        exits, _ = collect_exits(early, **inputs)
    ent = torch.stack([normalized_entropy(e) for e in exits])  # [2, B]
    agree = exits[0].argmax(-1) == exits[1].argmax(-1)  # [B]
    for t in sorted({0.0, *ent.flatten().tolist(), 1.0}):  # every threshold that changes a decision
        t = min(1.0, t + 1e-4)
        early.exit_settings.threshold = t
        with torch.no_grad():
            early(**inputs)
        want = []
        for i in range(len(agree)):
            if ent[0, i] < 0.5 * t:  # head 1 alone: very confident
                want.append(1)
            elif ent[1, i] < 0.5 * t or (ent[1, i] < t and agree[i]):
                want.append(2)
            else:
                want.append(3)
        assert early.exit_stats.last == want, t
        assert replay_exits(exits, early.exit_settings).tolist() == want
    early.exit_settings.solo_ratio = 1.0  # the entropy rule
    early.exit_settings.threshold = float(ent.median())
    with torch.no_grad():
        early(**inputs)
    hybrid = list(early.exit_stats.last)
    early.exit_settings.criterion = "entropy"
    with torch.no_grad():
        early(**inputs)
    assert hybrid == early.exit_stats.last


@pytest.mark.parametrize("options", [{"criterion": "entropy", "threshold": 0.4},
                                     {"criterion": "patience", "exit_patience": 1},
                                     {"criterion": "entropy_patience", "threshold": 0.6, "exit_patience": 1}])
def test_replay_exits_matches_the_live_model_row_by_row(options: dict[str, Any]) -> None:
    from slimkit.dynamic.exits import normalized_entropy

    _, early, batches = _early(**options)
    for inputs, _ in batches:
        rows = [inputs] + [{k: v[i:i + 1] for k, v in inputs.items()} for i in range(len(inputs["input_ids"]))]
        for x in rows:  # the batch (tensor decisions), then each row alone (batch 1: Python-scalar decisions)
            with torch.no_grad():
                exits, _ = collect_exits(early, **x)
            ent = torch.stack([normalized_entropy(e) for e in exits])  # [2, B]
            # thresholds on a row's own entropy too: a decision exactly at the boundary must agree
            for t in [options.get("threshold", 0.3), *ent.flatten().tolist()]:
                early.exit_settings.threshold = t
                with torch.no_grad():
                    early(**x)
                assert early.exit_stats.last == replay_exits(exits, early.exit_settings).tolist()


def test_heads_learn_the_final_logits_and_the_backbone_is_frozen() -> None:
    model, early, batches = _early()
    before = {k: v for k, v in model.state_dict().items()}
    after = early.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert {k.split(".")[0] for k in after if k not in before} == {"exit_heads"}
    rec = slimkit.records(early)[0]
    assert rec.kind == "dynamic.early_exit" and rec.summary["exit_heads"] == 2 and rec.summary["steps"] == 4

    def gap(m: nn.Module) -> float:
        with torch.no_grad():
            exits, final = collect_exits(m, **batches[0][0])
        return float(sum((e - final).pow(2).mean() for e in exits))

    trained = slimkit.apply(model, EarlyExitDynamic(steps=60, lr=1e-2), ctx=Context(train_data=batches,
                                                                                    progress=False))
    assert gap(trained) < gap(early) / 2


@pytest.mark.parametrize("options", [{"threshold": 0.5},
                                     {"criterion": "entropy_patience", "threshold": 0.7, "exit_patience": 1,
                                      "solo_ratio": 0.25}])
def test_save_restore_is_bit_exact(tmp_path: Path, options: dict[str, Any]) -> None:
    _, early, batches = _early(**options)
    slimkit.save(early, tmp_path)
    back = slimkit.restore(tmp_path, model=lambda: tiny_bert_classifier(seed=7))
    assert type(back) is type(early)
    assert back.state_dict().keys() == early.state_dict().keys()
    assert all(torch.equal(v, early.state_dict()[k]) for k, v in back.state_dict().items())
    with torch.no_grad():
        for inputs, _ in batches:
            assert torch.equal(back(**inputs).logits, early(**inputs).logits)
            assert back.exit_stats.last == early.exit_stats.last
    assert back.exit_settings == early.exit_settings  # the rule and its options come back from the record


def test_replay_refuses_a_model_with_other_blocks(tmp_path: Path) -> None:
    _, early, _ = _early()
    slimkit.save(early, tmp_path)
    with pytest.raises(ArtifactError, match="list of 3 blocks"):
        slimkit.restore(tmp_path, model=lambda: tiny_bert_classifier(layers=2))


def test_deep_copies_are_independent() -> None:
    _, early, batches = _early(threshold=1.0)
    twin = copy.deepcopy(early)
    twin.exit_settings.threshold = 0.0
    with torch.no_grad():
        twin(**batches[0][0])
        early(**batches[0][0])
    assert twin.exit_stats.last == [3] * 4 and early.exit_stats.last == [1] * 4


def test_unsupported_models_and_inputs_raise_slimkit_errors() -> None:
    cnn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(144, 2))
    with pytest.raises(MethodError, match="block"):
        slimkit.apply(cnn, EarlyExitDynamic(steps=1), ctx=Context(train_data=[torch.randn(2, 1, 8, 8)]))
    encoder = tiny_bert_classifier().bert  # a BertModel: hidden states, no logits
    with pytest.raises(MethodError, match=r"logits \[B, C\]"):
        slimkit.apply(encoder, EarlyExitDynamic(steps=1), ctx=Context(train_data=text_batches(1)))
    with pytest.raises(MethodError, match="needs input batches"):
        slimkit.apply(tiny_bert_classifier(), EarlyExitDynamic(steps=1), ctx=Context())
    _, early, batches = _early()
    with pytest.raises(MethodError, match="already has exit heads"):
        slimkit.apply(early, EarlyExitDynamic(steps=1), ctx=Context(train_data=batches, progress=False),
                      targets=Targets(include=("bert.encoder.layer",)))
    with pytest.raises(ConfigError, match="threshold"):
        EarlyExitDynamic(threshold=1.5)
    with pytest.raises(ConfigError, match="exit_patience"):
        EarlyExitDynamic(exit_patience=0)
    with pytest.raises(ConfigError, match="solo_ratio"):
        EarlyExitDynamic(criterion="entropy_patience", solo_ratio=1.5)
    with pytest.raises(ConfigError, match="criterion"):
        EarlyExitDynamic.from_dict({"criterion": "maxprob"})


def test_blocks_pruned_after_early_exit_are_reported() -> None:
    _, early, batches = _early()
    pruned = slimkit.apply(early, config_class("prune.layers")(drop=[0]), Targets(include=("bert.encoder.layer",)))
    with pytest.raises(MethodError, match="no longer"), torch.no_grad():
        pruned(**batches[0][0])


def test_export_refuses_live_exits_and_exports_the_full_depth_model(tmp_path: Path) -> None:
    model, early, batches = _early()
    inputs = batches[0][0]
    ctx = Context(example_inputs=inputs, progress=False, extras={"export_dir": str(tmp_path)})
    with pytest.raises(MethodError, match="exit_settings.enabled = False"):
        slimkit.apply(early, config_class("export.onnx")(file="exit.onnx"), ctx=ctx)
    with pytest.raises(MethodError, match="data-dependent"), torch.no_grad():
        torch.export.export(early, (), dict(inputs))
    early.exit_settings.enabled = False
    program = torch.export.export(early, (), dict(inputs))
    with torch.no_grad():
        torch.testing.assert_close(program.module()(**inputs).logits, model(**inputs).logits)


def test_hyphenated_kind_resolves() -> None:
    assert config_class("dynamic.early-exit") is EarlyExitDynamic


def test_profile_counts_the_blocks_an_input_ran() -> None:
    from slimkit.measure import profile

    model, early, batches = _early(threshold=0.0)
    x = {k: v[:1] for k, v in batches[0][0].items()}
    full, every_block = profile(model, x).macs, profile(early, x).macs
    head_macs = sum(p.numel() for n, p in early.exit_heads.named_parameters() if n.endswith("weight"))  # batch 1
    assert every_block == full + head_macs  # both exit heads ran, no exit
    early.exit_settings.threshold = 1.0
    first = profile(early, x).macs  # block 1 and its head, then the model's own (tiny) head
    assert first < 0.5 * full  # 1 of 3 blocks (the blocks are nearly all of the MACs)
