"""Core machinery: configs, targets, context, registry, records, recipes, save/restore."""
from .api import apply, load_weights, read_manifest, restore, save
from .config import STAGES, MethodConfig, method_config
from .context import Context, call_model
from .errors import (
    ArtifactError,
    ConfigError,
    DataError,
    MethodError,
    ModelSpecError,
    OrderError,
    SlimkitError,
)
from .recipe import Recipe, Step, presets
from .record import Manifest, Record, manifest_of, records, set_model_spec
from .registry import config_class, entry_for_kind, kinds, register_method, register_replay
from .targets import Targets

__all__ = [
    "apply", "save", "restore", "load_weights", "read_manifest",
    "MethodConfig", "method_config", "STAGES", "Context", "call_model", "Targets",
    "Record", "Manifest", "manifest_of", "records", "set_model_spec",
    "Recipe", "Step", "presets",
    "register_method", "register_replay", "config_class", "entry_for_kind", "kinds",
    "SlimkitError", "ConfigError", "OrderError", "ModelSpecError", "DataError", "ArtifactError", "MethodError",
]
