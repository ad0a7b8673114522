"""Label-propagation handlers for ops around attention tables and fused projections.

Split from :mod:`.propagate` (a mixin of its ``_Propagator``) to keep files small:
``chunk`` (GPT-NeoX's fused QKV), ``index`` with constant index tensors (Swin's relative
position bias table), and the rule that units meeting a computed full-size tensor are frozen.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch


def _shape(node: Any) -> tuple[int, ...] | None:
    val = node.meta.get("val") if hasattr(node, "meta") else None
    if isinstance(val, torch.Tensor):
        try:
            return tuple(int(s) for s in val.shape)
        except (TypeError, ValueError, RuntimeError):  # symbolic sizes: the example should be static
            return None
    return None


def _module_of(node: Any) -> str:
    """``'path' (Class)`` of the innermost module a traced node came from (for error messages)."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return "<model>"
    path, cls = list(stack.values())[-1]
    return f"{path!r} ({getattr(cls, '__name__', str(cls).rpartition('.')[2])})"


class IndexOps:
    """Mixin for ``_Propagator``: uses its ``L`` (labels), ``labels``, ``freeze_all`` and ``op_split``."""

    L: Any
    labels: dict[Any, Any]

    def fixed_size_operands(self, out: np.ndarray, bare: list[tuple[int, ...] | None], ndim: int, op: str) -> None:
        """Freeze units that meet, elementwise, a computed tensor with a full-size dim across them.

        ``scores + bias`` where ``bias`` ([1, H, N, N], say Swin's indexed relative position
        table seen through an op the analysis does not follow) cannot shrink with the heads of
        ``scores``: removing a head would leave the operands' shapes mismatched. Dims along
        which the computed operand has size 1 (masks broadcast over heads) or along which the
        labels stay inside one unit (rotary tables across a head's dims) are fine.
        """
        for s in bare:
            if s is None:
                self.L.freeze(out, f"{op} with a computed tensor of unknown shape")
                return
            s = (1,) * (ndim - len(s)) + tuple(s)
            for d in range(ndim):
                if s[d] > 1 and out.shape[d] > 1 and self._several_units_along(out, d):
                    self.L.freeze(out, f"{op} with a computed full-size tensor along a channel dim")
                    return

    def _several_units_along(self, lab: np.ndarray, dim: int) -> bool:
        roots = np.moveaxis(self.L.roots(lab), dim, -1).reshape(-1, lab.shape[dim])
        return any(len(set(r[r >= 0].tolist())) > 1 for r in roots)

    def op_chunk(self, node, args, kw, x, shape):
        src = _shape(args[0])
        if x is None or src is None:
            return None
        dim = (args[2] if len(args) > 2 else kw.get("dim", 0)) % len(src)
        size = -(-src[dim] // args[1])  # torch.chunk: equal chunks of ceil(n / chunks)
        return self.op_split(node, [args[0], size, dim], {}, x, shape)

    def op_index(self, node, args, kw, x, shape):
        """``table[idx]`` with constant index tensors (Swin's relative position bias table).

        Labels pass when they are constant along every indexed dim (the channels are in the
        other dims); the indexed dims are replaced by the index tensors' dims, as torch does.
        """
        if x is None or shape is None:
            return None
        indices = list(args[1])
        dims = [d for d, i in enumerate(indices) if i is not None]
        if any(self.labels.get(i) is not None for i in indices if i is not None) or \
                any(x.shape[d] > 1 for d in dims if d < x.ndim):
            self.freeze_all(node, "indexed by a tensor")
            return None
        n_new = len(shape) - (x.ndim - len(dims))
        at = dims[0] if dims == list(range(dims[0], dims[-1] + 1)) else 0
        rest = np.squeeze(x, tuple(dims))
        out = rest.reshape(rest.shape[:at] + (1,) * n_new + rest.shape[at:])
        if out.ndim != len(shape):
            self.freeze_all(node, "indexed by a tensor")
            return None
        return out
