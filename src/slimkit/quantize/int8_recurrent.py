"""Dynamic int8 LSTM / GRU on torch's int8 recurrent kernels, stored as plain buffers.

``torch.ao.nn.quantized.dynamic.LSTM`` keeps its weights as pickled packed params, which
slimkit's safetensors artifact cannot hold (and loading must never unpickle). Like
:mod:`.int8_modules`, :class:`Int8RNN` stores what defines it as ordinary buffers and packs
lazily on first use:

- ``{weight_ih,weight_hh}_lK[_reverse]_int8`` ``[G*H, I]`` / ``[G*H, H]`` int8, symmetric,
  per output row (codes and scales from :func:`.int8_modules.quantize_weight`, so the
  weight code choice is shared with ``Int8Linear``);
- ``..._scale`` ``[G*H]`` float32;
- ``bias_{ih,hh}_lK[_reverse]`` ``[G*H]`` float32 (zeros for a bias-free layer).

The forward runs ``torch.quantized_lstm`` / ``torch.quantized_gru`` with dynamic cell
params (the C++ loop of ``torch.ao``'s dynamic LSTM): per layer and direction the input
projection of the *whole sequence* is one ``quantized::linear_dynamic`` GEMM (one
per-tensor uint8 scale for all time steps), then each time step runs the recurrent GEMM
on the int8 ``weight_hh`` with that step's state quantized on the fly; gate math is fp32.
:func:`emulate` reproduces exactly that arithmetic with integer matmuls (tests use it).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..measure.counter import register_mac_formula
from .int8_modules import _qweight, quantize_weight

_GATES = {"LSTM": 4, "GRU": 3}


def _names(num_layers: int, bidirectional: bool) -> list[tuple[str, str, str, str]]:
    """``(weight_ih, weight_hh, bias_ih, bias_hh)`` names per layer and direction, in torch's order."""
    out = []
    for k in range(num_layers):
        for sfx in ("", "_reverse")[: 2 if bidirectional else 1]:
            out.append((f"weight_ih_l{k}{sfx}", f"weight_hh_l{k}{sfx}", f"bias_ih_l{k}{sfx}", f"bias_hh_l{k}{sfx}"))
    return out


