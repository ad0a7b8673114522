from __future__ import annotations

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import slimkit
from slimkit.core import ConfigError, MethodConfig, OrderError, Recipe, SlimkitError, method_config
from slimkit.core.recipe import Step, check_order
from slimkit.core.targets import Targets


def test_recipe_runs_steps_in_order_and_records() -> None:
    recipe = Recipe.from_yaml(
        """
name: two-steps
steps:
  - kind: prune.magnitude
    targets: {types: [Linear]}
    with: {sparsity: 0.5}
  - kind: prune.magnitude
    targets: {include: ["2"]}
    with: {sparsity: 0.9, scope: global}
"""
    )
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    out = recipe.run(model)
    assert [r.kind for r in slimkit.records(out)] == ["prune.magnitude"] * 2
    assert (out[0].weight == 0).float().mean().item() == pytest.approx(0.5)
    assert (out[2].weight == 0).float().mean().item() == pytest.approx(0.9, abs=0.01)
    assert (model[0].weight == 0).sum() == 0  # the caller's model is untouched
    assert recipe.to_dict()["steps"][1]["with"]["scope"] == "global"


@pytest.mark.parametrize(
    "doc, fragment",
    [
        ("steps: [{kind: prune.nope}]", "step 1 (prune.nope): key 'kind': unknown kind 'prune.nope'"),
        ("steps: [{kind: prune.magnitude, with: {sparsity: 2}}]", "step 1 (prune.magnitude): key 'sparsity'"),
        ("steps: [{kind: prune.magnitude, with: {sparsity: 'x'}}]", "expected a number"),
        ("steps: [{kind: prune.magnitude, wiht: {}}]", "key 'wiht'"),
        ("steps: [{kind: prune.magnitude, targets: {typ: [Linear]}}]", "targets.typ"),
        ("steps: []", "non-empty list of steps"),
        ("stepz: []", "key 'stepz'"),
        ("steps: [1]", "step 1"),
        ("{", "invalid YAML"),
    ],
)
def test_bad_recipes_fail_naming_step_and_key(doc: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        Recipe.from_yaml(doc)
    assert fragment in str(info.value)


@method_config
class _FakeQuant(MethodConfig):
    kind = "test.fakequant"
    stage = "quantize"


@method_config
class _FakeExport(MethodConfig):
    kind = "test.fakeexport"
    stage = "export"


def _step(cfg: MethodConfig, label: str) -> Step:
    return Step(config=cfg, targets=Targets(), label=label)


def test_order_rules() -> None:
    prune = slimkit.prune.MagnitudePrune(sparsity=0.5)
    check_order((_step(prune, "a"), _step(_FakeQuant(), "b"), _step(_FakeExport(), "c")))
    with pytest.raises(OrderError, match="must come before quantization"):
        check_order((_step(_FakeQuant(), "q"), _step(prune, "p")))
    with pytest.raises(OrderError, match="export must be last"):
        check_order((_step(_FakeExport(), "e"), _step(_FakeQuant(), "q")))


def test_presets_load() -> None:
    from slimkit.core import presets

    assert "digits-default" in presets()
    assert Recipe.load("digits-default").steps
    with pytest.raises(ConfigError, match="neither a file nor a preset"):
        Recipe.load("no-such-recipe")


_scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True), st.text(max_size=8))
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)
_kinds = st.sampled_from(["prune.magnitude", "prune.nope", "", "quant"]) | st.text(max_size=10)
_with = st.dictionaries(st.sampled_from(["sparsity", "scope", "include_bias", "x"]), _values, max_size=3) | _values
_step_doc = st.fixed_dictionaries(
    {"kind": _kinds}, optional={"with": _with, "targets": _values | st.fixed_dictionaries({}, optional={"include": _values, "types": _values}), "name": _values}
) | _values
_doc = st.fixed_dictionaries({"steps": st.lists(_step_doc, max_size=3)}, optional={"name": _values}) | _values


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_doc)
def test_random_documents_load_or_raise_library_error(doc: object) -> None:
    """Property: the loader never raises anything but the library's own error type."""
    try:
        recipe = Recipe.from_dict(doc)
    except SlimkitError:
        return
    assert all(isinstance(s.config, MethodConfig) for s in recipe.steps)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=60))
def test_random_yaml_text_loads_or_raises_library_error(text: str) -> None:
    try:
        Recipe.from_yaml(text)
    except SlimkitError:
        pass
    else:
        assert isinstance(yaml.safe_load(text), (dict, list))


def test_recipe_round_trips_through_yaml() -> None:
    r = Recipe.load("digits-default")
    again = Recipe.from_yaml(yaml.safe_dump(r.to_dict()))
    assert [s.config for s in again.steps] == [s.config for s in r.steps]
    assert torch.__version__  # torch imported for the side effect of registry use


def test_latency_gate_must_time_on_the_runtime_the_recipe_exports_to():
    steps = [{"kind": "lowrank.svd", "with": {"ratio": 0.5, "gate": "latency"}}, {"kind": "export.onnx"}]
    with pytest.raises(ConfigError, match=r"step 1 \(lowrank.svd\).*exports to 'onnx'; set gate_runtime: onnx"):
        Recipe.from_dict({"steps": steps})
    steps[0]["with"]["gate_runtime"] = "onnx"
    assert len(Recipe.from_dict({"steps": steps}).steps) == 2
    # no export step: any runtime; a params gate is not timed at all
    assert Recipe.from_dict({"steps": [{"kind": "lowrank.svd", "with": {"ratio": 0.5, "gate": "latency"}}]})
    assert Recipe.from_dict({"steps": [{"kind": "lowrank.svd", "with": {"ratio": 0.5, "gate": "params"}},
                                       {"kind": "export.pt2e"}]})
