"""Multiply-accumulate (MAC) formulas per ATen operator, and the table that maps ops to them.

Counting happens at the ATen level (see :mod:`slimkit.measure.tracker`), below
``nn.Module``, ``F.linear``, ``torch.einsum`` and ``F.scaled_dot_product_attention``:
composite ops such as ``linear``, ``matmul`` and ``einsum`` reach the dispatcher as the
kernels they lower to (``addmm``, ``mm``, ``bmm``), so a model is counted the same way
whether it is written with modules or functional calls, and nothing is counted twice.

Conventions (the same as fvcore / ptflops for the ops both cover):

- One MAC is one multiply plus one add; FLOPs = 2 x MACs.
- Only contractions count: matrix products, convolutions and attention. Bias adds,
  activations, normalisations, softmax, pooling and every other elementwise or
  reduction op count **0 MACs**; they are memory-bound and show up in the memory-access
  cost instead.
- Embedding lookups are 0 MACs (a gather); their reads are counted in the access cost
  (:func:`access_bytes`): the looked-up rows, not the whole table.
- Attention kernels count the dense score and value products, ``B*H*L*S*(E + Ev)``,
  also for causal masks (the fused CPU kernels skip part of the masked half, but
  counting it keeps counts comparable across backends).
- Zeros inside weights are still counted (dense MACs): a dense kernel does that work.
- MACs are *real* multiply-adds. A complex matrix product (complex ``mm``/``bmm``) counts
  4 real MACs per complex multiply-add.
- FFTs (``aten::_fft_c2c``, ``_fft_r2c``, ``_fft_c2r``; memory access: the default, input read
  and output written): a complex transform of length
  ``n`` counts ``(n/2) * log2(n)`` complex multiply-adds (the radix-2 butterfly count),
  i.e. ``2 * n * log2(n)`` real MACs, per transformed row (every other element of the
  batch); a real-input (r2c) or real-output (c2r) transform of real length ``n`` counts
  half of that, ``n * log2(n)`` (it is computed as a half-length complex FFT plus a
  linear pass). ``n`` is the product of the transformed dims' lengths; non-powers of two
  use the same formula (real FFT libraries stay within a small factor of it). Complex
  *elementwise* products stay 0 MACs like every elementwise op; slimkit's FFT layers
  (:mod:`slimkit.share.structured_layers`) write their spectral product as a real batched
  matmul, so it is counted as ordinary MACs.

Other code extends the table with :func:`register_mac_formula`, e.g. for int8 ops::

    register_mac_formula("quantized::linear", lambda args, kwargs, out: ...)
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

MacFormula = Callable[[tuple[Any, ...], dict[str, Any], Any], int]
AccessFormula = Callable[[tuple[Any, ...], dict[str, Any], Any], tuple[int, int, int]]

_MAC_FORMULAS: dict[str, MacFormula] = {}
_ACCESS_FORMULAS: dict[str, AccessFormula] = {}


def op_key(op: Any) -> str:
    """Normalise an op to the table key ``"ns::name"`` or ``"ns::name.overload"``.

    Accepts a string (``"aten::mm"``, ``"aten.mm"``, ``"aten::mm.default"``), an
    ``OpOverloadPacket`` (``torch.ops.aten.mm``) or an ``OpOverload``
    (``torch.ops.aten.mm.default``; that registers just the one overload).
    """
    if isinstance(op, str):
        if "::" not in op:
            ns, _, rest = op.partition(".")
            if not rest:
                raise ValueError(f"op name {op!r} must be 'namespace::name', e.g. 'aten::mm'")
            op = f"{ns}::{rest}"
        return op
    if isinstance(op, torch._ops.OpOverload):
        return f"{op._schema.name}.{op._overloadname}"
    if isinstance(op, torch._ops.OpOverloadPacket):
        return op._qualified_op_name
    raise TypeError(f"expected an op name, OpOverload or OpOverloadPacket, got {type(op).__name__}")


def register_mac_formula(op: Any, fn: MacFormula | None = None, *,
                         access: AccessFormula | None = None) -> Any:
    """Register ``fn(args, kwargs, out) -> MACs`` for ``op`` (usable as a decorator).

    ``args``/``kwargs`` are what the dispatcher passes to the op (tensors, ints, lists),
    ``out`` its result. ``access(args, kwargs, out) -> (weight_read, activation_read,
    activation_write)`` bytes optionally overrides the op's default memory-access cost
    (every tensor input read in full plus every output written).
    A later registration for the same op replaces the earlier one.
    """
    key = op_key(op)

    def deco(f: MacFormula) -> MacFormula:
        _MAC_FORMULAS[key] = f
        if access is not None:
            _ACCESS_FORMULAS[key] = access
        return f

    return deco if fn is None else deco(fn)


def _lookup(table: dict[str, Any], func: Any) -> Any:
    try:
        full = f"{func._schema.name}.{func._overloadname}"
    except AttributeError:
        return table.get(str(func))
    return table.get(full) or table.get(func._schema.name)


def mac_formula_for(func: Any) -> MacFormula | None:
    """The formula registered for a dispatched op (overload first, then the packet), or None."""
    return _lookup(_MAC_FORMULAS, func)


def access_formula_for(func: Any) -> AccessFormula | None:
    return _lookup(_ACCESS_FORMULAS, func)


# ---------------------------------------------------------------- pure shape math


def _prod(xs: Sequence[int]) -> int:
    return int(math.prod(int(x) for x in xs))


def matmul_macs(a_shape: Sequence[int], b_shape: Sequence[int]) -> int:
    """MACs of ``torch.matmul(a, b)`` with numpy broadcasting: ``batch * n * k * m``.

    1-D operands follow matmul's rules (a vector is a row on the left, a column on the right).
    """
    a, b = list(a_shape), list(b_shape)
    if not a or not b:
        return 0
    if len(a) == 1:
        a = [1, a[0]]
    if len(b) == 1:
        b = [b[0], 1]
    n, k = a[-2], a[-1]
    m = b[-1]
    batch = torch.broadcast_shapes(tuple(a[:-2]), tuple(b[:-2]))
    return _prod(batch) * n * k * m


def conv_macs(input_shape: Sequence[int], weight_shape: Sequence[int], output_shape: Sequence[int],
              transposed: bool) -> int:
    """MACs of an N-d convolution (any stride, padding, dilation, groups).

    Forward conv: every output element is a dot product over ``Cin/groups * prod(kernel)``
    inputs, weight ``[Cout, Cin/g, *k]`` -> ``out.numel() * weight[1] * prod(k)``.
    Transposed conv scatters every *input* element through ``Cout/g * prod(k)`` weights,
    weight ``[Cin, Cout/g, *k]`` -> ``in.numel() * weight[1] * prod(k)``. Stride,
    padding and dilation enter through the output size only.
    """
    per_elem = int(weight_shape[1]) * _prod(weight_shape[2:])
    return (_prod(input_shape) if transposed else _prod(output_shape)) * per_elem


def attention_macs(q_shape: Sequence[int], k_shape: Sequence[int], v_shape: Sequence[int],
                   heads_last: bool = False) -> int:
    """MACs of softmax(Q K^T) V: ``batch * L * S * E`` for the scores plus ``batch * L * S * Ev``.

    Default layout ``[..., L, E]`` (``_scaled_dot_product_*``); ``heads_last`` is the
    ``[B, L, H, E]`` layout of ``_flash_attention_forward`` / ``_efficient_attention_forward``.
    ``batch`` is every dim of Q but sequence and feature (grouped-query K/V broadcast).
    """
    if heads_last:
        batch = int(q_shape[0]) * int(q_shape[2])
        length, source = int(q_shape[1]), int(k_shape[1])
    else:
        batch = _prod(q_shape[:-2])
        length, source = int(q_shape[-2]), int(k_shape[-2])
    return batch * length * source * (int(q_shape[-1]) + int(v_shape[-1]))


# ---------------------------------------------------------------- the built-in table


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(x.shape)


def _complex_factor(t: Any) -> int:
    """Real MACs per multiply-add in ``t``'s dtype: 4 for complex, 1 otherwise."""
    return 4 if isinstance(t, torch.Tensor) and t.is_complex() else 1