class Int8RNN(nn.Module):
    """Dynamic int8 ``nn.LSTM`` / ``nn.GRU`` replacement (same call signature and outputs)."""

    def __init__(self, mode: str, input_size: int, hidden_size: int, num_layers: int = 1,
                 batch_first: bool = False, bidirectional: bool = False) -> None:
        super().__init__()
        if mode not in _GATES:
            raise ValueError(f"Int8RNN supports LSTM and GRU, got {mode!r}")
        self.mode, self.input_size, self.hidden_size = mode, input_size, hidden_size
        self.num_layers, self.batch_first, self.bidirectional = num_layers, batch_first, bidirectional
        gh = _GATES[mode] * hidden_size
        d = 2 if bidirectional else 1
        for k, (wi, wh, bi, bh) in enumerate(_names(num_layers, bidirectional)):
            in_k = input_size if k < d else d * hidden_size
            self.register_buffer(f"{wi}_int8", torch.zeros(gh, in_k, dtype=torch.int8))
            self.register_buffer(f"{wi}_scale", torch.ones(gh))
            self.register_buffer(f"{wh}_int8", torch.zeros(gh, hidden_size, dtype=torch.int8))
            self.register_buffer(f"{wh}_scale", torch.ones(gh))
            self.register_buffer(bi, torch.zeros(gh))
            self.register_buffer(bh, torch.zeros(gh))
        self._packed: Any = None

    @classmethod
    def from_float(cls, rnn: nn.RNNBase, per_channel: bool = True, qmax: int = 127) -> Int8RNN:
        """``qmax``: weight codes in ``[-qmax, qmax]`` (63 on CPUs without VNNI: :mod:`slimkit.core.cpu`)."""
        if rnn.mode not in _GATES:
            raise ValueError(f"Int8RNN supports LSTM and GRU, got {rnn.mode}")
        if getattr(rnn, "proj_size", 0):
            raise ValueError("Int8RNN does not support LSTM proj_size")
        m = cls(rnn.mode, rnn.input_size, rnn.hidden_size, rnn.num_layers, rnn.batch_first, rnn.bidirectional)
        with torch.no_grad():
            for names in _names(rnn.num_layers, rnn.bidirectional):
                for w in names[:2]:
                    codes, scale = quantize_weight(getattr(rnn, w), per_channel, qmax)
                    getattr(m, f"{w}_int8").copy_(codes)
                    getattr(m, f"{w}_scale").copy_(scale)
                if rnn.bias:
                    for b in names[2:]:
                        getattr(m, b).copy_(getattr(rnn, b).detach().float())
        return m

    # -- packing ------------------------------------------------------------------------------
    def packed(self) -> list[Any]:
        """Cell params per layer/direction (built from the buffers on first use, then cached)."""
        if self._packed is None:
            cells = []
            for wi, wh, bi, bh in _names(self.num_layers, self.bidirectional):
                b_ih, b_hh = getattr(self, bi).float(), getattr(self, bh).float()
                p_ih = torch.ops.quantized.linear_prepack(self._qw(wi), b_ih)
                p_hh = torch.ops.quantized.linear_prepack(self._qw(wh), b_hh)
                # reduce_range=False: full 8-bit activations, as Int8Linear
                cells.append(torch.ops.quantized.make_quantized_cell_params_dynamic(p_ih, p_hh, b_ih, b_hh, False))
            self._packed = cells
        return self._packed

    def _qw(self, w: str) -> torch.Tensor:
        return _qweight(getattr(self, f"{w}_int8"), getattr(self, f"{w}_scale").float())

    def dequantized(self, w: str) -> torch.Tensor:
        """Float weight ``[G*H, in]`` the int8 codes stand for."""
        return getattr(self, f"{w}_int8").float() * getattr(self, f"{w}_scale")[:, None]

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._packed = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_packed"] = None  # packed params do not deep-copy or pickle
        return state

    # -- forward ------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, hx: Any = None) -> tuple[torch.Tensor, Any]:
        if not isinstance(x, torch.Tensor):
            raise TypeError("Int8RNN takes a padded tensor (packed sequences are not supported)")
        unbatched = x.dim() == 2
        if unbatched:
            x = x.unsqueeze(1 if not self.batch_first else 0)
        dtype = x.dtype
        x = x.float()
        b = x.shape[0] if self.batch_first else x.shape[1]
        n = self.num_layers * (2 if self.bidirectional else 1)
        if hx is None:
            z = x.new_zeros(n, b, self.hidden_size)  # [L*D, B, H]
            hx = (z, z) if self.mode == "LSTM" else z
        elif unbatched:
            hx = tuple(h.unsqueeze(1) for h in hx) if self.mode == "LSTM" else hx.unsqueeze(1)
        if self.mode == "LSTM":
            out, h, c = torch.quantized_lstm(x, [hx[0].float(), hx[1].float()], self.packed(), True, self.num_layers,
                                             0.0, False, self.bidirectional, self.batch_first, dtype=torch.qint8,
                                             use_dynamic=True)
            state: Any = (h, c)
        else:
            out, state = torch.quantized_gru(x, hx.float(), self.packed(), True, self.num_layers, 0.0, False,
                                             self.bidirectional, self.batch_first)
        if unbatched:
            out = out.squeeze(0 if self.batch_first else 1)
            state = tuple(s.squeeze(1) for s in state) if self.mode == "LSTM" else state.squeeze(1)
        return out.to(dtype), state

    def extra_repr(self) -> str:
        return (f"{self.mode}, {self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
                f"batch_first={self.batch_first}, bidirectional={self.bidirectional}")


def recurrent_spec(rnn: nn.RNNBase, method: str) -> dict[str, Any]:
    """What a record keeps to rebuild the int8 module (the replay needs no weights)."""
    from ..core import MethodError

    if rnn.mode not in _GATES or getattr(rnn, "proj_size", 0):
        what = f"{rnn.mode} with proj_size" if getattr(rnn, "proj_size", 0) else f"nn.RNN ({rnn.mode})"
        raise MethodError(f"{method}: int8 recurrent kernels support plain LSTM/GRU layers, not {what}")
    return {"type": rnn.mode, "in": rnn.input_size, "hidden": rnn.hidden_size, "layers": rnn.num_layers,
            "batch_first": rnn.batch_first, "bidirectional": rnn.bidirectional}


