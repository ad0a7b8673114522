"""The ``efficientnet-fast`` preset: it loads, obeys the order rules, round-trips, and runs end to end
(channel pruning -> least-squares refit of the classifier -> static int8 ONNX export) on a tiny EfficientNet-shaped stand-in."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

import slimkit
from slimkit.core import Context, Recipe, presets
from slimkit.core.recipe import check_order
from slimkit.core.registry import config_class

PRESET = "efficientnet-fast"


class _Block(nn.Module):
    """Inverted residual with EfficientNet-lite's module names (expand -> depthwise -> project, ReLU6)."""

    def __init__(self, c: int, hidden: int) -> None:
        super().__init__()
        self._expand_conv = nn.Conv2d(c, hidden, 1, bias=False)
        self._bn0 = nn.BatchNorm2d(hidden)
        self._depthwise_conv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False)
        self._bn1 = nn.BatchNorm2d(hidden)
        self._project_conv = nn.Conv2d(hidden, c, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = nn.functional.relu6(self._bn0(self._expand_conv(x)))
        h = nn.functional.relu6(self._bn1(self._depthwise_conv(h)))
        return x + self._bn2(self._project_conv(h))


class TinyLite(nn.Module):
    """16 blocks, a 1x1 head conv and a classifier, named like ``efficientnet_lite_pytorch``'s model."""

    def __init__(self, c: int = 8, hidden: int = 24, head: int = 40, classes: int = 10) -> None:
        super().__init__()
        self._conv_stem = nn.Conv2d(3, c, 3, stride=2, padding=1, bias=False)
        self._bn0 = nn.BatchNorm2d(c)
        self._blocks = nn.ModuleList(_Block(c, hidden) for _ in range(16))
        self._conv_head = nn.Conv2d(c, head, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(head)
        self._fc = nn.Linear(head, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.relu6(self._bn0(self._conv_stem(x)))
        for b in self._blocks:
            x = b(x)
        x = nn.functional.relu6(self._bn1(self._conv_head(x)))
        return self._fc(x.mean(dim=(2, 3)))


def test_preset_is_listed_and_valid() -> None:
    assert PRESET in presets()
    recipe = Recipe.load(PRESET)
    assert recipe.name == PRESET
    kinds = [s.config.kind for s in recipe.steps]
    # every kind is registered and resolves to the config class the step was built with
    for step in recipe.steps:
        assert type(step.config) is config_class(step.config.kind)
    check_order(recipe.steps)  # raises OrderError on a bad order
    # structure: channel pruning first, export last, static int8 with per-channel weights
    assert kinds[0] == "prune.channel"
    assert kinds[-1] == "export.onnx"
    export = recipe.steps[-1].config
    assert export.int8 == "static" and export.per_channel is True and export.file.endswith(".onnx")
    prune = recipe.steps[0].config
    assert 0 < prune.ratio <= 0.3, "a small ratio: larger ones without fine-tuning wreck the accuracy"
    refit = recipe.steps[1]
    assert refit.config.kind == "train.reconstruct" and refit.targets.include == ("_fc",)
    # the description explains every step
    for kind in kinds:
        assert kind in recipe.description, f"description does not mention {kind}"


def test_preset_round_trips() -> None:
    recipe = Recipe.load(PRESET)
    doc = recipe.to_dict()
    again = Recipe.from_dict(yaml.safe_load(yaml.safe_dump(doc)))
    assert again.to_dict() == doc
    assert [s.config for s in again.steps] == [s.config for s in recipe.steps]
    assert [s.targets for s in again.steps] == [s.targets for s in recipe.steps]


def test_preset_targets_exist_in_efficientnet_lite0_names() -> None:
    """The pruning step's targets select modules under the real model's naming scheme."""
    recipe = Recipe.load(PRESET)
    model = TinyLite()
    selected = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and recipe.steps[0].targets.matches(n, m)]
    assert selected, "the pruning targets match no conv of an EfficientNet-lite-named model"


def test_preset_runs_on_tiny_stand_in(tmp_path: Path, one_thread: None) -> None:
    pytest.importorskip("onnxruntime")
    from slimkit.export.onnx import OrtModel

    torch.manual_seed(0)
    model = TinyLite().eval()
    x = torch.randn(2, 3, 32, 32)
    calib = [torch.randn(4, 3, 32, 32) for _ in range(4)]
    labels = [torch.randint(0, 10, (4,)) for _ in range(4)]
    ctx = Context(example_inputs=x[:1], calib_data=calib, train_data=list(zip(calib, labels)),
                  loss_fn=lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]), teacher=model)
    ctx.extras["export_dir"] = tmp_path
    recipe = Recipe.load(PRESET)
    before = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    out = recipe.run(model, ctx)

    prune = recipe.steps[0]
    for name, mod in out.named_modules():
        if isinstance(mod, nn.Conv2d) and prune.targets.matches(name, mod) and mod.groups == 1:
            assert mod.out_channels < before[name], f"{name} was not pruned"
    assert sum(p.numel() for p in out.parameters()) < sum(p.numel() for p in model.parameters())
    assert model._conv_head.out_channels == 40  # the caller's model is untouched
    rec = next(r for r in slimkit.records(out) if r.kind == "train.reconstruct")
    assert rec.data["layers"]["_fc"]["mse_after"] < rec.data["layers"]["_fc"]["mse_before"]

    onnx_path = tmp_path / recipe.steps[-1].config.file
    assert onnx_path.is_file()
    import onnx

    ops = {n.op_type for n in onnx.load(str(onnx_path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # static QDQ int8
    ort = OrtModel(onnx_path, threads=1)
    with torch.no_grad():
        got, ref = ort(x), out(x)
    assert got.shape == ref.shape == (2, 10)
    cos = nn.functional.cosine_similarity(got, ref).mean()
    assert cos > 0.9, f"int8 ONNX drifts from the pruned float model (cosine {cos:.3f})"
