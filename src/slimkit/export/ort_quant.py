"""Int8 ONNX models for ONNX Runtime: transformer fusions, dynamic and static (QDQ) quantization.

ORT's int8 kernels (``MatMulInteger``/``DynamicQuantizeMatMul``, ``QAttention``, ``QLinearConv``)
are what make int8 fast on CPU; slimkit's part is choosing *what* to quantize and with
which ranges:

- transformers: dynamic int8 with per-channel weights on the *plain* export, optionally
  keeping the layers whose int8 error is largest (:func:`layer_sensitivity`) in float.
  ORT's offline transformer fusions (:func:`optimize_transformer`: ``Attention``,
  ``SkipLayerNormalization``, ``BiasGelu``) help the float graph but not the int8 one:
  every offline-fused int8 variant is slower than the plain int8 graph, whose bias adds
  and GELUs the ORT session itself fuses into ``MatMulIntegerToFloat``/``DynamicQuantizeMatMul``
  (measured: docs/quantization.md#which-int8-runtime). Per-channel weights are what buy
  accuracy, since one scale per tensor must cover its largest row (measured:
  docs/quantization.md#figures-behind-design-choices-in-the-code);
- CNNs: static QDQ with per-channel weights and activation ranges from calibration data
  (ORT's own calibrators), so ORT fuses ``DequantizeLinear -> Conv -> QuantizeLinear`` into
  ``QLinearConv``.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ..core.context import Batch
from ..core.errors import ConfigError, MethodError
from ..core.targets import check_patterns, first_match

QUANT_OP_TYPES = ("MatMul", "Attention", "Gemm", "Conv")


def optimize_transformer(src: str | os.PathLike[str], dst: str | os.PathLike[str], *, model_type: str = "bert",
                         num_heads: int = 12, hidden_size: int = 384) -> dict[str, int]:
    """Apply ORT's transformer fusions to ``src`` and write ``dst``; return the fused-op counts.

    Raises :class:`MethodError` when attention did not fuse (a graph the optimizer does not
    recognise would silently run unfused, several times slower).
    """
    from onnxruntime.transformers.optimizer import optimize_model

    opt = optimize_model(str(src), model_type=model_type, num_heads=num_heads, hidden_size=hidden_size)
    stats = {k: int(v) for k, v in opt.get_fused_operator_statistics().items() if v}
    if model_type == "bert" and not (stats.get("Attention", 0) or stats.get("MultiHeadAttention", 0)):
        raise MethodError(f"ORT's optimizer fused no attention in {src} (fused: {stats}); export with eager attention")
    opt.save_model_to_file(str(dst))
    return stats


def quantizable_nodes(path: str | os.PathLike[str], op_types: Sequence[str] = QUANT_OP_TYPES) -> list[str]:
    """Names of the nodes ORT's quantizer would turn into int8 kernels (weights are initializers)."""
    import onnx

    g = onnx.load(str(path), load_external_data=False).graph
    inits = {i.name for i in g.initializer}
    return [n.name for n in g.node if n.op_type in op_types and len(n.input) > 1 and n.input[1] in inits]


def match_nodes(names: Iterable[str], patterns: Sequence[str]) -> list[str]:
    """Node names matching any pattern: an fnmatch glob (``"*output/dense*"``) or ``re:`` + a
    regular expression matching the whole name, as :class:`~slimkit.core.Targets` reads them."""
    check_patterns(patterns, "exclude")
    return [n for n in names if first_match(patterns, n) is not None]


