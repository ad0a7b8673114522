"""prune.channel with each neuron criterion, configured from recipe-like dicts.

On a tiny MLP whose hidden neurons 0..3 read one *binary* input feature with large weights
and neurons 4..7 read three Gaussian features with small weights, while the next layer
reads neurons 0..3 weakly and 4..7 strongly, the three criteria disagree in known ways:

- ``output_norm`` (the producer's output rows) keeps the large-weight neurons 0..3;
- ``input_norm`` (the consumer's input columns) keeps the strongly read neurons 4..7;
- ``entropy`` (of the neurons' activations) keeps 4..7: 0..3 take only two values each.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import slimkit
from slimkit.core import ConfigError, Context, config_class
from slimkit.core.context import call_model

from .models import FACTORIES


def _mlp_and_data() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(64, 4, generator=gen)
    x[:, 0] = (x[:, 0] > 0).float()  # a binary feature
    with torch.no_grad():
        w1 = torch.zeros(8, 4)
        w1[:4, 0] = torch.tensor([10.0, -9.0, 8.0, 11.0])  # neurons 0..3: two values each
        w1[4:, 1:] = 0.1 * torch.randn(4, 3, generator=gen)  # neurons 4..7: continuous, small
        model[0].weight.copy_(w1)
        model[0].bias.fill_(0.5)
        w2 = torch.randn(3, 8, generator=gen)
        w2[:, :4] *= 0.01  # the next layer barely reads 0..3
        model[2].weight.copy_(w2)
    return model, x


@pytest.mark.parametrize(("criterion", "kept"), [
    ("output_norm", [0, 1, 2, 3]),
    ("input_norm", [4, 5, 6, 7]),
    ("entropy", [4, 5, 6, 7]),
])
def test_neuron_criterion_from_a_recipe_step(criterion: str, kept: list[int], tmp_path: Path) -> None:
    step = {"kind": "prune.channel", "with": {"ratio": 0.5, "importance": criterion, "calib_batches": 2},
            "targets": {"include": ["0"]}}
    model, x = _mlp_and_data()
    config = config_class(step["kind"]).from_dict(step["with"])
    ctx = Context(example_inputs=x[:4], calib_data=[x[:32], x[32:]], progress=False)
    pruned = slimkit.apply(model, config, slimkit.Targets.from_dict(step["targets"]), ctx)
    rec = slimkit.records(pruned)[-1]
    assert rec.config["importance"] == criterion
    assert rec.data["groups"]["0"]["kept"] == kept
    assert pruned[0].out_features == 4 and pruned[2].in_features == 4
    torch.testing.assert_close(pruned[0].weight.detach(), model[0].weight.detach()[kept])
    slimkit.save(pruned, tmp_path / "p")
    restored = slimkit.restore(tmp_path / "p", model=lambda: _mlp_and_data()[0])
    torch.testing.assert_close(restored(x), pruned(x))


@pytest.mark.parametrize("criterion", ["l1", "output_norm", "input_norm", "entropy"])
def test_every_weight_and_activation_criterion_runs_on_coupled_groups(criterion: str) -> None:
    """Residual adds and concatenation couple several producers and consumers per group."""
    model, x = FACTORIES["residual_concat_cnn"]()
    ctx = Context(example_inputs=x, calib_data=[x, x], progress=False)
    config = config_class("prune.channel").from_dict({"ratio": 0.5, "importance": criterion})
    pruned = slimkit.apply(model, config, ctx=ctx)
    assert pruned.fc1.out_features == 10 and pruned.head_conv.out_channels == 6 and pruned.pw.out_channels == 4
    assert call_model(pruned, x).shape == (2, 5)


def test_entropy_averages_conv_maps_over_space() -> None:
    """A conv channel whose map is constant over every image scores 0 and is pruned first."""
    model, x = FACTORIES["digits_cnn"]()
    with torch.no_grad():
        model.features[0].weight[:4] = 0.0  # channels 0..3 output their bias everywhere
    ctx = Context(example_inputs=x, calib_data=[torch.randn(8, *x.shape[1:], generator=torch.Generator().manual_seed(0))],
                  progress=False)
    pruned = slimkit.apply(model, config_class("prune.channel").from_dict({"ratio": 0.5, "importance": "entropy"}),
                           slimkit.Targets(include=("features.0",)), ctx)
    assert slimkit.records(pruned)[-1].data["groups"]["features.0"]["kept"] == [4, 5, 6, 7]


def test_unknown_criterion_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="importance"):
        config_class("prune.channel").from_dict({"importance": "onorm"})
    with pytest.raises(ConfigError, match="importance"):
        config_class("prune.heads").from_dict({"importance": "entropy"})
