"""slimkit: make trained PyTorch models smaller and faster, and prove it with honest measurements.

.. code-block:: python

    import slimkit
    from slimkit.prune import MagnitudePrune

    small = slimkit.apply(model, MagnitudePrune(sparsity=0.8), slimkit.Targets(types=("Linear",)))
    slimkit.save(small, "out/")            # safetensors + manifest.json
    again = slimkit.restore("out/")        # rebuilds, replays, loads strictly
"""
from ._version import __version__
from .core import (
    ArtifactError,
    ConfigError,
    Context,
    DataError,
    Manifest,
    MethodConfig,
    MethodError,
    ModelSpecError,
    OrderError,
    Recipe,
    Record,
    SlimkitError,
    Targets,
    apply,
    kinds,
    method_config,
    records,
    register_method,
    register_replay,
    restore,
    save,
)
from .core import plugins as _plugins

__all__ = [
    "__version__", "apply", "save", "restore", "records", "kinds", "Targets", "Context", "Recipe",
    "Record", "Manifest", "MethodConfig", "method_config", "register_method", "register_replay",
    "SlimkitError", "ConfigError", "OrderError", "ModelSpecError", "DataError", "ArtifactError", "MethodError",
]



def _load_catalog() -> None:
    from . import catalog  # noqa: F401  (imports every module that registers a method)


def _build_spec(spec: str) -> object:
    from .zoo import build

    return build(spec)


_plugins.set_catalog_loader(_load_catalog)
_plugins.set_spec_builder(_build_spec)  # type: ignore[arg-type]

_SUBPACKAGES = {"zoo", "measure", "prune", "quantize", "distill", "train", "share", "export", "app", "cli", "core"}


def __getattr__(name: str) -> object:
    """Import subpackages on first use (``slimkit.zoo``, ``slimkit.measure``, ...).

    Lazy so that ``import slimkit`` stays fast and does not pull in transformers or ONNX.
    """
    if name in _SUBPACKAGES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'slimkit' has no attribute {name!r}")
