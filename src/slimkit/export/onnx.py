"""ONNX export, an output check against the PyTorch model, and an ONNX Runtime module.

``export_onnx`` uses the TorchScript-based exporter (``dynamo=False``): in torch 2.13 it
handles the HF BERT graph in about a second and, with eager attention, produces the
MatMul/Softmax pattern that ONNX Runtime's transformer optimizer fuses into its
``Attention`` kernel (the SDPA path exports a masked pattern the optimizer cannot fuse).

:class:`OrtModel` is an ``nn.Module`` whose ``forward`` runs an ONNX Runtime session, so
the zoo tasks (``Task.evaluate``), ``measure.compare`` and ``call_model`` drive it exactly
like the torch model it came from.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.context import Batch, call_model
from ..core.errors import ArtifactError, MethodError, SlimkitError
from .view import ExportView, Part, export_view


def _args_of(example_inputs: Batch) -> tuple[Any, ...]:
    if isinstance(example_inputs, dict):
        return tuple(example_inputs.values())
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs)
    return (example_inputs,)


@contextlib.contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """Switch HF sub-models to eager attention for the duration (what ORT's optimizer can fuse),
    and ``nn.MultiheadAttention`` off its fused fast path (not exportable)."""
    # nn.MultiheadAttention's eval fast path is one fused op ONNX has no symbolic for
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    changed = []
    for m in model.modules():
        cfg = getattr(m, "config", None)
        impl = getattr(cfg, "_attn_implementation", None)
        if impl not in (None, "eager") and hasattr(m, "set_attn_implementation"):
            changed.append((m, impl))
    for m, _ in changed:
        m.set_attn_implementation("eager")
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        for m, impl in changed:
            m.set_attn_implementation(impl)


def export_onnx(model: nn.Module, example_inputs: Batch, path: str | os.PathLike[str], *, opset: int = 17,
                dynamic_batch: bool = True, dynamic_seq: bool = True, output: str = "auto",
                part: Part = "auto") -> Path:
    """Write ``model`` as ONNX to ``path`` and return the path.

    Inputs are named after the batch's dict keys (``input_ids``, ``attention_mask``) or
    ``input``/``input_i``; the output is ``output``. ``dynamic_batch`` makes dim 0 of every
    input and the output symbolic; ``dynamic_seq`` also frees dim 1 of 2-D integer inputs
    (token ids), so one file serves every batch size and sequence length.

    The graph is that of :func:`~.view.export_view` (``output`` selects the tensor of a
    ``ModelOutput`` / dict / tuple output, ``part`` an encoder-decoder's encoder; no KV
    cache); ``model`` may already be such a view. Node names follow the module names in
    ``model`` (the view's own level is dropped), as ``exclude`` patterns expect.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not isinstance(model, ExportView):
        model, example_inputs = export_view(model, example_inputs, output=output, part=part)
    names = list(model.names)
    args = _args_of({n: example_inputs[n] for n in names} if isinstance(example_inputs, dict) else example_inputs)
    axes: dict[str, dict[int, str]] = {}
    if dynamic_batch:
        for name, a in zip(names, args):
            axes[name] = {0: "batch"}
            if dynamic_seq and a.dim() == 2 and not a.is_floating_point():
                axes[name][1] = "seq"
        axes["output"] = {0: "batch"}
    was = model.training
    model.eval()
    try:
        with eager_attention(model), torch.no_grad():
            torch.onnx.export(model, args, str(path), input_names=names, output_names=["output"],
                              dynamic_axes=axes or None, opset_version=opset, dynamo=False)
    except SlimkitError:
        raise
    except Exception as exc:  # the exporter raises many types for unsupported ops
        raise MethodError(f"ONNX export of {type(model.inner).__name__} failed: {exc}") from exc
    finally:
        model.train(was)
    _drop_view_scope(path, model.prefix)
    return path


def _drop_view_scope(path: Path, prefix: str) -> None:
    """Rename ``/inner/...`` nodes to the exported module's own scope in the original model
    (``/...``, or ``/encoder/...`` for an encoder), so node names follow the model's module
    names; the view's own few nodes move to ``/export_view/...`` to keep names unique."""
    import onnx

    proto = onnx.load(str(path))
    scope = "".join(f"/{p}" for p in prefix.split(".")) if prefix else ""
    renamed = []
    for node in proto.graph.node:
        if node.name.startswith("/inner/"):
            renamed.append(scope + node.name[len("/inner"):])
        elif node.name.startswith("/"):
            renamed.append("/export_view" + node.name)
        else:
            renamed.append(node.name)
    if len(set(renamed)) != len(renamed):  # cannot happen with exporter-made names; keep them rather than clash
        return
    for node, name in zip(proto.graph.node, renamed):
        node.name = name
    onnx.save(proto, str(path))


def session_options(threads: int | None = None, *, optimize: bool = True, spin: bool = True) -> Any:
    """ORT session options: all graph optimisations, ``threads`` intra-op threads (default: torch's count).

    ``spin=False`` stops ORT's idle worker threads from busy-waiting for the next call. On a
    machine that also runs PyTorch (OpenMP) work, spinning ORT threads steal the cores from
    it: interleaved A/B timing of ORT against a PyTorch model is only fair without it.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    if not spin:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.intra_op_num_threads = threads or torch.get_num_threads()
    so.inter_op_num_threads = 1
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    so.log_severity_level = 3
    if x64_quant_precision():
        # without VNNI, MLAS's u8 x s8 kernels add pairs of products into int16 and saturate;
        # this option makes ORT run them without saturation (exact), with the file unchanged
        so.add_session_config_entry(X64_QUANT_PRECISION, "1")
    return so


X64_QUANT_PRECISION = "session.x64quantprecision"


def x64_quant_precision() -> bool:
    """Whether ORT sessions get ``session.x64quantprecision=1`` here (x86-64 without VNNI; :mod:`slimkit.core.cpu`)."""
    from ..core.cpu import int8_isa

    return int8_isa().ort_precision_option


class OrtModel(nn.Module):
    """An ONNX Runtime session behind an ``nn.Module`` interface.

    ``forward`` takes the same positional / keyword tensors as the exported model (a dict
    batch's keys are the graph's input names), converts them to numpy in the dtype the
    graph declares, and returns the first output as a float torch tensor. It has no
    parameters, so task code places its batches on the CPU.
    """

    def __init__(self, path: str | os.PathLike[str], threads: int | None = None, *, spin: bool = True) -> None:
        super().__init__()
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise ArtifactError(f"{self.path} not found")
        self.threads = threads
        self.session = ort.InferenceSession(str(self.path), sess_options=session_options(threads, spin=spin),
                                            providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self._dtypes = {i.name: _np_dtype(i.type) for i in self.session.get_inputs()}

    def feeds(self, *args: Any, **kwargs: Any) -> dict[str, np.ndarray]:
        """The ORT feed dict for torch (or numpy) arguments."""
        if len(args) > len(self.input_names):
            raise MethodError(f"{self.path.name} takes {len(self.input_names)} inputs, got {len(args)}")
        named = dict(zip(self.input_names, args))
        unknown = set(kwargs) - set(self.input_names)
        if unknown:
            raise MethodError(f"{self.path.name} has no input(s) {sorted(unknown)}; inputs: {self.input_names}")
        named.update(kwargs)
        missing = [n for n in self.input_names if n not in named]
        if missing:
            raise MethodError(f"{self.path.name}: missing input(s) {missing}; inputs: {self.input_names}")
        out = {}
        for name, value in named.items():
            arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
            out[name] = arr.astype(self._dtypes[name], copy=False)
        return out

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = self.session.run(None, self.feeds(*args, **kwargs))[0]
        return torch.from_numpy(np.ascontiguousarray(out)).float()

    def extra_repr(self) -> str:
        return f"path={str(self.path)!r}, inputs={self.input_names}"


def _np_dtype(ort_type: str) -> type:
    table = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32,
             "tensor(float16)": np.float16, "tensor(double)": np.float64, "tensor(bool)": np.bool_,
             "tensor(uint8)": np.uint8, "tensor(int8)": np.int8}
    return table.get(ort_type, np.float32)


def check_onnx(path: str | os.PathLike[str], model: nn.Module, inputs: Batch | Sequence[Batch],
               atol: float = 1e-4) -> float:
    """Run the ONNX file and the torch model on ``inputs``; return the max abs output difference.

    ``inputs`` is one batch or a list of batches. Raises :class:`ArtifactError` when the
    difference exceeds ``atol`` (the exported file computes something else).
    """
    batches = inputs if isinstance(inputs, list) else [inputs]
    if not isinstance(model, ExportView):  # compare what export_onnx exported by default
        model = export_view(model, batches[0])[0]
    ort_model = OrtModel(path)
    worst = 0.0
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            for b in batches:
                ref = call_model(model, b)
                got = call_model(ort_model, b)
                if ref.shape != got.shape:
                    raise ArtifactError(f"{path}: output shape {tuple(got.shape)} != torch {tuple(ref.shape)}")
                worst = max(worst, float((ref.float() - got).abs().max()))
    finally:
        model.train(was)
    if worst > atol:
        raise ArtifactError(f"{path}: ONNX output differs from the PyTorch model by {worst:.3g} > atol {atol:g}")
    return worst
