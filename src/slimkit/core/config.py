"""Method configs: frozen, keyword-only dataclasses holding only data.

A config says *what* to do (``ratio=0.3``); the runtime handles (data, teacher, device)
live in :class:`~slimkit.core.context.Context`. Keeping configs pure data is what lets a
recipe be plain YAML and a saved manifest replay exactly.
"""
from __future__ import annotations

import dataclasses
import types
from typing import Any, ClassVar, Literal, Union, get_args, get_origin, get_type_hints

from .errors import ConfigError

# Stages order a recipe: structural changes must happen while weights are still float.
STAGES: tuple[str, ...] = ("shrink", "sparsify", "train", "quantize", "export")


def method_config(cls: type) -> type:
    """Class decorator: make ``cls`` a frozen keyword-only dataclass config."""
    return dataclasses.dataclass(frozen=True, kw_only=True)(cls)


class MethodConfig:
    """Base class of every method config.

    Subclasses are declared with :func:`method_config` and set the class variables
    ``kind`` (stable string such as ``"prune.magnitude"``: family, a dot, then the method
    in lower case with ``_`` between words), ``stage`` (one of :data:`STAGES`) and
    ``version``. Class names follow ``<Method><Family>`` (``ChannelPrune``, ``StaticQuant``,
    ``LogitsDistill``, ``OnnxExport``, ``ReconstructTrain``). They validate their values in ``validate`` (called from
    ``__post_init__``) with :meth:`_require`.
    """

    kind: ClassVar[str] = ""
    stage: ClassVar[str] = "sparsify"
    # Bumped when a change to the options (a renamed field, a new default that changes
    # results) would make an older record mean something else. Stored in every Record as
    # ``config_version``; ``restore`` refuses a record newer than the code that replays it.
    version: ClassVar[int] = 1

    def __post_init__(self) -> None:
        # Type-check every field, then run the subclass's range checks.
        hints = _hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            coerced = _coerce(value, hints[f.name], f.name)
            if coerced is not value:
                object.__setattr__(self, f.name, coerced)
        self.validate()

    def validate(self) -> None:
        """Range checks; override in subclasses."""

    @staticmethod
    def _require(ok: bool, key: str, expected: str, got: Any) -> None:
        if not ok:
            raise ConfigError(f"expected {expected}, got {got!r}", key=key)

    # -- (de)serialisation -------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "MethodConfig":
        """Build a config from plain data; an unknown key is an error naming the key."""
        data = {} if data is None else data
        if not isinstance(data, dict):
            raise ConfigError(f"expected a mapping of options, got {type(data).__name__}", key="with")
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        for key in data:
            if key not in names:
                raise ConfigError(
                    f"unknown option for {cls.kind}; expected one of {sorted(names)}", key=str(key)
                )
        try:
            return cls(**data)
        except ConfigError:
            raise
        except TypeError as exc:  # pragma: no cover - dataclass signature errors
            raise ConfigError(str(exc)) from exc

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-able dict of every field."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    @classmethod
    def describe(cls) -> list[dict[str, Any]]:
        """Field name, type and default of every option (for ``slimkit list-methods``)."""
        hints = _hints(cls)
        out = []
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            default: Any = None
            if f.default is not dataclasses.MISSING:
                default = _plain(f.default)
            elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                default = _plain(f.default_factory())  # type: ignore[misc]
            out.append({
                "name": f.name,
                "type": _type_name(hints[f.name]),
                "default": default,
                "required": f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,  # type: ignore[misc]
                "help": f.metadata.get("help", ""),
            })
        return out


def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin is tuple:
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list[{_type_name(args[0])}]"
        return "tuple[" + ", ".join(_type_name(a) for a in args) + "]"
    if origin is dict:
        k, v = get_args(tp)
        return f"dict[{_type_name(k)}, {_type_name(v)}]"
    if tp is type(None):
        return "None"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert lists to tuples and ints to floats.

    Raises :class:`ConfigError` naming ``key`` on any mismatch. Returns the same object
    when nothing needed converting.
    """
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed or isinstance(value, bool) != any(isinstance(a, bool) for a in allowed):
            raise ConfigError(f"expected one of {list(allowed)}, got {value!r}", key=key)
        return value
    if origin in (Union, types.UnionType):
        errors = []
        for arm in get_args(tp):
            try:
                return _coerce(value, arm, key)
            except ConfigError as exc:
                errors.append(exc.bare)
        raise ConfigError(f"expected {_type_name(tp)}, got {value!r}", key=key)
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"expected None, got {value!r}", key=key)
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"expected a bool, got {value!r}", key=key)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"expected an int, got {value!r}", key=key)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"expected a number, got {value!r}", key=key)
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(f"expected a finite number, got {value!r}", key=key)
        return float(value) if isinstance(value, int) else value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"expected a string, got {value!r}", key=key)
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"expected a list, got {value!r}", key=key)
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            items = tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        else:
            if len(value) != len(args):
                raise ConfigError(f"expected {len(args)} items, got {len(value)}", key=key)
            items = tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        return items if (not isinstance(value, tuple) or any(a is not b for a, b in zip(items, value))) else value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"expected a mapping, got {value!r}", key=key)
        kt, vt = get_args(tp)
        return {_coerce(k, kt, key): _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if isinstance(tp, type):
        if not isinstance(value, tp):
            raise ConfigError(f"expected {tp.__name__}, got {value!r}", key=key)
        return value
    raise ConfigError(f"unsupported annotation {tp!r}", key=key)  # pragma: no cover


__all__ = ["MethodConfig", "method_config", "STAGES"]
