"""The search space: strict options, units found by name, actions as recipe steps, composition."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from slimkit.core import ConfigError, Recipe
from slimkit.plan.space import INT8_UNIT, SpaceConfig, build_space, compose


def _tiny_bert() -> nn.Module:
    import transformers

    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                  intermediate_size=64)
    return transformers.BertModel(cfg).eval()


def _cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 16), nn.ReLU(),
                         nn.Linear(16, 3))


def test_from_dict_is_strict() -> None:
    assert SpaceConfig.from_dict({"channel_ratios": [0.5], "drop_blocks": False}).channel_ratios == (0.5,)
    with pytest.raises(ConfigError) as err:
        SpaceConfig.from_dict({"chanel_ratios": [0.5]})
    assert "chanel_ratios" in str(err.value)
    with pytest.raises(ConfigError, match="channel_ratios"):
        SpaceConfig.from_dict({"channel_ratios": [1.5]})
    with pytest.raises(ConfigError, match="drop_blocks"):
        SpaceConfig.from_dict({"drop_blocks": "yes"})
    with pytest.raises(ConfigError):
        SpaceConfig.from_dict({"include": ["re:("]})
    with pytest.raises(ConfigError, match="mapping"):
        SpaceConfig.from_dict(["channel_ratios"])  # type: ignore[arg-type]


def test_space_file_round_trip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cfg = SpaceConfig(svd_ratios=(0.25, 0.5), quantize_dynamic=False)
    import yaml

    (tmp_path / "space.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    assert SpaceConfig.load(tmp_path / "space.yaml") == cfg
    (tmp_path / "bad.yaml").write_text("svd_ratio: [0.5]\n")
    with pytest.raises(ConfigError, match="svd_ratio"):
        SpaceConfig.load(tmp_path / "bad.yaml")


def test_cnn_units_are_its_layers() -> None:
    units = build_space(_cnn())
    assert [u.name for u in units] == ["0", "3", "5", INT8_UNIT]
    conv = units[0]
    assert [a.label for a in conv.actions] == ["channels 25%", "channels 50%"]  # no svd for a conv
    step = conv.actions[1].steps[0]
    assert step == {"kind": "prune.channel", "targets": {"include": ["0"]}, "with": {"ratio": 0.5}}
    assert [a.label for a in units[1].actions] == ["channels 25%", "channels 50%", "svd 50%"]
    only = build_space(_cnn(), SpaceConfig(include=("3",), svd_ratios=()))
    assert [(u.name, len(u.actions)) for u in only] == [("3", 2)]


def test_transformer_units_are_blocks() -> None:
    model = _tiny_bert()
    units = build_space(model, SpaceConfig(quantize_dynamic=False))
    names = [u.name for u in units]
    assert names[:3] == ["encoder.layer.0", "encoder.layer.1", "encoder.layer.2"]
    assert not any(n.startswith("encoder.layer.0.") for n in names)  # a block's layers are the block's
    labels = [a.label for a in units[1].actions]
    assert labels == ["drop", "heads 25%", "heads 50%", "ffn 25%", "ffn 50%", "svd 50%"]
    ffn = units[1].actions[3].steps[0]
    assert ffn["targets"]["include"] == ["encoder.layer.1.intermediate.dense"]  # the expanding Linear


def test_compose_merges_drops_and_orders_steps() -> None:
    units = build_space(_tiny_bert())
    by = {u.name: {a.label: a for a in u.actions} for u in units}
    chosen = [by[INT8_UNIT]["int8 dynamic"], by["encoder.layer.2"]["drop"], by["encoder.layer.1"]["heads 25%"],
              by["encoder.layer.0"]["drop"]]
    doc = compose(chosen, name="t")
    kinds = [s["kind"] for s in doc["steps"]]
    assert kinds == ["prune.heads", "prune.layers", "quantize.dynamic"]
    assert doc["steps"][1]["with"] == {"drop": [0, 2]}
    recipe = Recipe.from_dict(doc)
    assert len(recipe.steps) == 3


@pytest.mark.slow
def test_every_block_action_runs_on_a_tiny_bert() -> None:
    """The space proposes steps the methods accept on a transformer (none is silently refused)."""
    from slimkit.core import Context
    from slimkit.plan.sensitivity import apply_action

    model = _tiny_bert()
    x = {"input_ids": torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(0)),
         "attention_mask": torch.ones(2, 8, dtype=torch.long)}
    ctx = Context(example_inputs=x, calib_data=[x], progress=False)
    block = build_space(model, SpaceConfig(include=("encoder.layer.1",)))[0]
    dense = sum(p.numel() for p in model.parameters())
    for action in block.actions:
        changed = apply_action(model, action, ctx)
        assert changed(**x).last_hidden_state.shape == (2, 8, 32), action.label
        assert sum(p.numel() for p in changed.parameters()) < dense, action.label
