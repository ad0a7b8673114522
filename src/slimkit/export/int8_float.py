"""Exporting a model that ``quantize.dynamic`` / ``quantize.static`` already made int8.

slimkit's :class:`~slimkit.quantize.int8_modules.Int8Linear` / ``Int8Conv2d`` run torch's
packed int8 kernels, which neither the TorchScript ONNX exporter nor ``torch.export`` can
trace. For the export they stand in as float ``Linear`` / ``Conv2d`` layers holding their
dequantized weights (the int8 grid values, so the float graph computes exactly what those
weights do), and the backend quantizes again: ONNX Runtime's per-channel symmetric int8
recovers the same weight codes from values already on that grid. The float graph is
checked against this dequantized model (it must match to ``atol``); the int8 file's
deviation is measured against the real int8 PyTorch model.
"""
from __future__ import annotations

import contextlib
import glob
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from ..core.modules import swap_module
from ..quantize.int8_modules import Int8Conv2d, Int8Linear, _Int8Base


def int8_modules(model: nn.Module) -> list[str]:
    """Qualified names of the slimkit int8 modules in ``model``."""
    return [n for n, m in model.named_modules() if isinstance(m, _Int8Base)]


def float_equivalent(m: nn.Module) -> nn.Module:
    """A float ``Linear`` / ``Conv2d`` computing with ``m``'s dequantized weights and bias."""
    w = m.dequantized_weight()  # [O, I] or [O, I/g, kh, kw]
    if isinstance(m, Int8Linear):
        lin = nn.Linear(m.in_features, m.out_features)
        lin.weight.data.copy_(w)
        lin.bias.data.copy_(m.bias)
        return lin
    assert isinstance(m, Int8Conv2d)
    conv = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation,  # type: ignore[arg-type]
                     m.groups)
    conv.weight.data.copy_(w)
    conv.bias.data.copy_(m.bias)
    if m.pre_pad is None:
        return conv
    return nn.Sequential(nn.ZeroPad2d(m.pre_pad), conv)  # TF-"same" explicit padding first


@contextlib.contextmanager
def dequantized_int8(model: nn.Module) -> Iterator[list[str]]:
    """Within the block, every slimkit int8 module of ``model`` is its :func:`float_equivalent`
    (in place; the int8 modules are put back on exit, also on errors). Yields their names."""
    names = int8_modules(model)
    originals = {n: model.get_submodule(n) for n in names}
    try:
        with torch.no_grad():
            for n, m in originals.items():
                swap_module(model, n, float_equivalent(m).train(m.training))
        yield names
    finally:
        for n, m in originals.items():
            swap_module(model, n, m)


def nodes_outside(nodes: Sequence[str], modules: Sequence[str]) -> list[str]:
    """fnmatch patterns (escaped names) of the ONNX ``nodes`` that belong to none of ``modules``.

    Node names follow the module scopes (``/encoder/layers.0/fc1/MatMul`` for module
    ``encoder.layers.0.fc1``); with ``/`` read as ``.`` a node belongs to a module when its
    name continues that module's name.
    """
    keys = [f".{m}." for m in modules]
    out = []
    for node in nodes:
        flat = node.replace("/", ".")
        if not any(flat.startswith(k) for k in keys):
            out.append(glob.escape(node))
    return out
