"""core.modules: the one module swap and parent lookup every method uses."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from slimkit.core import MethodError
from slimkit.core.modules import owner_of, swap_module


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.ReLU(), nn.Linear(4, 2)))


def test_swap_module_replaces_a_nested_module_and_returns_the_old_one() -> None:
    model = _model()
    old_leaf = model[1][1]
    new = nn.Linear(4, 2)
    assert swap_module(model, "1.1", new) is old_leaf
    assert model[1][1] is new and dict(model.named_modules())["1.1"] is new
    top = swap_module(model, "0", nn.Identity())
    assert isinstance(top, nn.Linear) and isinstance(model[0], nn.Identity)


def test_swap_module_refuses_the_root() -> None:
    with pytest.raises(MethodError, match="root"):
        swap_module(_model(), "", nn.Identity())


def test_owner_of_finds_parameters_and_top_level_names() -> None:
    model = _model()
    owner, attr = owner_of(model, "1.1.weight")
    assert owner is model[1][1] and attr == "weight"
    owner, attr = owner_of(model, "0")
    assert owner is model and attr == "0"


def test_pruning_never_imports_quantization() -> None:
    """quantize.embedding reads prune.vocab's TrimmedEmbedding; the reverse import would be a cycle."""
    code = ("import sys, slimkit.prune, slimkit.prune.vocab, slimkit.prune.structured; "
            "print(sorted(m for m in sys.modules if m.startswith('slimkit.quantize')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
