from __future__ import annotations

import dataclasses
from typing import Literal

import pytest

from slimkit.core import ConfigError, MethodConfig, method_config
from slimkit.prune import MagnitudePrune


@method_config
class _Toy(MethodConfig):
    kind = "test.toy"
    ratio: float = 0.5
    bits: int = 8
    mode: Literal["a", "b"] = "a"
    sizes: tuple[int, ...] = ()
    cap: int | None = None

    def validate(self) -> None:
        self._require(0 < self.ratio < 1, "ratio", "a float in (0, 1)", self.ratio)


def test_configs_are_frozen_and_keyword_only() -> None:
    c = _Toy(ratio=0.3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.ratio = 0.4  # type: ignore[misc]
    with pytest.raises(TypeError):
        _Toy(0.3)  # type: ignore[misc]


def test_from_dict_round_trip_and_coercion() -> None:
    c = _Toy.from_dict({"ratio": 1 / 4, "bits": 4, "mode": "b", "sizes": [1, 2], "cap": None})
    assert c.sizes == (1, 2) and isinstance(c.sizes, tuple)
    assert _Toy.from_dict(c.to_dict()) == c
    assert _Toy.from_dict({"bits": 3}).bits == 3
    assert isinstance(MagnitudePrune.from_dict({"sparsity": 0}).sparsity, float)


@pytest.mark.parametrize(
    "data, key",
    [
        ({"bogus": 1}, "bogus"),
        ({"ratio": "x"}, "ratio"),
        ({"ratio": 1.5}, "ratio"),
        ({"bits": 2.5}, "bits"),
        ({"bits": True}, "bits"),
        ({"mode": "c"}, "mode"),
        ({"sizes": [1, "a"]}, "sizes[1]"),
        ({"cap": "big"}, "cap"),
        ({"ratio": float("nan")}, "ratio"),
    ],
)
def test_from_dict_rejects_bad_values_naming_the_key(data: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        _Toy.from_dict(data)
    assert info.value.key == key
    assert f"'{key}'" in str(info.value)


def test_describe_lists_fields_types_defaults() -> None:
    fields = {f["name"]: f for f in _Toy.describe()}
    assert fields["ratio"]["default"] == 0.5 and fields["ratio"]["type"] == "float"
    assert fields["mode"]["type"] == "'a' | 'b'"
    assert fields["cap"]["type"] == "int | None"
