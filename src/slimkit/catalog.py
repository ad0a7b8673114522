"""Imports every module that registers a method, so the registry is complete.

Add a line here when a new method module is written; there is no import-walking magic.
The top-level package installs this module as the registry's catalog loader
(:mod:`slimkit.core.plugins`), so core never imports a method family.
"""
from .attention import linear as _attention_linear  # noqa: F401
from .attention import linformer as _attention_linformer  # noqa: F401
from .attention import token_prune as _attention_token_prune  # noqa: F401
from .attention import window as _attention_window  # noqa: F401
from .distill import intermediate as _distill_intermediate  # noqa: F401
from .distill import methods as _distill_methods  # noqa: F401
from .distill import strategy_kinds as _distill_strategy_kinds  # noqa: F401
from .dynamic import early_exit as _dynamic_early_exit  # noqa: F401
from .export import (
    onnx,  # noqa: F401
    openvino,  # noqa: F401
    pt2e,  # noqa: F401
)
from .lowrank import block_diagonal as _lowrank_block_diagonal  # noqa: F401
from .lowrank import conv_methods as _lowrank_conv_methods  # noqa: F401
from .lowrank import svd_method as _lowrank_svd  # noqa: F401
from .lowrank import tt as _lowrank_tt  # noqa: F401
from .nas import group_shuffle as _nas_group_shuffle  # noqa: F401
from .nas import separable as _nas_separable  # noqa: F401
from .prune import (
    gradual,  # noqa: F401
    layers,  # noqa: F401
    magnitude,  # noqa: F401
    merge,  # noqa: F401
    structured,  # noqa: F401
    unstructured,  # noqa: F401
    vocab,  # noqa: F401
)
from .quantize import (
    embedding,  # noqa: F401
    fold_bn,  # noqa: F401
    kmeans_method,  # noqa: F401
    lowbit_methods,  # noqa: F401
    mixed,  # noqa: F401
    nonuniform_methods,  # noqa: F401
    ptq,  # noqa: F401
    qat,  # noqa: F401
    smoothquant,  # noqa: F401
    weight_only,  # noqa: F401
)
from .share import factorized_embedding as _share_factorized_embedding  # noqa: F401
from .share import layers as _share_layers  # noqa: F401
from .share import structured as _share_structured  # noqa: F401
from .train import (
    layerdrop,  # noqa: F401
    reconstruct,  # noqa: F401
    recovery,  # noqa: F401
)
