"""Watch one forward pass op by op: MACs, memory traffic and live activation memory.

:class:`OpTracker` is a ``TorchDispatchMode``: it sees every ATen op the forward runs
(after composite ops like ``linear``/``einsum`` have lowered to their kernels) and

- adds the op's MACs from the formula table in :mod:`slimkit.measure.counter`;
- adds its memory-access cost (MAC in the ShuffleNetV2 sense): bytes of every tensor
  input read plus every tensor output written, split into weight reads (parameters and
  buffers) and activation traffic. View / aliasing ops (``view``, ``t``, ``permute``,
  ``detach`` ...) move no data and cost nothing;
- tracks live activation memory: every storage an op creates is "live" from that op
  until Python frees the last tensor using it (a weak reference on the storage fires
  then). The model inputs count as live from the start; parameters and buffers never
  count. The peak is sampled after every op, so it is the largest sum of live
  activation storages at an op boundary -- an estimate that does not see kernel
  workspaces, allocator caching/fragmentation or temporaries internal to one kernel.

Module forward pre/post hooks keep a stack of module names, so each op is attributed to
the innermost module running when it is dispatched (the per-layer table).
"""
from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .counter import access_formula_for, mac_formula_for


@dataclasses.dataclass
class ModuleStats:
    """What ran while one module was the innermost one on the stack."""

    name: str
    type: str
    params: int
    leaf: bool = True
    macs: int = 0
    access_bytes: int = 0
    calls: int = 0
    output_shape: list[int] | None = None
    order: int = -1


def _tensors(tree: Any) -> list[torch.Tensor]:
    leaves, _ = tree_flatten(tree)
    return [x for x in leaves if isinstance(x, torch.Tensor)]


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _is_alias_op(func: Any) -> bool:
    """True for ops whose outputs are views of inputs and write nothing (no data moves)."""
    try:
        returns = func._schema.returns
    except AttributeError:
        return False
    if not returns:
        return False
    return all(r.alias_info is not None and not r.alias_info.is_write for r in returns)


def _first_shape(out: Any) -> list[int] | None:
    """Shape of a module's (first) output tensor: tensor, tuple/list, dict or HF ModelOutput."""
    if isinstance(out, torch.Tensor):
        return list(out.shape)
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        for item in out:
            shape = _first_shape(item)
            if shape is not None:
                return shape
    return None


