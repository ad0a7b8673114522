"""Label propagation over the ATen graph: which parameter slices meet which (see :mod:`.graph`).

Each op handler receives the node, its args, the first argument's label array ``x`` and
the output shape, and returns the output's label array (or a list for multi-output ops).
Anything not handled freezes the channels that enter it.
"""
from __future__ import annotations

import operator
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.errors import MethodError
from . import recurrent
from .labels import Labels as _Labels
from .labels import compress as _compress
from .labels import varying as _varying
from .propagate_ops import IndexOps, _module_of, _shape

Axis = tuple[str, int]  # (parameter or buffer qualified name, dim)

_PASS = {
    "relu", "relu_", "gelu", "silu", "silu_", "tanh", "sigmoid", "hardtanh", "hardtanh_", "hardswish", "hardswish_",
    "hardsigmoid", "neg", "abs", "exp", "sqrt", "rsqrt", "erf", "sin", "cos", "dropout", "to", "contiguous", "clone",
    "type_as", "alias", "detach", "leaky_relu", "elu", "clamp", "clamp_min", "clamp_max", "pow", "mish", "relu6",
    "_to_copy", "lift_fresh_copy", "softplus", "gelu_", "log", "reciprocal", "square",
}
_BINARY = {"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "maximum", "minimum", "where", "rsub"}
_SPATIAL = {"max_pool2d", "max_pool1d", "avg_pool2d", "avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool1d",
            "adaptive_max_pool2d", "upsample_nearest2d", "upsample_bilinear2d"}
# constant-valued results that still take their input's shape: labels pass (the shape shrinks with it)
_SHAPE_LIKE = {"full_like", "zeros_like", "ones_like", "empty_like", "new_ones", "new_zeros", "new_full", "new_empty"}
# results that carry no channel: fine on unlabelled inputs; a labelled input is frozen (conservative)
_NO_LABEL = {"arange", "full", "zeros", "ones", "empty", "ge", "gt", "le", "lt", "eq", "ne", "__and__", "__or__",
             "logical_not", "bitwise_not", "scalar_tensor", "sym_size", "cumsum", "diff", "rand", "randn", "triu",
             "tril", "isnan", "gather", "argmax", "argmin", "sort", "topk"}
_SKIP = {"_assert_tensor_metadata", "_assert_scalar", "sym_constrain_range_for_size", "_assert_async"}


def _split(fqn: str) -> tuple[str, str]:
    mod, _, name = fqn.rpartition(".")
    return mod, name


def _op_name(target: Any) -> str:
    if target is operator.getitem:
        return "getitem"
    name = getattr(target, "__name__", str(target))  # "add.Tensor"
    return name.split(".")[0]


class _Propagator(IndexOps):
    def __init__(self, ep: torch.export.ExportedProgram, model: nn.Module) -> None:
        self.ep = ep
        self.L = _Labels()
        self.labels: dict[Any, Any] = {}
        sig = ep.graph_signature
        self.param_of: dict[str, str] = {**sig.inputs_to_parameters, **sig.inputs_to_buffers}
        self.state = {**dict(model.named_parameters(remove_duplicate=False)),
                      **dict(model.named_buffers(remove_duplicate=False))}
        self.rnn_nodes: set[Any] = set()  # aten.lstm/gru/rnn nodes (see .recurrent)
        self.rnn_states: set[Any] = set()  # their h_n / c_n outputs: dim 0 is layer*direction

    # -- helpers -----------------------------------------------------------------------
    def pname(self, arg: Any) -> str | None:
        return self.param_of.get(arg.name) if hasattr(arg, "op") and arg.op == "placeholder" else None

    def ax(self, fqn: str, dim: int) -> np.ndarray:
        t = self.state[fqn]
        return self.L.axis(fqn, dim % t.dim(), t.shape[dim])

    def lab(self, arg: Any) -> np.ndarray | None:
        if not hasattr(arg, "op"):
            return None
        if arg.op == "placeholder" and arg not in self.labels:
            # a parameter used as a plain tensor (cls token, position table, layer scale):
            # its last dim is its channel dim. Buffers (rotary tables, masks) carry no channels.
            fqn = self.ep.graph_signature.inputs_to_parameters.get(arg.name)
            t = self.state.get(fqn) if fqn else None
            self.labels[arg] = (self.along(self.ax(fqn, -1), t.dim(), t.dim() - 1)
                                if t is not None and t.dim() >= 1 and t.is_floating_point() else None)
        return self.labels.get(arg)

    def along(self, ids: np.ndarray, ndim: int, dim: int) -> np.ndarray:
        shape = [1] * ndim
        shape[dim] = ids.shape[0]
        return ids.reshape(shape)

    def consume(self, x: np.ndarray | None, ids: np.ndarray, dim: int, ndim: int) -> None:
        """A weight axis ``ids`` reads dim ``dim`` of the value labelled ``x``: couple them.

        Positions fed by something without a channel label (the model input, a computed
        tensor) cannot be removed: the producer would not shrink with them.
        """
        if x is None:
            self.L.freeze(ids, "reads the model input or an unlabelled value")
            return
        self.L.unify(x, self.along(ids, ndim, dim))
        xb = np.broadcast_to(x, [len(ids) if d == dim else x.shape[d] for d in range(x.ndim)])
        bad = (np.moveaxis(xb, dim, 0).reshape(len(ids), -1) < 0).any(axis=1)
        if bad.any():
            self.L.freeze(ids[bad], "reads the model input or an unlabelled value")

    def freeze_all(self, node: Any, reason: str) -> None:
        for a in node.all_input_nodes:
            v = self.lab(a) if a.op == "placeholder" else self.labels.get(a)
            for lab in (v if isinstance(v, list) else [v]):
                self.L.freeze(lab, reason)

    # -- the walk ------------------------------------------------------------------------
    def run(self) -> None:
        for node in self.ep.graph.nodes:
            if node.op == "placeholder":
                continue  # parameters get labels lazily, only where used as plain tensors
            elif node.op == "call_function":
                op = _op_name(node.target)
                try:
                    out = self.visit(node, op, list(node.args), dict(node.kwargs))
                except Exception as exc:  # an op form the handlers do not expect: name the module it came from
                    raise MethodError(f"structured pruning cannot analyse {op} ({node.name}) in module "
                                      f"{_module_of(node)}: {type(exc).__name__}: {exc}") from exc
                if out is not None:
                    self.labels[node] = out
            elif node.op == "output":
                for a in node.all_input_nodes:
                    v = self.labels.get(a)
                    for lab in (v if isinstance(v, list) else [v]):
                        self.L.freeze(lab, "reaches the model output")

    def visit(self, node: Any, op: str, args: list[Any], kw: dict[str, Any]) -> Any:
        shape = _shape(node)
        x = self.lab(args[0]) if args else None
        if op in _SKIP:
            return None
        if op in _SHAPE_LIKE:
            return x
        if op in _NO_LABEL:
            if any(self.labels.get(a) is not None for a in node.all_input_nodes):
                self.freeze_all(node, f"{op} of a channel-carrying value")
            return None
        if op == "getitem":
            if args[0] in self.rnn_nodes and args[1] >= 1:
                self.rnn_states.add(node)
            v = self.labels.get(args[0])
            return v[args[1]] if isinstance(v, list) else None
        if op in _PASS or op in _SPATIAL:
            if x is not None and op in _SPATIAL and any(d >= 2 for d in _varying(x)):
                self.L.freeze(x, f"{op} over a channel dim")
                return None
            return x if x is None or shape is None or x.ndim == len(shape) else None
        if op in _BINARY:
            tensors = [a for a in args if hasattr(a, "op")]
            labs = [self.lab(a) for a in tensors]
            if all(lab is None for lab in labs) or shape is None:
                return None
            bare = [_shape(a) for a, lab in zip(tensors, labs) if lab is None]
            labs = [lab.reshape((1,) * (len(shape) - lab.ndim) + lab.shape) for lab in labs if lab is not None]
            out = labs[0]
            for other in labs[1:]:
                self.L.unify(out, other)
                a, b = np.broadcast_arrays(out, other)
                out = _compress(np.where(a >= 0, a, b))
            self.fixed_size_operands(out, bare, len(shape), op)
            return out
        gates = recurrent.rnn_op_gates(op)
        if gates is not None:
            self.rnn_nodes.add(node)
            return recurrent.label_rnn(self, node, args, gates)
        handler = getattr(self, f"op_{op}", None)
        if handler is not None:
            return handler(node, args, kw, x, shape)
        if any(self.labels.get(a) is not None for a in node.all_input_nodes):
            self.freeze_all(node, f"unknown op {op}")
        return None

    # -- module ops ----------------------------------------------------------------------
    def op_linear(self, node, args, kw, x, shape):
        w, b = args[1], args[2] if len(args) > 2 else None
        wn = self.pname(w)
        if wn is None or shape is None:
            self.freeze_all(node, "linear with a computed weight")
            return None
        self.consume(x, self.ax(wn, 1), len(shape) - 1, len(shape))
        out = self.ax(wn, 0)
        if b is not None and self.pname(b):
            self.L.unify(out, self.ax(self.pname(b), 0))
        return self.along(out, len(shape), len(shape) - 1)

    def op_addmm(self, node, args, kw, x, shape):  # HF Conv1D: addmm(bias, x, weight[in, out])
        b, inp, w = args[0], self.lab(args[1]), args[2]
        wn, bn = self.pname(w), self.pname(b)
        if wn is None or shape is None:
            self.freeze_all(node, "addmm with a computed weight")
            return None
        self.consume(inp, self.ax(wn, 0), 1, 2)
        out = self.ax(wn, 1)
        if bn:
            self.L.unify(out, self.ax(bn, 0))
        return self.along(out, 2, 1)

    def op_conv2d(self, node, args, kw, x, shape):
        w = args[1]
        b = args[2] if len(args) > 2 else None
        groups = args[6] if len(args) > 6 else kw.get("groups", 1)
        wn = self.pname(w)
        if wn is None or shape is None:
            self.freeze_all(node, "conv with a computed weight")
            return None
        wt = self.state[wn]
        out = self.ax(wn, 0)
        cin = wt.shape[1] * groups
        if groups == 1:
            self.consume(x, self.ax(wn, 1), 1, len(shape))
        elif wt.shape[1] == 1 and wt.shape[0] == cin:  # depthwise: channel c in -> channel c out
            self.consume(x, out, 1, len(shape))
        else:  # grouped: slicing would have to keep the groups equal; not supported -> frozen
            self.L.freeze(x, "grouped convolution")
            self.L.freeze(out, "grouped convolution")
        if b is not None and self.pname(b):
            self.L.unify(out, self.ax(self.pname(b), 0))
        return self.along(out, len(shape), 1)

    op_conv1d = op_conv2d

    def op_batch_norm(self, node, args, kw, x, shape):
        ch = [self.ax(self.pname(a), 0) for a in args[1:5] if a is not None and self.pname(a)]
        out = x
        for ids in ch:
            ids = self.along(ids, len(shape), 1)
            if out is not None:
                self.L.unify(out, ids)
            out = ids if out is None else out
        return out

    def _norm(self, node, args, x, shape, params, ndims: int, reason: str):
        out = x
        for a in params:
            if a is not None and self.pname(a):
                ids = self.along(self.ax(self.pname(a), 0), len(shape), len(shape) - 1 if ndims else 1)
                if out is not None:
                    self.L.unify(out, ids)
                out = ids if out is None else out
        self.L.freeze(out, reason)
        return out

    def op_layer_norm(self, node, args, kw, x, shape):
        return self._norm(node, args, x, shape, args[2:4], 1, "layer norm statistics")

    def op_group_norm(self, node, args, kw, x, shape):
        return self._norm(node, args, x, shape, args[2:4], 0, "group norm statistics")

    def op_embedding(self, node, args, kw, x, shape):
        wn = self.pname(args[0])
        if wn is None or shape is None:
            return None
        return self.along(self.ax(wn, 1), len(shape), len(shape) - 1)

    # -- shape ops -----------------------------------------------------------------------
    def op_view(self, node, args, kw, x, shape):
        src = _shape(args[0])
        if x is None or shape is None or src is None:
            return None
        full = np.broadcast_to(x, src).reshape(shape)
        out = _compress(full)
        var = _varying(out)
        if len(var) >= 2:  # a channel dim split into (outer, inner): each outer slice is one unit
            inner = np.moveaxis(out, var[0], 0).reshape(out.shape[var[0]], -1)
            for row in inner:
                ids = row[row >= 0]
                for i in ids[1:]:
                    self.L.union(int(ids[0]), int(i))
                self.L.blocked.update(int(i) for i in ids)
        return out

    op_reshape = op_view
    op__unsafe_view = op_view
    op_flatten = op_view
    op_unflatten = op_view
    op_view_copy = op_view

    def op_expand(self, node, args, kw, x, shape):
        if x is None or shape is None:
            return None
        return x.reshape((1,) * (len(shape) - x.ndim) + x.shape)

    def op_permute(self, node, args, kw, x, shape):
        return None if x is None else np.transpose(x, [d % x.ndim for d in args[1]])

    def op_transpose(self, node, args, kw, x, shape):
        return None if x is None else np.swapaxes(x, args[1], args[2])

    def op_t(self, node, args, kw, x, shape):
        return None if x is None else x.T

    def op_unsqueeze(self, node, args, kw, x, shape):
        return None if x is None else np.expand_dims(x, args[1] % (x.ndim + 1))

    def op_squeeze(self, node, args, kw, x, shape):
        src = _shape(args[0])
        if x is None or shape is None or src is None:
            return None
        return _compress(np.broadcast_to(x, src).reshape(shape))

    def op_slice(self, node, args, kw, x, shape):
        if x is None:
            return None
        dim = args[1] % x.ndim if len(args) > 1 else 0
        if x.shape[dim] == 1:
            return x
        start = args[2] if len(args) > 2 and args[2] is not None else 0
        end = args[3] if len(args) > 3 and args[3] is not None else x.shape[dim]
        step = args[4] if len(args) > 4 else 1
        idx = np.arange(x.shape[dim])[slice(start, end, step)]
        if recurrent.is_stacked_state(self, args[0], dim):  # h_n[-2:]: a range of layers
            self.rnn_states.add(node)
            return x.take(idx, axis=dim)
        kept = x.take(idx, axis=dim)
        dropped = np.delete(x, idx, axis=dim)
        # constant slice bounds: safe only inside units (rotate_half within a head); a unit
        # cut by the bounds, or removed before them, would shift what the slice selects
        rk, rd = self.L.roots(kept), self.L.roots(dropped)
        if not set(np.unique(rd[rd >= 0]).tolist()) <= set(np.unique(rk[rk >= 0]).tolist()):
            self.L.freeze(x, "partly sliced away")
        return kept

    def op_split(self, node, args, kw, x, shape):
        src = _shape(args[0])
        if x is None or src is None:
            return None
        dim = (args[2] if len(args) > 2 else kw.get("dim", 0)) % len(src)
        sizes = args[1] if isinstance(args[1], (list, tuple)) else None
        if sizes is None:
            n = src[dim]
            sizes = [min(args[1], n - s) for s in range(0, n, args[1])]
        if x.shape[dim] == 1:
            return [x for _ in sizes]
        bounds = np.cumsum([0, *sizes])
        return [x.take(np.arange(bounds[i], bounds[i + 1]), axis=dim) for i in range(len(sizes))]

    op_split_with_sizes = op_split

    def op_select(self, node, args, kw, x, shape):
        if x is None:
            return None
        dim = args[1] % x.ndim
        if x.shape[dim] > 1 and recurrent.is_stacked_state(self, args[0], dim):
            return np.take(x, args[2], axis=dim)  # h_n[-1]: picks a layer, never a unit
        if x.shape[dim] > 1:
            self.L.freeze(x, "indexed by a constant")
            return None
        return np.squeeze(x, dim)

    def op_cat(self, node, args, kw, x, shape):
        tensors = args[0]
        dim = (args[1] if len(args) > 1 else kw.get("dim", 0))
        labs = [self.lab(t) for t in tensors]
        if all(lab is None for lab in labs) or shape is None:
            return None
        dim %= len(shape)
        parts = []
        for t, lab in zip(tensors, labs):
            s = list(_shape(t))
            if lab is None:
                lab = np.full([1] * len(s), -1, dtype=np.int64)
            target = [1 if lab.shape[d] == 1 else s[d] for d in range(len(s))]
            target[dim] = s[dim]
            parts.append(np.broadcast_to(lab, target))
        common = [max(p.shape[d] for p in parts) if d != dim else None for d in range(len(shape))]
        parts = [np.broadcast_to(p, [c if c is not None else p.shape[d] for d, c in enumerate(common)]) for p in parts]
        return _compress(np.concatenate(parts, axis=dim))

    def op_mean(self, node, args, kw, x, shape):
        if x is None or shape is None:
            return None
        dims = args[1] if len(args) > 1 and args[1] is not None else list(range(x.ndim))
        dims = [d % x.ndim for d in (dims if isinstance(dims, (list, tuple)) else [dims])]
        if any(x.shape[d] > 1 for d in dims):
            self.L.freeze(x, "reduced over a channel dim")
            return None
        keep = len(shape) == x.ndim
        return x if keep else np.squeeze(x, tuple(dims))

    op_sum = op_mean
    op_amax = op_mean

    def op__softmax(self, node, args, kw, x, shape):
        if x is not None and x.shape[args[1] % x.ndim] > 1:
            self.L.freeze(x, "softmax over a channel dim")
            return None
        return x

    op_softmax = op__softmax
    op__log_softmax = op__softmax
    op_log_softmax = op__softmax

    def op_pad(self, node, args, kw, x, shape):
        if x is None:
            return None
        padded = [x.ndim - 1 - i // 2 for i, p in enumerate(args[1]) if p]
        if any(x.shape[d] > 1 for d in padded):
            self.L.freeze(x, "padding along a channel dim")
            return None
        return x

    op_constant_pad_nd = op_pad

    # -- attention -----------------------------------------------------------------------
    def matmul(self, a: np.ndarray | None, b: np.ndarray | None, sa: tuple, sb: tuple) -> np.ndarray | None:
        """Labels of ``A @ B`` (both >= 2-d); ids meeting in the contraction are unified."""
        if a is None and b is None:
            return None
        nd = max(len(sa), len(sb))
        a = np.full([1] * nd, -1, dtype=np.int64) if a is None else a.reshape((1,) * (nd - a.ndim) + a.shape)
        b = np.full([1] * nd, -1, dtype=np.int64) if b is None else b.reshape((1,) * (nd - b.ndim) + b.shape)
        for lab, other, kdim in ((a, b, -1), (b, a, -2)):  # a channel contracted against nothing: frozen
            if lab.shape[kdim] > 1 and (other.max() < 0):
                self.L.freeze(lab, "contracted against a computed tensor")
        a4, b4 = a[..., :, :, None], b[..., None, :, :]  # [..., m, k, 1], [..., 1, k, n]
        self.L.unify(a4, b4)
        # output label per position: a head id survives the contraction only when every id it
        # contracted over is in the same atom (a whole head); plain channels do not survive
        ra, rb = self.L.roots(a), self.L.roots(b)
        same_a = (ra == ra[..., :, :1]).all(axis=-1, keepdims=True)      # [..., m, 1]
        same_b = (rb == rb[..., :1, :]).all(axis=-2, keepdims=True)      # [..., 1, n]
        oa = np.where(same_a, a[..., :, :1], -1)                         # [..., m, 1]
        ob = np.where(same_b, b[..., :1, :], -1)                         # [..., 1, n]
        oa, ob = np.broadcast_arrays(oa, ob)
        return _compress(np.where(ob >= 0, ob, oa))

    def op_matmul(self, node, args, kw, x, shape):
        sa, sb = _shape(args[0]), _shape(args[1])
        if sa is None or sb is None or len(sa) < 2 or len(sb) < 2:
            self.freeze_all(node, "matmul with a vector")
            return None
        return self.matmul(x, self.lab(args[1]), sa, sb)

    op_bmm = op_matmul

    def op_scaled_dot_product_attention(self, node, args, kw, x, shape):
        q, k, v = (self.lab(a) for a in args[:3])
        sq, sk = _shape(args[0]), _shape(args[1])
        mask = args[3] if len(args) > 3 else kw.get("attn_mask")
        rep = sq[-3] // sk[-3] if sq and sk and len(sq) >= 3 else 1
        if rep > 1:  # grouped-query attention: K/V head h serves query heads h*rep .. h*rep+rep-1
            k = None if k is None or k.shape[-3] == 1 else np.repeat(k, rep, axis=-3)
            v = None if v is None or v.shape[-3] == 1 else np.repeat(v, rep, axis=-3)
        kt = None if k is None else np.swapaxes(k, -1, -2)
        skt = (*sk[:-2], sk[-1], sk[-2])
        scores = self.matmul(q, kt, sq, skt)
        m = self.lab(mask) if mask is not None else None
        if m is not None and scores is not None:
            self.L.unify(scores, m)
        return self.matmul(scores, v, (*sq[:-1], sk[-2]), _shape(args[2]))
