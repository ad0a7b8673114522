"""The library's own error types.

Everything a user can get wrong (a recipe, a model spec, a data folder, a saved artifact)
raises a subclass of :class:`SlimkitError`, so callers and the CLI can tell user mistakes
(exit status 2, one-line message) from bugs (a traceback).
"""
from __future__ import annotations


class SlimkitError(Exception):
    """Base class of every error slimkit raises on bad input."""


class ConfigError(SlimkitError, ValueError):
    """A method config, target selector or recipe step is invalid.

    ``step`` and ``key`` locate the problem so messages read like
    ``step 2 (prune.magnitude): key 'sparsity': expected a float in [0, 1), got 1.5``.
    """

    def __init__(self, message: str, *, key: str | None = None, step: str | None = None) -> None:
        self.key = key
        self.step = step
        self.bare = message
        super().__init__(self._format())

    def _format(self) -> str:
        where = []
        if self.step is not None:
            where.append(self.step)
        if self.key is not None:
            where.append(f"key '{self.key}'")
        return (": ".join(where) + ": " + self.bare) if where else self.bare

    def in_step(self, step: str) -> "ConfigError":
        """Return a copy of this error that also names the recipe step."""
        return ConfigError(self.bare, key=self.key, step=step)


class OrderError(ConfigError):
    """Recipe steps are in an order that cannot work (e.g. structured pruning after int8)."""


class ModelSpecError(SlimkitError):
    """A model spec string names no known model or cannot be loaded."""


class DataError(SlimkitError):
    """A data set or task is unknown, or its files cannot be found or read."""


class ArtifactError(SlimkitError):
    """A saved model folder (manifest.json, model.safetensors) is missing, corrupt or inconsistent."""


class MethodError(SlimkitError):
    """A method cannot run on this model/targets/context (e.g. it needs calibration data)."""