class OpTracker(TorchDispatchMode):
    """Dispatch mode that accumulates MACs, access bytes and live activation memory.

    Use :meth:`watch` around a forward: ``with tracker.watch(model, inputs): model(...)``.
    """

    def __init__(self, weights: list[torch.Tensor] | None = None) -> None:
        super().__init__()
        self.macs = 0
        self.weight_read_bytes = 0
        self.activation_read_bytes = 0
        self.activation_write_bytes = 0
        self.macs_by_op: dict[str, int] = {}
        self.unknown_ops: set[str] = set()
        self.modules: dict[str, ModuleStats] = {}
        self._stack: list[str] = []
        self._weight_storages: set[int] = set()
        self._live: dict[int, tuple[weakref.ref, int]] = {}
        self.live_bytes = 0
        self.peak_live_bytes = 0
        for w in weights or []:
            self._weight_storages.add(id(w.untyped_storage()))

    # ----------------------------------------------------------- live memory

    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key = id(storage)
        if key in self._weight_storages or key in self._live or storage.device.type == "meta":
            return
        size = int(storage.nbytes())

        def _freed(_: Any, key: int = key) -> None:
            entry = self._live.pop(key, None)
            if entry is not None:
                self.live_bytes -= entry[1]

        self._live[key] = (weakref.ref(storage, _freed), size)
        self.live_bytes += size

    def track_inputs(self, inputs: Any) -> None:
        for t in _tensors(inputs):
            self._track(t)
        self.peak_live_bytes = max(self.peak_live_bytes, self.live_bytes)

    # ----------------------------------------------------------- dispatch

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = mac_formula_for(func)
        macs = int(formula(args, kwargs, out)) if formula is not None else 0
        op_name = getattr(getattr(func, "_schema", None), "name", str(func))
        if formula is None and not op_name.startswith(("aten::", "prim::")):
            self.unknown_ops.add(op_name)  # e.g. quantized::linear or a custom kernel: MACs unknown
        access = 0
        if not _is_alias_op(func):
            custom = access_formula_for(func)
            if custom is not None:
                w_read, a_read, a_write = (int(v) for v in custom(args, kwargs, out))
                self.weight_read_bytes += w_read
                self.activation_read_bytes += a_read
                self.activation_write_bytes += a_write
                access = w_read + a_read + a_write
            else:
                for t in _tensors((args, kwargs)):
                    n = _nbytes(t)
                    if id(t.untyped_storage()) in self._weight_storages:
                        self.weight_read_bytes += n
                    else:
                        self.activation_read_bytes += n
                    access += n
                for t in _tensors(out):
                    n = _nbytes(t)
                    self.activation_write_bytes += n
                    access += n
        for t in _tensors(out):
            self._track(t)
        self.peak_live_bytes = max(self.peak_live_bytes, self.live_bytes)
        if macs:
            self.macs += macs
            self.macs_by_op[op_name] = self.macs_by_op.get(op_name, 0) + macs
        if self._stack:
            stats = self.modules[self._stack[-1]]
            stats.macs += macs
            stats.access_bytes += access
        return out

    # ----------------------------------------------------------- module attribution

    @staticmethod
    def _own_params(module: nn.Module) -> int:
        return sum(p.numel() for p in module.parameters(recurse=False))

    def watch(self, model: nn.Module, inputs: Any) -> _Watch:
        """Context manager: hooks on every submodule + this dispatch mode, removed on exit."""
        return _Watch(self, model, inputs)

    def _pre(self, name: str) -> Any:
        def hook(module: nn.Module, args: Any) -> None:
            stats = self.modules.get(name)
            if stats is None:
                stats = self.modules[name] = ModuleStats(name, type(module).__name__, self._own_params(module),
                                                          leaf=next(module.children(), None) is None)
            if stats.order < 0:
                stats.order = sum(1 for s in self.modules.values() if s.order >= 0)
            stats.calls += 1
            self._stack.append(name)
        return hook

    def _post(self, name: str) -> Any:
        def hook(module: nn.Module, args: Any, out: Any) -> None:
            if self._stack and self._stack[-1] == name:
                self._stack.pop()
            elif name in self._stack:  # an inner module raised: unwind to this one
                del self._stack[self._stack.index(name):]
            shape = _first_shape(out) if out is not None else None
            if shape is not None:
                self.modules[name].output_shape = shape
        return hook

    def register_leaves(self, model: nn.Module) -> None:
        """Pre-create rows for leaf modules so unused leaves still appear (0 calls)."""
        for name, m in model.named_modules():
            if next(m.children(), None) is None and name not in self.modules:
                self.modules[name] = ModuleStats(name, type(m).__name__, self._own_params(m))


class _Watch:
    def __init__(self, tracker: OpTracker, model: nn.Module, inputs: Any) -> None:
        self.tracker, self.model, self.inputs = tracker, model, inputs
        self.handles: list[Any] = []

    def __enter__(self) -> OpTracker:
        t = self.tracker
        t.register_leaves(self.model)
        for name, m in self.model.named_modules():
            self.handles.append(m.register_forward_pre_hook(t._pre(name)))
            self.handles.append(m.register_forward_hook(t._post(name), always_call=True))
        t.track_inputs(self.inputs)
        t.__enter__()
        return t

    def __exit__(self, *exc: object) -> None:
        try:
            self.tracker.__exit__(*exc)
        finally:
            for h in self.handles:
                h.remove()
            self.handles.clear()


def iter_weights(model: nn.Module) -> Iterator[torch.Tensor]:
    """Parameters and buffers, each tensor object once."""
    yield from model.parameters()
    yield from model.buffers()
