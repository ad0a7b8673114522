"""Spec parsing and dispatch, py: factories, and save/restore through zoo specs."""
from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import slimkit
from slimkit import zoo
from slimkit.core.errors import ModelSpecError
from slimkit.prune import MagnitudePrune


def test_specs_lists_the_zoo() -> None:
    assert zoo.specs() == ["zoo:digits-cnn", "zoo:minilm-l6", "zoo:efficientnet-lite0", "zoo:sst2-bilstm"]


@pytest.mark.parametrize("spec", ["digits-cnn", "zoo:resnet50", "tf:foo", "zoo:", "", "py:nomodule"])
def test_unknown_specs_name_the_known_models(spec: str) -> None:
    with pytest.raises(ModelSpecError) as err:
        zoo.load(spec)
    msg = str(err.value)
    assert "\n" not in msg and "zoo:digits-cnn, zoo:minilm-l6, zoo:efficientnet-lite0" in msg


def test_hf_spec_needs_a_model_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelSpecError, match="no config.json"):
        zoo.load(f"hf:{tmp_path}")


@pytest.fixture()
def factory_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "zoo_factory_mod.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn

        FAMILY = "image"

        def make():
            torch.manual_seed(1)
            return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))

        def bare():
            return nn.Linear(2, 2)

        def not_a_module():
            return 42

        def example_inputs(batch_size):
            return torch.ones(batch_size, 4)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "zoo_factory_mod"
    sys.modules.pop("zoo_factory_mod", None)


def test_py_spec_with_example_inputs(factory_module: str) -> None:
    zm = zoo.load(f"py:{factory_module}:make")
    assert zm.family == "image" and not zm.model.training
    assert zm.example_inputs(3).shape == (3, 4)
    assert zm.model(zm.example_inputs(3)).shape == (3, 2)
    assert slimkit.core.manifest_of(zm.model).model_spec == f"py:{factory_module}:make"


def test_py_spec_errors(factory_module: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ModelSpecError, match="not an nn.Module"):
        zoo.load(f"py:{factory_module}:not_a_module")
    with pytest.raises(ModelSpecError, match="no callable 'missing'"):
        zoo.load(f"py:{factory_module}:missing")
    with pytest.raises(ModelSpecError, match="cannot import"):
        zoo.load("py:no_such_module_xyz:make")
    mod = sys.modules[factory_module]
    monkeypatch.delattr(mod, "example_inputs")
    monkeypatch.delattr(mod, "FAMILY")
    zm = zoo.load(f"py:{factory_module}:bare")
    assert zm.family == "custom"
    with pytest.raises(ModelSpecError, match="example_inputs"):
        zm.example_inputs(1)


def test_digits_spec_save_restore_round_trip(tmp_path: Path) -> None:
    zm = zoo.load("zoo:digits-cnn")
    assert zm.family == "image" and zm.default_task == "digits" and zm.tokenizer is None
    x = zm.example_inputs(4)
    assert x.shape == (4, 1, 8, 8)
    assert torch.equal(x, zm.example_inputs(4))  # deterministic
    pruned = slimkit.apply(zm.model, MagnitudePrune(sparsity=0.5), slimkit.Targets(types=("Conv2d", "Linear")))
    slimkit.save(pruned, tmp_path / "m")  # the spec travels with the model
    back = slimkit.restore(tmp_path / "m")
    assert slimkit.core.manifest_of(back).model_spec == "zoo:digits-cnn"
    with torch.no_grad():
        assert torch.allclose(back(x), pruned(x), atol=1e-6)
    assert isinstance(zoo.build("zoo:digits-cnn"), nn.Module)
