"""Imports every module that registers a method, so the registry is complete.

Add a line here when a new method module is written; there is no import-walking magic.
"""
from .prune import magnitude  # noqa: F401
from .prune import layers  # noqa: F401
from .prune import unstructured  # noqa: F401
from .prune import merge  # noqa: F401
from .prune import structured  # noqa: F401
from .prune import gradual  # noqa: F401