def _mm(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> int:  # mm / bmm / matmul (a, b)
    return matmul_macs(_shape(args[0]), _shape(args[1])) * _complex_factor(args[0])


def _add_mm(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> int:  # addmm / baddbmm / addmv (c, a, b)
    return matmul_macs(_shape(args[1]), _shape(args[2])) * _complex_factor(args[1])


def _addbmm(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> int:  # sum over the batch of a @ b
    return matmul_macs(_shape(args[1]), _shape(args[2]))


def _linear(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> int:  # x [.., in], W [out, in]
    x, w = _shape(args[0]), _shape(args[1])
    return _prod(x[:-1]) * int(w[0]) * int(x[-1]) if len(w) == 2 else _prod(x)


def _dot(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> int:
    return int(args[0].numel())


def _convolution(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> int:
    # convolution(input, weight, bias, stride, padding, dilation, transposed, output_padding, groups)
    transposed = bool(args[6]) if len(args) > 6 else bool(kwargs.get("transposed", False))
    return conv_macs(_shape(args[0]), _shape(args[1]), _shape(out), transposed)


def _conv_nd(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> int:  # convNd / mkldnn: never transposed
    return conv_macs(_shape(args[0]), _shape(args[1]), _shape(out[0] if isinstance(out, tuple) else out), False)


def _conv_transpose_nd(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> int:
    return conv_macs(_shape(args[0]), _shape(args[1]), _shape(out), True)


def _sdpa(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> int:  # q [B, H, L, E], k [B, H, S, E]
    return attention_macs(_shape(args[0]), _shape(args[1]), _shape(args[2]))


def _sdpa_heads_last(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> int:  # q [B, L, H, E]
    return attention_macs(_shape(args[0]), _shape(args[1]), _shape(args[2]), heads_last=True)


def _zero(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> int:
    return 0


def _embedding_access(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> tuple[int, int, int]:
    """embedding(weight, indices): read the looked-up rows (weights) and the indices, write the output."""
    out_bytes = out.numel() * out.element_size()
    return out_bytes, args[1].numel() * args[1].element_size(), out_bytes


def _embedding_bag_access(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> tuple[int, int, int]:
    weight, indices = args[0], args[1]
    result = out[0] if isinstance(out, tuple) else out
    rows = indices.numel() * weight.shape[-1] * weight.element_size()
    return rows, indices.numel() * indices.element_size(), result.numel() * result.element_size()


for _name in ("aten::mm", "aten::bmm", "aten::matmul", "aten::mv"):
    register_mac_formula(_name, _mm)
for _name in ("aten::addmm", "aten::baddbmm", "aten::addmv", "aten::_addmm_activation"):
    register_mac_formula(_name, _add_mm)
register_mac_formula("aten::addbmm", _addbmm)
register_mac_formula("aten::linear", _linear)
for _name in ("aten::dot", "aten::vdot"):
    register_mac_formula(_name, _dot)
for _name in ("aten::convolution", "aten::_convolution", "aten::convolution_overrideable"):
    register_mac_formula(_name, _convolution)
for _name in ("aten::mkldnn_convolution", "aten::_slow_conv2d_forward", "aten::thnn_conv2d",
              "aten::_nnpack_spatial_convolution", "aten::slow_conv3d_forward", "aten::slow_conv_dilated2d",
              "aten::slow_conv_dilated3d", "aten::cudnn_convolution", "aten::_conv_depthwise2d",
              "aten::conv_depthwise3d"):
    register_mac_formula(_name, _conv_nd)
for _name in ("aten::slow_conv_transpose2d", "aten::slow_conv_transpose3d", "aten::cudnn_convolution_transpose"):
    register_mac_formula(_name, _conv_transpose_nd)
for _name in ("aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_scaled_dot_product_flash_attention",
              "aten::_scaled_dot_product_efficient_attention", "aten::_scaled_dot_product_cudnn_attention",
              "aten::_scaled_dot_product_fused_attention_overrideable"):
    register_mac_formula(_name, _sdpa)
for _name in ("aten::_flash_attention_forward", "aten::_efficient_attention_forward"):
    register_mac_formula(_name, _sdpa_heads_last)
register_mac_formula("aten::embedding", _zero, access=_embedding_access)
register_mac_formula("aten::_embedding_bag", _zero, access=_embedding_bag_access)
register_mac_formula("aten::_embedding_bag_forward_only", _zero, access=_embedding_bag_access)


def _rnn_layer(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> int:
    """``aten::mkldnn_rnn_layer`` (one LSTM layer and direction on CPU): ``T*B * (|W_ih| + |W_hh|)``."""
    x, w_ih, w_hh = args[0], args[1], args[2]
    return (x.numel() // max(1, x.shape[-1])) * (w_ih.numel() + w_hh.numel())


register_mac_formula("aten::mkldnn_rnn_layer", _rnn_layer)


def fft_macs(n: int, rows: int, *, real: bool) -> int:
    """Real MACs of ``rows`` FFTs of length ``n``: ``2 n log2 n`` each (complex), half for real in/out."""
    if n <= 1 or rows <= 0:
        return 0
    per = 2.0 * n * math.log2(n) * (0.5 if real else 1.0)
    return int(round(rows * per))


def _dims(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[int]:
    dims = args[1] if len(args) > 1 else kwargs.get("dim", [])
    return [int(d) for d in dims]


def _fft_length(shape: Sequence[int], dims: Sequence[int]) -> int:
    return _prod([shape[d] for d in dims])


def _fft_c2c(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> int:  # _fft_c2c(self, dim, norm, forward)
    x = args[0]
    n = _fft_length(_shape(x), _dims(args, kwargs))
    return fft_macs(n, x.numel() // max(n, 1), real=False)


def _fft_r2c(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> int:  # _fft_r2c(self, dim, norm, onesided)
    x = args[0]
    n = _fft_length(_shape(x), _dims(args, kwargs))
    return fft_macs(n, x.numel() // max(n, 1), real=True)


def _fft_c2r(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> int:  # _fft_c2r(self, dim, norm, last_dim_size)
    n = _fft_length(_shape(out), _dims(args, kwargs))  # the real output's lengths
    return fft_macs(n, out.numel() // max(n, 1), real=True)


register_mac_formula("aten::_fft_c2c", _fft_c2c)
register_mac_formula("aten::_fft_r2c", _fft_r2c)
register_mac_formula("aten::_fft_c2r", _fft_c2r)
