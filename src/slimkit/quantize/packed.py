"""Converted low-bit layers: integer codes stored *packed* as uint8 buffers, plus their scales.

Every trainable low-bit method (QAT, binary, ternary, k-means sharing) ends by swapping
each trained layer for a :class:`PackedLayer`. Its state dict holds only

* ``payload`` (uint8, 1-D): the weight codes, in one of three storages
  (:func:`encode_codes`):

  - ``"packed"``: fixed-width bit-packing (:func:`~slimkit.quantize.packing.pack_bits`),
    exactly ``ceil(numel * bits / 8)`` bytes;
  - ``"huffman"``: a canonical Huffman code of the codes, payload = one code-length byte
    per symbol of the ``2**bits`` alphabet followed by the bit stream (Deep Compression);
  - ``"sparse"``: Deep Compression's relative-index form for pruned layers: only codes
    different from ``zero_code`` are stored, each as (zeros skipped since the previous
    one, code), both streams Huffman-coded with their length tables in front. A gap longer
    than ``gap_cap`` becomes a filler entry ``(gap_cap, zero_code)``, as in the paper;

* ``scale`` (float32 ``[G]``, affine codes: ``w = (code + qmin) * scale``) or ``codebook``
  (float32 ``[G, K]``: ``w = codebook[code]``), with ``G`` 1 (per tensor) or the output
  channels;
* ``act_scale`` (float32 scalar) when the layer fake-quantises its input as it was trained;
* ``bias`` (float32) when the original layer had one.

``slimkit.save`` writes uint8 buffers dense as they are, so the file holds exactly these
bytes and ``measure.profile(...).bytes_on_disk`` counts them exactly.

The forward dequantises the weight (cached until a buffer changes) and runs the ordinary
float ``F.linear`` / ``F.conv2d``: below 8 bits there are no CPU kernels, so this is a
*size* win, not a speed win. All shapes and storage numbers needed to rebuild the empty
layer live in :attr:`PackedLayer.meta` (plain JSON), which methods put in their record so
``restore`` can replay the structure with :func:`replay_packed`.
"""
from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core import MethodError, Record
from ..core.modules import swap_module
from .affine import fake_quant
from .huffman import canonical_code, huffman_decode, huffman_encode, huffman_payload_bits
from .lowbit import sign_ste
from .packing import pack_bits, packed_nbytes, unpack_bits

Storage = Literal["packed", "huffman", "sparse", "auto"]
GAP_CAPS = (3, 7, 15, 31, 63, 127, 255)


# ---------------------------------------------------------------- layer geometry


def op_of(module: nn.Module) -> dict[str, Any]:
    """JSON description of what a Linear / Conv2d computes besides its weight."""
    if isinstance(module, nn.Linear):
        return {"type": "linear"}
    if isinstance(module, nn.Conv2d):
        if module.padding_mode != "zeros":
            raise MethodError(f"low-bit conv supports padding_mode='zeros' only, got {module.padding_mode!r}")
        return {"type": "conv2d", "stride": list(module.stride), "dilation": list(module.dilation),
                "groups": module.groups,
                "padding": module.padding if isinstance(module.padding, str) else list(module.padding)}
    raise MethodError(f"expected a Linear or Conv2d, got {type(module).__name__}")