def quantize_dynamic_onnx(src: str | os.PathLike[str], dst: str | os.PathLike[str], *, per_channel: bool = False,
                          exclude: Sequence[str] = (), op_types: Sequence[str] = ("MatMul", "Attention", "Gemm"),
                          reduce_range: bool = False) -> list[str]:
    """Dynamic int8 (int8 weights, per-call uint8 activation ranges) of ``src`` into ``dst``.

    ``exclude`` holds patterns (glob or ``re:``) of node names kept in float. Returns the names of
    the nodes that were quantized.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    nodes = quantizable_nodes(src, op_types)
    skip = match_nodes(nodes, exclude)
    # ORT's dynamic quantizer first rewrites Gemm as MatMul (+Add) named "<gemm>_MatMul"
    ort_skip = skip + [f"{n}_MatMul" for n in skip]
    quantize_dynamic(str(src), str(dst), per_channel=per_channel, reduce_range=reduce_range,
                     weight_type=QuantType.QInt8, op_types_to_quantize=list(op_types), nodes_to_exclude=ort_skip,
                     # fused contrib ops (Attention, SkipLayerNorm) defeat ONNX shape inference
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return [n for n in nodes if n not in skip]


class _Reader:
    """ORT ``CalibrationDataReader`` over torch batches (dict / tuple / tensor)."""

    def __init__(self, batches: Iterable[Batch], input_names: Sequence[str]) -> None:
        self._it = iter(batches)
        self.names = list(input_names)

    def get_next(self) -> dict[str, np.ndarray] | None:
        b = next(self._it, None)
        if b is None:
            return None
        if isinstance(b, dict):
            items = b.items()
        else:
            items = zip(self.names, b if isinstance(b, (tuple, list)) else (b,))
        return {k: (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)) for k, v in items}

    def rewind(self) -> None:  # pragma: no cover - ORT calls it only for some calibrators
        raise MethodError("calibration batches can be read once")


def quantize_static_onnx(src: str | os.PathLike[str], dst: str | os.PathLike[str], calib: Iterable[Batch], *,
                         per_channel: bool = True, method: Literal["minmax", "entropy", "percentile"] = "minmax",
                         exclude: Sequence[str] = (), op_types: Sequence[str] | None = None,
                         preprocess: bool = True) -> list[str]:
    """Static int8 QDQ (uint8 activations, int8 weights) of ``src`` into ``dst``.

    Activation ranges come from running ``calib`` through the float model with ORT's
    calibrator (``method``). ORT's calibrators hold every intermediate tensor of every
    batch in memory until the end, and ``entropy`` / ``percentile`` then build histograms
    on top, so memory grows with the calibration set until the process is killed on an
    image model (measured: docs/quantization.md#figures-behind-design-choices-in-the-code);
    ``minmax`` fits. ``preprocess`` runs ORT's shape inference / graph optimisation first
    (folds BatchNorm into Conv so weights are quantized once).
    ``op_types=None`` lets ORT quantize every op it supports: that matters, because only
    then does it see ``Clip``/``Relu`` after a ``Conv`` and drop them into the Conv's
    output range ([0, 6] for ReLU6) instead of spending the 256 levels of the Conv output
    on its full pre-activation range, which costs a CNN with ReLU6 much of its accuracy
    (measured: docs/quantization.md#figures-behind-design-choices-in-the-code).
    Returns the names of the quantized weight-carrying nodes (Conv, Gemm, MatMul).
    """
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    if method not in methods:
        raise ConfigError(f"expected one of {sorted(methods)}, got {method!r}", key="calibration")
    with tempfile.TemporaryDirectory() as tmp:
        model_in = Path(src)
        if preprocess:
            from onnxruntime.quantization.shape_inference import quant_pre_process

            model_in = Path(tmp) / "pre.onnx"
            quant_pre_process(str(src), str(model_in), skip_symbolic_shape=True)
        names = [i.name for i in ort.InferenceSession(str(model_in), providers=["CPUExecutionProvider"]).get_inputs()]
        nodes = quantizable_nodes(model_in)
        all_nodes = [n.name for n in onnx.load(str(model_in)).graph.node]
        skip = match_nodes(all_nodes, exclude)
        quantize_static(str(model_in), str(dst), _Reader(calib, names), quant_format=QuantFormat.QDQ,
                        per_channel=per_channel, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=list(op_types) if op_types is not None else None,
                        nodes_to_exclude=skip, calibrate_method=methods[method],
                        extra_options={"CalibTensorRangeSymmetric": False})
    return [n for n in nodes if n not in skip]


def layer_sensitivity(src: str | os.PathLike[str], batches: Sequence[Batch],
                      run: Callable[[str, Batch], torch.Tensor], *, per_channel: bool = False,
                      nodes: Sequence[str] | None = None) -> dict[str, float]:
    """Output error when each node *alone* is dynamically quantized: ``{node: 1 - mean cosine}``.

    ``run(path, batch)`` evaluates an ONNX file on a batch and returns ``[B, ...]`` outputs.
    The float outputs are the reference; a larger value means the layer hurts more in int8.
    """
    ref = [run(str(src), b) for b in batches]
    nodes = list(nodes) if nodes is not None else quantizable_nodes(src)
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        dst = str(Path(tmp) / "one.onnx")
        for node in nodes:
            others = [n for n in quantizable_nodes(src) if n != node]
            quantize_dynamic_onnx(src, dst, per_channel=per_channel, exclude=others)
            cos = [torch.nn.functional.cosine_similarity(run(dst, b).flatten(1).double(), r.flatten(1).double())
                   for b, r in zip(batches, ref)]
            out[node] = float(1.0 - torch.cat(cos).mean())
    return out


def describe_ops(path: str | os.PathLike[str]) -> dict[str, int]:
    """Count of each op type in the graph (to show which int8 kernels a file uses)."""
    import onnx

    counts: dict[str, int] = {}
    for n in onnx.load(str(path), load_external_data=False).graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts
