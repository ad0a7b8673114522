"""Quantisation: the pure quantiser math below, and the registered methods built on it.

* :mod:`.affine` - uniform affine quantise / dequantise / fake-quant with STE.
* :mod:`.granularity` - per-tensor / per-channel / per-group parameters (:class:`QParams`).
* :mod:`.observers` - range calibration: min-max, moving average, percentile, MSE, KL.
* :mod:`.nonuniform` - k-means sharing, equal-frequency bins, power-of-two, residual binary.
* :mod:`.lowbit` - binary (BinaryConnect, BWN, XNOR) and ternary (TWN, TTQ) weights.
* :mod:`.packing`, :mod:`.huffman`, :mod:`.storage` - how the codes are stored and what it costs.

The primitives listed above register nothing and touch no modules; the methods
(``quantize.dynamic`` / ``static`` / ``weight_only`` / ``qat`` / ... in :mod:`.ptq`,
:mod:`.weight_only`, :mod:`.qat`, :mod:`.lowbit_methods`, ...) swap modules for int8 or
packed ones and return records.
"""
from __future__ import annotations

from .affine import dequantize, fake_quant, qparams, qrange, quant_error, quantize
from .granularity import QParams, per_channel, per_group, per_tensor
from .huffman import entropy_bits, huffman_code, huffman_decode, huffman_encode, huffman_nbytes
from .lowbit import TTQ, binarize, binarize_activations, binarize_ste, sign_ste, ternarize_twn
from .nonuniform import (
    Log2Quant,
    codebook_grad,
    equal_frequency_bins,
    kmeans_share,
    log2_dequantize,
    log2_quantize,
    residual_binary,
    residual_dequantize,
)
from .observers import (
    KLObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MSEObserver,
    Observer,
    PercentileObserver,
)
from .packing import pack_bits, packed_nbytes, unpack_bits
from .storage import bits_per_weight, quantized_nbytes

__all__ = [
    "TTQ",
    "KLObserver",
    "Log2Quant",
    "MSEObserver",
    "MinMaxObserver",
    "MovingAverageMinMaxObserver",
    "Observer",
    "PercentileObserver",
    "QParams",
    "binarize",
    "binarize_activations",
    "binarize_ste",
    "bits_per_weight",
    "codebook_grad",
    "dequantize",
    "entropy_bits",
    "equal_frequency_bins",
    "fake_quant",
    "huffman_code",
    "huffman_decode",
    "huffman_encode",
    "huffman_nbytes",
    "kmeans_share",
    "log2_dequantize",
    "log2_quantize",
    "pack_bits",
    "packed_nbytes",
    "per_channel",
    "per_group",
    "per_tensor",
    "qparams",
    "qrange",
    "quant_error",
    "quantize",
    "quantized_nbytes",
    "residual_binary",
    "residual_dequantize",
    "sign_ste",
    "ternarize_twn",
    "unpack_bits",
]

# Weight-only (RTN / GPTQ / AWQ), SmoothQuant, mixed precision (HAWQ-style).
from .awq import awq_scales  # noqa: E402
from .gptq import gptq_quantize, hessian_from_inputs  # noqa: E402
from .mixed import MixedQuant, allocate_bits  # noqa: E402
from .rtn import dequantize_weight, rtn_quantize  # noqa: E402
from .sensitivity import hutchinson_trace, layer_traces, measured_error_probe  # noqa: E402
from .smoothquant import SmoothedLinear, SmoothQuant, smooth_scales  # noqa: E402
from .weight_only import WeightOnlyQuant  # noqa: E402
from .wo_modules import WeightOnlyConv2d, WeightOnlyLinear  # noqa: E402

__all__ += [
    "MixedQuant", "SmoothQuant", "SmoothedLinear", "WeightOnlyQuant", "WeightOnlyConv2d", "WeightOnlyLinear",
    "allocate_bits", "awq_scales", "dequantize_weight", "gptq_quantize", "hessian_from_inputs",
    "hutchinson_trace", "layer_traces", "measured_error_probe", "rtn_quantize", "smooth_scales",
]

# Data-free codebook quantisers as recipe kinds (quantize.balanced / pow2 / residual_binary).
from .nonuniform_methods import BalancedQuant, Pow2Quant, ResidualBinaryQuant  # noqa: E402

__all__ += ["BalancedQuant", "Pow2Quant", "ResidualBinaryQuant"]
