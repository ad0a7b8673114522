"""Kind names, config class names and config versions (KIND_ALIASES: old kinds still resolve)."""
from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import slimkit
from slimkit.core import ArtifactError, Targets, config_class, kinds
from slimkit.core.registry import KIND_ALIASES
from slimkit.prune import MagnitudePrune

FAMILY_SUFFIX = {"prune": "Prune", "quantize": "Quant", "distill": "Distill", "export": "Export", "train": "Train",
                 "lowrank": "Lowrank", "share": "Share", "attention": "Attention", "dynamic": "Dynamic",
                 "block": "Block"}


def test_kind_names_use_one_separator_and_classes_one_pattern() -> None:
    for kind in kinds():
        family, _, method = kind.partition(".")
        assert re.fullmatch(r"[a-z][a-z0-9_]*", method), f"{kind}: method part must be lower case with _"
        cls = config_class(kind)
        assert cls.__name__.endswith(FAMILY_SUFFIX[family]), f"{kind}: {cls.__name__} should end with {FAMILY_SUFFIX[family]}"


def test_old_kind_names_still_resolve() -> None:
    for old, new in KIND_ALIASES.items():
        assert config_class(old) is config_class(new)
    assert "prune.grow-prune" not in kinds() and "prune.fold-bn" not in kinds()


def _saved(tmp_path):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    small = slimkit.apply(model, MagnitudePrune(sparsity=0.5), Targets(types=("Linear",)))
    slimkit.save(small, tmp_path)
    return model


def test_records_carry_the_config_version(tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = _saved(tmp_path)
    rec = slimkit.records(slimkit.restore(tmp_path, model=model))[0]
    assert rec.config_version == MagnitudePrune.version == 1


def test_a_record_newer_than_the_code_is_refused(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    model = _saved(tmp_path)
    monkeypatch.setattr(MagnitudePrune, "version", 0)  # the code is "older" than the record
    with pytest.raises(ArtifactError, match="config version 1"):
        slimkit.restore(tmp_path, model=model)
