"""One matching rule: every place that reads module-name patterns agrees with ``Targets``.

Glob and ``re:`` patterns go through ``core.targets.first_match`` everywhere, so a pattern
list selects the same names as ``targets.include``, a pruning ``per_group_ratio``, k-means
``layer_bits``, magnitude-pruning weight ``classes`` and ONNX node ``exclude`` lists.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from slimkit.core import ConfigError, Targets
from slimkit.export.ort_quant import match_nodes
from slimkit.prune.allocation import allocate
from slimkit.prune.magnitude import MagnitudePrune
from slimkit.prune.sparsity import weight_class
from slimkit.quantize.kmeans_method import KMeansQuant
from slimkit.quantize.mixed import MixedQuant

NAMES = [
    "encoder.layer.0.attention.self.query",
    "encoder.layer.1.attention.self.query",
    "encoder.layer.0.intermediate.dense",
    "encoder.layer.10.output.dense",
    "encoder.layer.1.output.dense",
    "pooler.dense",
    "classifier",
    "classifier2",
]
# A glob, a glob with a character class, a full-match regex, and a regex that only a
# *search* would find in these names (a matcher using re.search instead of fullmatch
# would wrongly select "encoder.layer.0.*").
PATTERNS = ["encoder.layer.*.intermediate.dense", "encoder.layer.1[0-9].*", r"re:.*\.query", r"re:layer\.0",
            "classifier"]
EXPECTED = [
    "encoder.layer.0.attention.self.query",
    "encoder.layer.1.attention.self.query",
    "encoder.layer.0.intermediate.dense",
    "encoder.layer.10.output.dense",
    "classifier",
]


def test_targets_select_the_expected_names() -> None:
    t = Targets(include=tuple(PATTERNS))
    assert [n for n in NAMES if t.matches(n, nn.Identity())] == EXPECTED


def test_every_entry_point_selects_what_targets_selects() -> None:
    by_allocation = allocate({n: torch.arange(10.0) for n in NAMES}, 0.0,
                             per_group_ratio={p: 0.5 for p in PATTERNS})
    kmeans = KMeansQuant(bits=8, layer_bits={p: 2 for p in PATTERNS})
    selected = {
        "allocation.per_group_ratio": [n for n in NAMES if by_allocation[n].numel() == 5],
        "kmeans.layer_bits": [n for n in NAMES if kmeans.bits_for(n) == 2],
        "sparsity.weight_class": [n for n in NAMES if weight_class(n, "Linear", {"picked": tuple(PATTERNS)}) == "picked"],
        "ort_quant.match_nodes": match_nodes(NAMES, PATTERNS),
    }
    for where, names in selected.items():
        assert names == EXPECTED, where


@pytest.mark.parametrize("build", [
    lambda p: Targets(include=(p,)),
    lambda p: KMeansQuant(layer_bits={p: 2}),
    lambda p: MagnitudePrune(scope="class-uniform", classes={"x": (p,)}),
    lambda p: MixedQuant(budget_ratio=0.5, keep_float=(p,)),
    lambda p: allocate({"a": torch.ones(4)}, 0.5, per_group_ratio={p: 0.5}),
    lambda p: match_nodes(["a"], [p]),
])
def test_a_broken_regex_is_a_config_error_everywhere(build) -> None:
    with pytest.raises(ConfigError, match="invalid regular expression"):
        build("re:layer.(")