def refuse_unexportable(model: nn.Module, fmt: str) -> None:
    """Raise a :class:`MethodError` naming the recurrent layer a format cannot hold.

    ``onnx``: an :class:`Int8RNN` runs torch-only int8 cells (export the float model with
    ``export.onnx int8: dynamic`` instead: ONNX Runtime quantizes its LSTM/GRU ops).
    ``pt2e``: ``torch.export`` specialises any LSTM/GRU to the example's sequence length
    (the program would serve one length only), float or int8.
    """
    from ..core import MethodError

    for name, m in model.named_modules():
        if fmt == "onnx" and isinstance(m, Int8RNN):
            raise MethodError(f"export.onnx: {name!r} is an int8 {m.mode} (Int8RNN), which has no ONNX form; "
                              "export the float model with export.onnx int8: dynamic (ONNX Runtime's int8 "
                              f"{m.mode}) or serve the slimkit artifact")
        if fmt == "pt2e" and isinstance(m, (nn.RNNBase, Int8RNN)):
            raise MethodError(f"export.pt2e: {name!r} is a {m.mode} layer; torch.export fixes a recurrent layer's "
                              "sequence length, so PT2E cannot serve it. Use export.onnx, or quantize.dynamic and "
                              "the slimkit artifact")


def build_recurrent(spec: dict[str, Any]) -> Int8RNN:
    return Int8RNN(spec["type"], spec["in"], spec["hidden"], spec["layers"], spec["batch_first"],
                   spec["bidirectional"])


def _quantized_rnn_macs(gates: int) -> Any:
    """MACs of ``aten::quantized_lstm/gru``: per layer and direction ``T*B * G*H * (in + H)``."""

    def macs(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> int:
        x, layers, bidir = args[0], int(args[4]), bool(args[7])
        d, h = (2 if bidir else 1), int(out[1].shape[-1])
        tb = x.numel() // max(1, x.shape[-1])
        first = d * gates * h * (x.shape[-1] + h)
        return tb * (first + (layers - 1) * d * gates * h * (d * h + h))

    return macs


register_mac_formula("aten::quantized_lstm", _quantized_rnn_macs(4))
register_mac_formula("aten::quantized_gru", _quantized_rnn_macs(3))


# -- integer emulation (the reference the kernel must match) ----------------------------------

def _dyn_linear(x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``quantized::linear_dynamic`` in integers: per-tensor uint8 input (range incl. 0), int32 accumulate."""
    lo, hi = torch.clamp(x.min(), max=0.0), torch.clamp(x.max(), min=0.0)  # float32, as fbgemm
    s = (hi - lo) / 255.0 if hi > lo else torch.tensor(0.1)
    zp = int(torch.clamp(torch.round(-lo / s), 0, 255))
    q = torch.clamp(torch.round(x * (1.0 / s)) + zp, 0, 255).to(torch.int64)  # [N, I]
    acc = (q - zp) @ codes.to(torch.int64).T  # [N, O] exact integers
    return acc.float() * (s * scale) + bias


def emulate(m: Int8RNN, x: torch.Tensor) -> torch.Tensor:
    """The output sequence of ``m`` on ``x`` (zero initial state), recomputed with integer GEMMs."""
    seq = x.float() if not m.batch_first else x.float().transpose(0, 1)  # [T, B, I]
    gates = _GATES[m.mode]
    d = 2 if m.bidirectional else 1
    names = _names(m.num_layers, m.bidirectional)
    for k in range(m.num_layers):
        outs = []
        for r in range(d):
            wi, wh, bi, bh = names[k * d + r]
            T, B = seq.shape[:2]
            src = seq.flip(0) if r else seq
            gi = _dyn_linear(src.reshape(T * B, -1), getattr(m, f"{wi}_int8"), getattr(m, f"{wi}_scale"),
                             getattr(m, bi)).reshape(T, B, -1)  # [T, B, G*H]
            h = seq.new_zeros(B, m.hidden_size)
            c = seq.new_zeros(B, m.hidden_size)
            ys = []
            for t in range(T):
                gh = _dyn_linear(h, getattr(m, f"{wh}_int8"), getattr(m, f"{wh}_scale"), getattr(m, bh))  # [B, G*H]
                if gates == 4:
                    i, f, g, o = (gi[t] + gh).chunk(4, dim=1)
                    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                    h = torch.sigmoid(o) * torch.tanh(c)
                else:
                    ri, zi, ni = gi[t].chunk(3, dim=1)
                    rh, zh, nh = gh.chunk(3, dim=1)
                    rg, zg = torch.sigmoid(ri + rh), torch.sigmoid(zi + zh)
                    h = (1 - zg) * torch.tanh(ni + rg * nh) + zg * h
                ys.append(h)
            y = torch.stack(ys)  # [T, B, H]
            outs.append(y.flip(0) if r else y)
        seq = torch.cat(outs, dim=-1)  # [T, B, D*H]
    return seq.transpose(0, 1) if m.batch_first else seq


__all__ = ["Int8RNN", "build_recurrent", "emulate", "recurrent_spec", "refuse_unexportable"]
