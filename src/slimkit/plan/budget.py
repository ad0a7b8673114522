"""``--budget`` strings -> :class:`Budgets`: ``speedup>=2.0``, ``max_drop<=1.0``, ``size<=12MB``.

A budget is a user's constraint on the plan: the predicted (and then measured) speed-up on
the chosen runtime, the metric drop in points on the task's dev split (x100 for metrics in
[0, 1], e.g. 1.0 = one accuracy point), and the size on disk. Each may be given once; a
string that is not one of these forms is a :class:`ConfigError` naming it.
"""
from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable
from typing import Any

from ..core.errors import ConfigError

_FORMS = "speedup>=X, max_drop<=X or size<=N[B|KB|MB|GB|KiB|MiB|GiB]"
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}
_PATTERN = re.compile(r"^\s*(speedup|max_drop|size)\s*(>=|<=)\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*$")
_OPERATOR = {"speedup": ">=", "max_drop": "<=", "size": "<="}


@dataclasses.dataclass(frozen=True)
class Budgets:
    """The constraints a plan must meet; ``None`` = unconstrained."""

    speedup: float | None = None  # predicted / measured latency ratio dense / planned >= this
    max_drop: float | None = None  # metric points on the dev split (x100 for [0, 1] metrics)
    size_bytes: int | None = None  # bytes on disk (slimkit.save's model.safetensors)

    def empty(self) -> bool:
        return self.speedup is None and self.max_drop is None and self.size_bytes is None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def parse_budget(text: str) -> tuple[str, float]:
    """One budget string -> ``(name, value)``; sizes come back in bytes."""
    if not isinstance(text, str):
        raise ConfigError(f"expected a budget string ({_FORMS}), got {text!r}", key="budget")
    m = _PATTERN.match(text)
    if m is None:
        raise ConfigError(f"cannot read budget {text!r}; expected {_FORMS}", key="budget")
    name, op, number, unit = m.group(1), m.group(2), float(m.group(3)), m.group(4).lower()
    if op != _OPERATOR[name]:
        raise ConfigError(f"budget {text!r}: {name} takes {_OPERATOR[name]}, not {op}", key="budget")
    if name != "size" and unit:
        raise ConfigError(f"budget {text!r}: {name} takes a plain number, not the unit {m.group(4)!r}", key="budget")
    if name == "size":
        if unit not in _UNITS:
            raise ConfigError(f"budget {text!r}: unknown size unit {m.group(4)!r}; expected B, KB, MB, GB, KiB, "
                              "MiB or GiB", key="budget")
        number *= _UNITS[unit]
    too_small = number < 0 if name == "max_drop" else number <= 0
    if not math.isfinite(number) or too_small:
        raise ConfigError(f"budget {text!r}: the value must be {'>= 0' if name == 'max_drop' else '> 0'}",
                          key="budget")
    if name == "speedup" and number < 1.0:
        raise ConfigError(f"budget {text!r}: a speed-up below 1.0 asks for a slower model", key="budget")
    return name, number


def parse_budgets(texts: Iterable[str]) -> Budgets:
    """Every ``--budget`` string together; the same budget twice is an error."""
    seen: dict[str, float] = {}
    for text in texts:
        name, value = parse_budget(text)
        if name in seen:
            raise ConfigError(f"budget {name} given twice ({text!r})", key="budget")
        seen[name] = value
    size = seen.get("size")
    return Budgets(speedup=seen.get("speedup"), max_drop=seen.get("max_drop"),
                   size_bytes=int(size) if size is not None else None)


__all__ = ["Budgets", "parse_budget", "parse_budgets"]
