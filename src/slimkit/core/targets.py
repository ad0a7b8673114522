"""Select modules by name pattern and type, never by module object.

Patterns are fnmatch globs over the dotted module names of ``model.named_modules()``
(``"encoder.layer.*.intermediate.dense"``) or regular expressions prefixed with ``re:``
(``"re:.*layer\\.[0-5]\\.attention"``, matched with ``re.fullmatch``). Types are class
names (``"Linear"``) matched against the module's class and its bases, so a selector is
plain data that survives a YAML round trip.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import re
from collections.abc import Iterable, Iterator
from typing import Any

from torch import nn

from .errors import ConfigError


def name_matches(pattern: str, name: str) -> bool:
    """Whether ``name`` matches one pattern: an fnmatch glob, or ``re:`` + a regular
    expression that must match the whole name (``re.fullmatch``).

    The one matching rule of slimkit: :class:`Targets`, per-layer overrides (``layer_bits``,
    ``per_group_ratio``), weight classes and ONNX node exclusions all read patterns this way.
    """
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return fnmatch.fnmatchcase(name, pattern)


def first_match(patterns: Iterable[str], name: str) -> str | None:
    """The first of ``patterns`` that ``name`` matches (see :func:`name_matches`), or ``None``.

    Used for "first match wins" maps such as ``layer_bits`` (pass the dict's keys).
    """
    return next((p for p in patterns if name_matches(p, name)), None)


def check_patterns(patterns: Iterable[str], key: str) -> None:
    """Raise :class:`ConfigError` naming ``key`` when a ``re:`` pattern does not compile
    (or a pattern is not a string), so a typo fails at config time, not mid-run."""
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise ConfigError(f"expected a name pattern (string), got {pattern!r}", key=key)
        if pattern.startswith("re:"):
            try:
                re.compile(pattern[3:])
            except re.error as exc:
                raise ConfigError(f"invalid regular expression {pattern!r}: {exc}", key=key) from exc


def _type_names(module: nn.Module) -> set[str]:
    return {cls.__name__ for cls in type(module).__mro__}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Targets:
    """Which modules a method acts on.

    A module is selected when its name matches any ``include`` pattern, matches no
    ``exclude`` pattern, and (if ``types`` is non-empty) its class or a base class is
    named in ``types``. The root module has the name ``""``.
    """

    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    types: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for key in ("include", "exclude", "types"):
            value = getattr(self, key)
            if isinstance(value, str):
                value = (value,)
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"expected a list of strings, got {value!r}", key=f"targets.{key}")
            object.__setattr__(self, key, tuple(value))
        check_patterns((*self.include, *self.exclude), "targets")

    def matches(self, name: str, module: nn.Module) -> bool:
        if first_match(self.include, name) is None:
            return False
        if first_match(self.exclude, name) is not None:
            return False
        return not self.types or bool(_type_names(module) & set(self.types))

    def select(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        """``(name, module)`` pairs selected in ``model``, in ``named_modules`` order."""
        return list(self.iter(model))

    def iter(self, model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
        for name, module in model.named_modules():
            if self.matches(name, module):
                yield name, module

    @classmethod
    def from_dict(cls, data: dict[str, Any] | str | list[str] | None) -> "Targets":
        """Accepts a mapping ``{include, exclude, types}``, a single pattern, a list of patterns, or None."""
        if data is None:
            return cls()
        if isinstance(data, str):
            return cls(include=(data,))
        if isinstance(data, list):
            return cls(include=tuple(data))
        if not isinstance(data, dict):
            raise ConfigError(f"expected a mapping, a pattern or a list of patterns, got {data!r}", key="targets")
        unknown = set(data) - {"include", "exclude", "types"}
        if unknown:
            raise ConfigError(
                "unknown targets option; expected include, exclude or types", key=f"targets.{sorted(map(str, unknown))[0]}"
            )
        return cls(**data)

    def to_dict(self) -> dict[str, list[str]]:
        return {"include": list(self.include), "exclude": list(self.exclude), "types": list(self.types)}
