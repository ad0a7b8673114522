"""``--budget`` strings: the accepted forms and a clear error naming each bad one."""
from __future__ import annotations

import pytest

from slimkit.core import ConfigError
from slimkit.plan.budget import Budgets, parse_budget, parse_budgets


def test_the_three_forms() -> None:
    b = parse_budgets(["speedup>=2.0", "max_drop<=1.0", "size<=12MB"])
    assert b == Budgets(speedup=2.0, max_drop=1.0, size_bytes=12_000_000)
    assert parse_budget("size<=1.5MiB") == ("size", 1.5 * 2**20)
    assert parse_budget(" speedup >= 3 ") == ("speedup", 3.0)
    assert parse_budget("max_drop<=0") == ("max_drop", 0.0)
    assert parse_budgets([]).empty()


@pytest.mark.parametrize("text", ["speed>=2", "speedup<=2", "max_drop>=1", "size<=12XB", "speedup>=0.5",
                                  "speedup>=2x", "size<=0MB", "", "max_drop<=-1", "size<=abcMB"])
def test_bad_strings_are_config_errors_naming_them(text: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_budget(text)
    assert repr(text) in str(err.value)
    assert "\n" not in str(err.value)


def test_a_budget_twice_is_an_error() -> None:
    with pytest.raises(ConfigError, match="given twice"):
        parse_budgets(["speedup>=2", "speedup>=3"])
