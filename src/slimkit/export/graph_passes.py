"""Rewrites of an exported ATen graph that make the served program cheaper.

``fuse_sibling_linears`` is the horizontal GEMM fusion ONNX Runtime's transformer
optimizer does for attention (one packed QKV MatMul): Linear layers that read the same
tensor and whose weights are constants become one Linear over the concatenated weights,
followed by a split. At batch 1 a transformer block's Q, K and V projections are three
small GEMMs whose cost is mostly per-kernel overhead (oneDNN primitive dispatch, the
activation quantisation they would share anyway); one GEMM three times as wide does the
same arithmetic in one call. The numbers are unchanged: each output column still sees
its own weight row and bias, and per-channel int8 weight scales stay per channel.
"""
from __future__ import annotations

import operator
from collections import defaultdict

import torch
from torch import fx

from ..core.modules import owner_of

_LINEAR = torch.ops.aten.linear.default


def _attr(gm: fx.GraphModule, node: fx.Node | None) -> torch.Tensor | None:
    """The constant a ``get_attr`` node reads (``None`` for a missing bias)."""
    if node is None:
        return None
    owner, name = owner_of(gm, str(node.target))
    return getattr(owner, name)


def _groups(gm: fx.GraphModule) -> list[list[fx.Node]]:
    """Linear nodes with a shared input, constant 2-D weights of one input width, and biases
    either all constant or all absent; in graph order, only groups of two or more."""
    by_input: dict[tuple[fx.Node, bool, int], list[fx.Node]] = defaultdict(list)
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target is not _LINEAR or node.kwargs:
            continue
        x, w, b = (*node.args, None)[:3]
        if not isinstance(x, fx.Node) or not isinstance(w, fx.Node) or w.op != "get_attr":
            continue
        if b is not None and (not isinstance(b, fx.Node) or b.op != "get_attr"):
            continue
        weight = _attr(gm, w)
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            continue
        by_input[(x, b is not None, weight.shape[1])].append(node)
    return [nodes for nodes in by_input.values() if len(nodes) > 1]


def fuse_sibling_linears(gm: fx.GraphModule) -> int:
    """Fuse every group of sibling Linears in ``gm`` in place; return how many groups.

    Each group becomes ``linear(x, cat(W), cat(b))`` -> ``split_with_sizes`` -> one
    ``getitem`` per original output. The fused weights are registered on ``gm`` as
    ``_fused_linear_{i}_weight``/``_bias``; the originals stay until nothing reads them
    (:func:`slimkit.export.pt2e.drop_unused_attributes`). The new nodes get the metadata a
    PT2E quantizer reads (fake-tensor values, the Linear's source stack), so ``gm`` can go
    straight to ``prepare_pt2e``.
    """
    groups = _groups(gm)
    first = sum(1 for name, _ in gm.named_parameters() if name.startswith("_fused_linear_") and name.endswith("_weight"))
    for i, nodes in enumerate(groups, start=first):
        weights = [_attr(gm, n.args[1]) for n in nodes]
        bias_nodes = [(*n.args, None)[2] for n in nodes]  # all get_attr or all None (see _groups)
        biases = None if bias_nodes[0] is None else [_attr(gm, b) for b in bias_nodes]
        sizes = [int(w.shape[0]) for w in weights]
        gm.register_parameter(f"_fused_linear_{i}_weight",
                              _frozen(torch.cat([w.detach() for w in weights], dim=0)))  # [sum(out), in]
        if biases is not None:
            gm.register_parameter(f"_fused_linear_{i}_bias", _frozen(torch.cat([b.detach() for b in biases])))
        graph = gm.graph
        with graph.inserting_before(nodes[0]):
            w_node = graph.get_attr(f"_fused_linear_{i}_weight")
            args: tuple = (nodes[0].args[0], w_node)
            if biases is not None:
                args += (graph.get_attr(f"_fused_linear_{i}_bias"),)
            fused = graph.call_function(_LINEAR, args)  # [..., sum(out)]
            parts = graph.call_function(torch.ops.aten.split_with_sizes.default, (fused, sizes, -1))
            outs = [graph.call_function(operator.getitem, (parts, j)) for j in range(len(nodes))]
        _fill_meta(gm, nodes, fused, parts, outs)
        for node, out in zip(nodes, outs):
            node.replace_all_uses_with(out)
            graph.erase_node(node)
    if groups:
        gm.graph.eliminate_dead_code()
        gm.graph.lint()
        gm.recompile()
    return len(groups)


def _fill_meta(gm: fx.GraphModule, originals: list[fx.Node], fused: fx.Node, parts: fx.Node,
               outs: list[fx.Node]) -> None:
    """Give the new nodes what quantizers read from an exported graph: fake-tensor values
    (``val``, under the graph's own fake mode so symbolic batch/sequence sizes carry over)
    and the Linear source/module stacks (the x86 quantizer finds Linears by ``source_fn_stack``)."""
    for key in ("nn_module_stack", "stack_trace"):
        if key in originals[0].meta:
            fused.meta[key] = originals[0].meta[key]
    fused.meta["source_fn_stack"] = [(fused.name, torch.nn.functional.linear)]
    x_val = originals[0].args[0].meta.get("val")
    fake_mode = getattr(x_val, "fake_mode", None)
    if fake_mode is None:  # a graph without fake values (not from torch.export): nothing to carry over
        return
    with fake_mode:
        for node in fused.args[1:]:
            node.meta["val"] = fake_mode.from_tensor(_attr(gm, node), static_shapes=True)
        fused.meta["val"] = torch.ops.aten.linear.default(x_val, *(n.meta["val"] for n in fused.args[1:]))
        parts.meta["val"] = torch.ops.aten.split_with_sizes.default(fused.meta["val"], *parts.args[1:])
    for j, out in enumerate(outs):
        out.meta["val"] = parts.meta["val"][j]


def _frozen(t: torch.Tensor) -> torch.nn.Parameter:
    """A frozen parameter (the program is for inference)."""
    return torch.nn.Parameter(t, requires_grad=False)


def drop_integer_observers(gm: fx.GraphModule) -> int:
    """Remove activation observers that the quantizer put on integer tensors; returns how many.

    x86 quantizer annotations match ops (``add``, ``mul``) without looking at dtypes, so in
    HF models that compute position ids from the mask (RoBERTa: ``cumsum(mask) * mask +
    pad``) an observer lands on an int64 tensor, and its histogram fails on the first
    calibration batch. Integer tensors are exact already: the edge simply stays unquantized.
    """
    removed = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not node.args:
            continue
        mod = gm.get_submodule(str(node.target))
        if not type(mod).__name__.endswith(("Observer", "FakeQuantize")) and "activation_post_process" not in str(
                node.target):
            continue
        src = node.args[0]
        val = src.meta.get("val") if isinstance(src, fx.Node) else None
        if isinstance(val, torch.Tensor) and not (val.is_floating_point() or val.is_complex()):
            node.replace_all_uses_with(src)
            gm.graph.erase_node(node)
            removed += 1
    if removed:
        gm.graph.lint()
        gm.recompile()
    return removed
