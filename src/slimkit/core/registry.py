"""Method registry: a handler (and optional replay function) per config class.

Handlers register themselves with a decorator beside their definition::

    @register_method(MagnitudePrune)
    def magnitude_prune(model, config, targets, ctx) -> Record: ...

    @register_replay(ChannelPrune)
    def replay_channels(model, record) -> None: ...   # rebuild structure, no data needed

There is no import-walking: ``slimkit.catalog`` imports the modules that register, and
the top-level package installs it as the loader (:mod:`.plugins`), so core itself never
imports a method family.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Protocol

from torch import nn

from .config import MethodConfig
from .context import Context
from .errors import ConfigError
from .plugins import load_catalog
from .record import Record
from .targets import Targets


class Handler(Protocol):
    def __call__(self, model: nn.Module, config: Any, targets: Targets, ctx: Context) -> Record: ...


Replay = Callable[[nn.Module, Record], None]


@dataclasses.dataclass
class Entry:
    config_cls: type[MethodConfig]
    handler: Handler
    replay: Replay | None = None
    doc: str = ""


# Kinds renamed when kind names were made consistent (one ``_`` between words); records
# and recipes written before still resolve.
KIND_ALIASES: dict[str, str] = {"prune.grow-prune": "prune.regrow", "quantize.fold-bn": "quantize.fold_bn",
                                 "share.factorized-embedding": "share.factorized_embedding",
                                 "attention.token-prune": "attention.token_prune",
                                 "dynamic.early-exit": "dynamic.early_exit"}

_BY_CLASS: dict[type, Entry] = {}
_BY_KIND: dict[str, type[MethodConfig]] = {}


def register_method(config_cls: type[MethodConfig]) -> Callable[[Handler], Handler]:
    """Register ``fn`` as the handler for ``config_cls`` (keyed by class and by its ``kind``)."""

    def deco(fn: Handler) -> Handler:
        kind = config_cls.kind
        if not kind:
            raise TypeError(f"{config_cls.__name__} has no kind")
        if kind in _BY_KIND and _BY_KIND[kind] is not config_cls:
            raise TypeError(f"kind {kind!r} registered twice ({_BY_KIND[kind].__name__}, {config_cls.__name__})")
        prev = _BY_CLASS.get(config_cls)
        _BY_CLASS[config_cls] = Entry(config_cls, fn, prev.replay if prev else None,
                                      (config_cls.__doc__ or "").strip().split("\n")[0])
        _BY_KIND[kind] = config_cls
        return fn

    return deco


def register_replay(config_cls: type[MethodConfig]) -> Callable[[Replay], Replay]:
    """Register how to recreate ``config_cls``'s structural change from its record alone."""

    def deco(fn: Replay) -> Replay:
        entry = _BY_CLASS.get(config_cls)
        if entry is None:
            raise TypeError(f"register the handler for {config_cls.__name__} before its replay")
        entry.replay = fn
        return fn

    return deco


def _ensure_loaded() -> None:
    load_catalog()


def entry_for(config: MethodConfig) -> Entry:
    _ensure_loaded()
    entry = _BY_CLASS.get(type(config))
    if entry is None:
        raise ConfigError(f"no handler registered for {type(config).__name__}")
    return entry


def config_class(kind: str) -> type[MethodConfig]:
    """The config class registered under ``kind``; a clear error lists the known kinds."""
    _ensure_loaded()
    cls = _BY_KIND.get(KIND_ALIASES.get(kind, kind))
    if cls is None:
        raise ConfigError(f"unknown kind {kind!r}; known kinds: {', '.join(sorted(_BY_KIND))}", key="kind")
    return cls


def entry_for_kind(kind: str) -> Entry:
    return _BY_CLASS[config_class(kind)]


def kinds() -> list[str]:
    _ensure_loaded()
    return sorted(_BY_KIND)
