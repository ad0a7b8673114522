from __future__ import annotations

import pytest
from torch import nn

from slimkit.core import ConfigError, Targets


def _model() -> nn.Module:
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)),
        nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)),
    )


def test_fnmatch_regex_types_and_exclude() -> None:
    m = _model()
    names = lambda t: [n for n, _ in t.select(m)]  # noqa: E731
    assert names(Targets(types=("Linear",))) == ["1.0", "1.2"]
    assert names(Targets(include=("1.*",), types=("Linear",), exclude=("1.2",))) == ["1.0"]
    assert names(Targets(include=("re:0\\.[01]",))) == ["0.0", "0.1"]
    assert names(Targets(types=("_ConvNd",))) == ["0.0"]  # base classes match too
    assert "" in names(Targets())  # the root has the empty name


def test_from_dict_forms_and_errors() -> None:
    assert Targets.from_dict("1.*").include == ("1.*",)
    assert Targets.from_dict(["a", "b"]).include == ("a", "b")
    assert Targets.from_dict({"types": ["Linear"]}).types == ("Linear",)
    assert Targets.from_dict(None) == Targets()
    with pytest.raises(ConfigError, match="targets.layers"):
        Targets.from_dict({"layers": ["x"]})
    with pytest.raises(ConfigError, match="regular expression"):
        Targets(include=("re:(",))
    with pytest.raises(ConfigError):
        Targets.from_dict({"include": [1, 2]})
    t = Targets(include=("a*",), types=("Linear",))
    assert Targets.from_dict(t.to_dict()) == t
