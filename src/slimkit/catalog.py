"""Imports every module that registers a method, so the registry is complete.

Add a line here when a new method module is written; there is no import-walking magic.
The top-level package installs this module as the registry's catalog loader
(:mod:`slimkit.core.plugins`), so core never imports a method family.
"""
from .prune import magnitude  # noqa: F401
from .prune import layers  # noqa: F401
from .prune import unstructured  # noqa: F401
from .prune import merge  # noqa: F401
from .prune import structured  # noqa: F401
from .prune import gradual  # noqa: F401
from .quantize import qat  # noqa: F401
from .quantize import lowbit_methods  # noqa: F401
from .quantize import kmeans_method  # noqa: F401
from .quantize import nonuniform_methods  # noqa: F401
from .quantize import fold_bn  # noqa: F401
from .quantize import weight_only  # noqa: F401
from .quantize import smoothquant  # noqa: F401
from .quantize import mixed  # noqa: F401
from .quantize import ptq  # noqa: F401
from .quantize import embedding  # noqa: F401
from .train import recovery  # noqa: F401
from .train import reconstruct  # noqa: F401
from .prune import vocab  # noqa: F401
from .export import onnx  # noqa: F401
from .export import pt2e  # noqa: F401
from .export import openvino  # noqa: F401
from .distill import methods as _distill_methods  # noqa: F401
from .distill import intermediate as _distill_intermediate  # noqa: F401
from .distill import strategy_kinds as _distill_strategy_kinds  # noqa: F401
