"""Where core finds what lives above it: the method catalog and the model-spec builder.

Core never imports a method family or the zoo (the import graph is one-way:
``slimkit`` -> ``catalog`` -> families -> ``core``). The top-level package installs two
loaders here when it is imported, which every ``import slimkit.<anything>`` does first:

- the *catalog loader* imports every module that registers a method, so that a recipe
  naming a kind finds its config class (``registry.config_class``);
- the *spec builder* turns a manifest's ``model_spec`` (``zoo:digits-cnn``, an HF folder,
  ...) into the dense model ``restore`` replays the records on.
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from .errors import ModelSpecError

_catalog_loader: Callable[[], None] | None = None
_catalog_loaded = False
_spec_builder: Callable[[str], nn.Module] | None = None


def set_catalog_loader(fn: Callable[[], None]) -> None:
    """Install the function that imports every registering module (called once, lazily)."""
    global _catalog_loader, _catalog_loaded
    _catalog_loader, _catalog_loaded = fn, False


def load_catalog() -> None:
    """Import the method catalog if a loader is installed and it has not run yet."""
    global _catalog_loaded
    if _catalog_loaded or _catalog_loader is None:
        return
    _catalog_loaded = True
    _catalog_loader()


def set_spec_builder(fn: Callable[[str], nn.Module]) -> None:
    """Install the function that builds a dense model from a ``model_spec`` string."""
    global _spec_builder
    _spec_builder = fn


def build_spec(spec: str) -> nn.Module:
    """The dense model ``spec`` names, through the installed builder (``slimkit.zoo.build``)."""
    if _spec_builder is None:
        raise ModelSpecError(f"cannot build {spec!r}: no model-spec builder is installed (import slimkit first)")
    return _spec_builder(spec)