def run_op(op: dict[str, Any], x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    if op["type"] == "linear":
        return F.linear(x, w, b)
    pad = op["padding"] if isinstance(op["padding"], str) else tuple(op["padding"])
    return F.conv2d(x, w, b, tuple(op["stride"]), pad, tuple(op["dilation"]), op["groups"])


def layers_of(model: nn.Module, targets: Any) -> list[tuple[str, nn.Module]]:
    """Targeted ``nn.Linear`` / ``nn.Conv2d`` modules (other types are never quantised here)."""
    out = [(n, m) for n, m in targets.iter(model) if type(m) in (nn.Linear, nn.Conv2d)]
    if not out:
        raise MethodError("the targets select no Linear or Conv2d layer to quantise")
    return out


# ---------------------------------------------------------------- code storage (pure)


def _lengths_table(table: dict[int, str], alphabet: int) -> np.ndarray:
    lengths = np.zeros(alphabet, dtype=np.uint8)
    for sym, word in table.items():
        lengths[sym] = len(word)
    return lengths


def _huff(symbols: np.ndarray, alphabet: int) -> bytes:
    """Length table (one byte per symbol of the alphabet) followed by the Huffman stream."""
    data, table = huffman_encode(symbols)
    return _lengths_table(table, alphabet).tobytes() + data


def _unhuff(buf: np.ndarray, alphabet: int, numel: int) -> tuple[np.ndarray, int]:
    """Decode ``numel`` symbols from ``buf`` laid out as by :func:`_huff`; returns (symbols, bytes used)."""
    lengths = {i: int(v) for i, v in enumerate(buf[:alphabet].tolist()) if v}
    if numel == 0:
        return np.zeros(0, dtype=np.int64), alphabet
    table = canonical_code(lengths)
    out = huffman_decode(buf[alphabet:].tobytes(), table, numel).numpy()
    return out, alphabet


def _huff_nbytes(symbols: np.ndarray, alphabet: int) -> int:
    return alphabet + math.ceil(huffman_payload_bits(symbols) / 8) if symbols.size else alphabet


def sparse_entries(codes: np.ndarray, zero_code: int, gap_cap: int) -> tuple[np.ndarray, np.ndarray]:
    """Relative-index entries ``(skips, values)`` of the codes that are not ``zero_code``.

    ``skips[i]`` zeros precede entry ``i`` since the previous entry; a run longer than
    ``gap_cap`` is broken by filler entries ``(gap_cap, zero_code)`` (Han et al. 2016).
    """
    nz = np.flatnonzero(codes != zero_code)  # [nnz]
    gaps = np.diff(nz, prepend=-1) - 1
    fillers = gaps // (gap_cap + 1)
    reps = fillers + 1
    n_total = int(reps.sum())
    skips = np.full(n_total, gap_cap, dtype=np.int64)
    values = np.full(n_total, zero_code, dtype=np.int64)
    last = np.cumsum(reps) - 1  # the real entry closes each group
    skips[last] = gaps - fillers * (gap_cap + 1)
    values[last] = codes[nz]
    return skips, values


def sparse_positions(skips: np.ndarray) -> np.ndarray:
    return np.cumsum(skips + 1) - 1


def encode_codes(codes: torch.Tensor, bits: int, storage: Storage = "packed",
                 zero_code: int | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """Store unsigned codes in ``[0, 2**bits)``; returns ``(payload uint8 [n], storage meta)``.

    ``"auto"`` picks the smallest of the storages that apply (``"sparse"`` needs a
    ``zero_code``, the code whose value is exactly 0).
    """
    flat = codes.detach().reshape(-1).to(torch.int64).numpy()
    alphabet = 2**bits
    if storage == "auto":
        options = {"packed": packed_nbytes(flat.size, bits), "huffman": _huff_nbytes(flat, alphabet)}
        if zero_code is not None:
            options["sparse"] = min(_sparse_nbytes(flat, zero_code, cap, alphabet) for cap in GAP_CAPS)
        storage = min(options, key=lambda k: options[k])  # type: ignore[assignment, arg-type]
    if storage == "packed":
        return pack_bits(torch.from_numpy(flat), bits), {"storage": "packed"}
    if storage == "huffman":
        return torch.frombuffer(bytearray(_huff(flat, alphabet)), dtype=torch.uint8), {"storage": "huffman"}
    if storage == "sparse":
        if zero_code is None:
            raise MethodError("sparse storage needs a zero code (a code whose value is exactly 0)")
        cap = min(GAP_CAPS, key=lambda c: _sparse_nbytes(flat, zero_code, c, alphabet))
        skips, values = sparse_entries(flat, zero_code, cap)
        gap_part = _huff(skips, cap + 1)
        blob = gap_part + _huff(values, alphabet)
        meta = {"storage": "sparse", "zero_code": zero_code, "gap_cap": cap, "entries": int(skips.size),
                "gap_bytes": len(gap_part)}
        return torch.frombuffer(bytearray(blob), dtype=torch.uint8), meta
    raise MethodError(f"expected storage 'packed', 'huffman', 'sparse' or 'auto', got {storage!r}")


def _sparse_nbytes(flat: np.ndarray, zero_code: int, cap: int, alphabet: int) -> int:
    skips, values = sparse_entries(flat, zero_code, cap)
    return _huff_nbytes(skips, cap + 1) + _huff_nbytes(values, alphabet)


def decode_codes(payload: torch.Tensor, meta: dict[str, Any], bits: int, numel: int) -> torch.Tensor:
    """Inverse of :func:`encode_codes`: ``numel`` codes as a 1-D int64 tensor."""
    storage = meta["storage"]
    if storage == "packed":
        return unpack_bits(payload, bits, numel).to(torch.int64)
    buf = payload.numpy()
    alphabet = 2**bits
    if storage == "huffman":
        out, _ = _unhuff(buf, alphabet, numel)
        return torch.from_numpy(out)
    if storage == "sparse":
        cap, n, split = meta["gap_cap"], meta["entries"], meta["gap_bytes"]
        skips, _ = _unhuff(buf[:split], cap + 1, n)
        values, _ = _unhuff(buf[split:], alphabet, n)
        out = np.full(numel, meta["zero_code"], dtype=np.int64)
        out[sparse_positions(skips)] = values
        return torch.from_numpy(out)
    raise MethodError(f"unknown storage {storage!r}")


# ---------------------------------------------------------------- the converted layer


class PackedLayer(nn.Module):
    """A Linear / Conv2d whose weight is stored as packed integer codes (see module docstring).

    Build one with :meth:`from_codes`; ``PackedLayer(meta)`` makes an empty one of the
    right shapes (what ``restore`` loads the saved buffers into).
    """

    payload: torch.Tensor
    scale: torch.Tensor
    codebook: torch.Tensor
    act_scale: torch.Tensor

    def __init__(self, meta: dict[str, Any]) -> None:
        super().__init__()
        self.meta = dict(meta)
        shape = meta["shape"]
        self.register_buffer("payload", torch.zeros(meta["payload_bytes"], dtype=torch.uint8))
        if meta["values"] == "affine":
            self.register_buffer("scale", torch.zeros(meta["groups"]))
        else:
            self.register_buffer("codebook", torch.zeros(meta["groups"], meta["levels"]))
        if meta["act"]["kind"] == "affine":
            self.register_buffer("act_scale", torch.zeros(()))
        self.bias = nn.Parameter(torch.zeros(shape[0])) if meta["has_bias"] else None
        self._cache: tuple[tuple[Any, ...], torch.Tensor] | None = None

    @classmethod
    def from_codes(cls, op: dict[str, Any], codes: torch.Tensor, bits: int, *, bias: torch.Tensor | None,
                   scale: torch.Tensor | None = None, qmin: int = 0, codebook: torch.Tensor | None = None,
                   storage: Storage = "packed", zero_code: int | None = None,
                   act: dict[str, Any] | None = None, act_scale: torch.Tensor | None = None) -> PackedLayer:
        """``codes``: unsigned ints shaped like the weight. Exactly one of ``scale`` ([G], with
        ``qmin``: ``w = (code + qmin) * scale``) or ``codebook`` ([G, K]) is given."""
        if (scale is None) == (codebook is None):
            raise MethodError("give exactly one of scale (affine codes) or codebook")
        payload, smeta = encode_codes(codes, bits, storage, zero_code)
        values = scale if scale is not None else codebook
        assert values is not None
        meta = {"op": op, "shape": list(codes.shape), "bits": bits, "payload_bytes": int(payload.numel()),
                "values": "affine" if scale is not None else "codebook", "qmin": qmin,
                "groups": int(values.shape[0]), "levels": int(codebook.shape[1]) if codebook is not None else 0,
                "has_bias": bias is not None, "act": act or {"kind": "none"}, "zero_code": zero_code, **smeta}
        layer = cls(meta)
        with torch.no_grad():
            layer.payload.copy_(payload)
            if scale is not None:
                layer.scale.copy_(scale.reshape(-1))
            else:
                layer.codebook.copy_(codebook)  # type: ignore[arg-type]
            if meta["act"]["kind"] == "affine":
                assert act_scale is not None
                layer.act_scale.copy_(act_scale.reshape(()))
            if bias is not None:
                layer.bias.copy_(bias)  # type: ignore[union-attr]
        return layer

    def codes(self) -> torch.Tensor:
        """The integer codes, shaped like the weight (int64)."""
        numel = math.prod(self.meta["shape"])
        return decode_codes(self.payload.cpu(), self.meta, self.meta["bits"], numel).reshape(self.meta["shape"])

    def weight_float(self) -> torch.Tensor:
        """The dequantised weight (float32), recomputed only when a buffer has changed."""
        bufs = [b for _, b in self.named_buffers()]
        key = tuple((b.data_ptr(), b._version, b.device) for b in bufs)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        codes = self.codes().to(self.payload.device)
        c_out = codes.shape[0]
        rows = codes.reshape(c_out, -1)  # [C, N]
        if self.meta["values"] == "affine":
            s = self.scale.reshape(-1, 1)  # [G, 1], G in {1, C}
            w = (rows + self.meta["qmin"]).to(torch.float32) * s
        else:
            cb = self.codebook  # [G, K]
            g = cb.expand(c_out, -1) if cb.shape[0] == 1 else cb
            w = torch.gather(g, 1, rows)  # [C, N]
        w = w.reshape(self.meta["shape"])
        self._cache = (key, w)
        return w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.meta["act"]
        if act["kind"] == "affine":
            x = fake_quant(x, self.act_scale, 0, act["qmin"], act["qmax"])
        elif act["kind"] == "xnor":
            x = xnor_input(x)
        w = self.weight_float().to(x.dtype)
        return run_op(self.meta["op"], x, w, self.bias)

    def extra_repr(self) -> str:
        m = self.meta
        return (f"{m['op']['type']}, shape={m['shape']}, bits={m['bits']}, values={m['values']}, "
                f"storage={m['storage']}, payload_bytes={m['payload_bytes']}")


def xnor_input(x: torch.Tensor) -> torch.Tensor:
    """XNOR-Net input binarisation around each sample's mean: ``sign(x - m) * K + m``.

    ``m`` is the sample's mean input (one number per sample), ``K`` the channel mean of
    ``|x - m|`` (XNOR-Net's per-position scale); STE in training. For signed, zero-mean
    inputs ``m ~ 0`` and this is XNOR-Net's ``sign(x) * K``. Centering matters after a ReLU,
    where every input is >= 0 and plain ``sign(x)`` is a constant that carries no signal
    (measured: docs/quantization.md#low-bit-and-weight-sharing-size). The constant ``m`` costs one
    extra term per output (``m * sum of the window's weights``), not a second bit.
    """
    m = x.detach().mean(dim=tuple(range(1, x.dim())), keepdim=True)  # [B, 1, ...]
    c = x - m
    k = c.detach().abs().mean(dim=1, keepdim=True)  # [B, 1, ...]
    return sign_ste(c) * k + m


def packed_record(layers: dict[str, PackedLayer], **summary: Any) -> Record:
    """Record with every layer's meta (what :func:`replay_packed` needs) and the stored bytes."""
    stored = sum(m.payload.numel() for m in layers.values())
    numel = sum(math.prod(m.meta["shape"]) for m in layers.values())
    summary = {"layers": len(layers), "weights": numel, "code_bytes": stored,
               "bits_per_weight": round(8.0 * stored / max(1, numel), 4), **summary}
    return Record(kind="", data={"layers": {n: m.meta for n, m in layers.items()}}, summary=summary)


def replay_packed(model: nn.Module, record: Record) -> None:
    """Swap empty :class:`PackedLayer` s in where the record says (no data needed)."""
    for name, meta in record.data["layers"].items():
        swap_module(model, name, PackedLayer(meta))
