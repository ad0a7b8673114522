"""ONNX export, an output check against the PyTorch model, and an ONNX Runtime module.

``export_onnx`` uses the TorchScript-based exporter (``dynamo=False``): in torch 2.13 it
handles the HF BERT graph quickly and, with eager attention, produces the
MatMul/Softmax pattern that ONNX Runtime's transformer optimizer fuses into its
``Attention`` kernel (the SDPA path exports a masked pattern the optimizer cannot fuse).

:class:`OrtModel` is an ``nn.Module`` whose ``forward`` runs an ONNX Runtime session, so
the zoo tasks (``Task.evaluate``), ``measure.compare`` and ``call_model`` drive it exactly
like the torch model it came from.

The ``export.onnx`` recipe step and ``slimkit export DIR --format onnx`` share :func:`write_onnx`: The float file must reproduce the PyTorch outputs (``atol``; otherwise the export is
wrong and an error is raised). An int8 file legitimately differs; its deviation from the
PyTorch model (max abs difference and mean row cosine) is measured and recorded instead.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from ..core import Context, MethodConfig, Record, Targets, method_config, register_method
from ..core.context import Batch, call_model
from ..core.cpu import int8_isa
from ..core.errors import ArtifactError, MethodError, SlimkitError
from .int8_float import dequantized_int8, int8_modules, nodes_outside
from .ort_quant import (
    describe_ops,
    optimize_transformer,
    quantizable_nodes,
    quantize_dynamic_onnx,
    quantize_static_onnx,
)
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


Int8Mode = Literal["auto", "none", "dynamic", "static"]


@method_config
class OnnxExport(MethodConfig):
    """Write the model as ONNX (float, or int8 for ONNX Runtime) and check it against PyTorch."""

    kind = "export.onnx"
    stage = "export"

    file: str = "model.onnx"
    # "auto": "dynamic" when the model holds slimkit int8 layers (quantize.dynamic/static ran;
    # exactly those layers become int8 in the file), else "none" (float)
    int8: Literal["auto", "none", "dynamic", "static"] = "auto"
    per_channel: bool = True
    # fnmatch patterns of ONNX node names (they follow the torch module names) kept in float
    exclude: tuple[str, ...] = ()
    # ORT's offline transformer fusions: "auto" = on for float HF BERT-like encoders and off
    # for int8 (quantizing the plain graph and letting the ORT session fuse it is faster;
    # measured: docs/quantization.md#figures-behind-design-choices-in-the-code)
    optimize: Literal["auto", "none", "bert"] = "auto"
    calibration: Literal["minmax", "entropy", "percentile"] = "minmax"
    calib_batches: int = 8
    opset: int = 17
    atol: float = 1e-3
    # which tensor of a ModelOutput / dict / tuple output the graph returns: "auto" = logits,
    # else last_hidden_state, else the first tensor; or a key name / tuple index
    output: str = "auto"
    # "auto": an encoder-decoder's encoder (full seq2seq export is refused), else the model
    part: Literal["auto", "model", "encoder"] = "auto"

    def validate(self) -> None:
        self._require(self.file.endswith(".onnx") and "/" not in self.file, "file", "a file name ending in .onnx",
                      self.file)
        self._require(bool(self.output), "output", "'auto', an output name or a tuple index", self.output)
        self._require(self.calib_batches >= 1, "calib_batches", "an integer >= 1", self.calib_batches)
        self._require(self.atol > 0, "atol", "a positive float", self.atol)


def bert_shape(model: nn.Module) -> tuple[int, int] | None:
    """``(num_heads, hidden_size)`` of an HF BERT-like encoder inside ``model``, else None.

    None too when ``slimkit.attention`` converted its attention: ORT's optimizer has no
    ``Attention`` pattern to fuse there, so ``optimize="auto"`` exports the plain graph.
    """
    if any(getattr(m, "converted_attention", False) for m in model.modules()):
        return None
    for m in model.modules():
        cfg = getattr(m, "config", None)
        if cfg is not None and getattr(cfg, "model_type", None) in ("bert", "roberta", "distilbert", "xlm-roberta"):
            return int(cfg.num_attention_heads), int(cfg.hidden_size)
    return None


def _converted_attention(model: nn.Module) -> bool:
    from ..attention.base import ConvertedAttention

    return any(isinstance(m, ConvertedAttention) for m in model.modules())


def write_onnx(model: nn.Module, example_inputs: Batch, dest: str | os.PathLike[str], *, int8: Int8Mode = "auto",
               per_channel: bool = True, exclude: tuple[str, ...] = (), optimize: str = "auto",
               calib: list[Batch] | None = None, calibration: str = "minmax", opset: int = 17,
               atol: float = 1e-3, output: str = "auto", part: Part = "auto") -> dict[str, Any]:
    """Export ``model`` to ``dest`` (float or int8) and return what was done and measured.

    ``output`` / ``part`` choose the tensor and the module exported (see :func:`~.view.export_view`);
    the checks compare that same view of the PyTorch model.

    A model holding slimkit int8 layers is exported through their dequantized float
    equivalents (:mod:`.int8_float`): the float graph is checked against those, and
    ``int8="auto"`` makes exactly those layers dynamic int8 in the file; the file's deviation
    from the int8 PyTorch model is recorded.
    """
    from ..quantize.int8_recurrent import refuse_unexportable

    refuse_unexportable(model, "onnx")  # int8 LSTM/GRU: a clear refusal, not an exporter trace
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    view, example_inputs = export_view(model, example_inputs, output=output, part=part)
    int8_names = int8_modules(model)
    if int8 == "auto":
        int8 = "dynamic" if int8_names else "none"
    if optimize == "auto":  # a converted attention (attention.*) is no pattern ORT's BERT fusion knows
        shape = bert_shape(model) if int8 == "none" and not _converted_attention(model) else None
    else:
        shape = None if optimize == "none" else bert_shape(model) or (12, 384)
    info: dict[str, Any] = {"file": dest.name, "int8": int8, "inputs": list(view.names), "output": output}
    if view.prefix:
        info["part"] = view.prefix
    if int8_names:
        info["int8_layers_in_model"] = len(int8_names)
    with tempfile.TemporaryDirectory() as tmp, dequantized_int8(model):
        plain = export_onnx(view, example_inputs, Path(tmp) / "plain.onnx", opset=opset)
        info["max_abs_diff_float"] = check_onnx(plain, view, [example_inputs], atol=atol)
        src = plain
        if shape is not None:
            src = Path(tmp) / "fused.onnx"
            info["fusions"] = optimize_transformer(plain, src, num_heads=shape[0], hidden_size=shape[1])
            info["max_abs_diff_float"] = check_onnx(src, view, [example_inputs], atol=atol)
        if int8 == "none":
            os.replace(src, dest)
        elif int8 == "dynamic":
            skip = tuple(exclude)
            if int8_names:  # only the layers the model already has in int8
                skip += tuple(nodes_outside(quantizable_nodes(src), int8_names))
            info["int8_nodes"] = len(quantize_dynamic_onnx(src, dest, per_channel=per_channel, exclude=skip))
        else:
            if not calib:
                raise MethodError("static int8 export needs calibration batches (Context.calib_data or --task)")
            info["int8_nodes"] = len(quantize_static_onnx(src, dest, calib, per_channel=per_channel,
                                                          method=calibration, exclude=exclude))  # type: ignore[arg-type]
    if int8 != "none" or int8_names:  # against the real (int8) PyTorch model
        info["int8_isa"] = int8_isa().to_dict()  # ORT sessions add x64quantprecision where it has no VNNI
        info.update(output_deviation(dest, view, example_inputs))
    info["ops"] = describe_ops(dest)
    info["bytes"] = dest.stat().st_size
    return info


def output_deviation(path: Path, model: nn.Module, batch: Batch) -> dict[str, float]:
    """Max abs difference and mean row cosine between the ONNX file's and the model's outputs."""
    return deviation(OrtModel(path), model, batch)


def deviation(runtime: nn.Module, model: nn.Module, batch: Batch) -> dict[str, float]:
    """Max abs difference and mean row cosine between a runtime's and the float model's outputs.

    ``model`` is compared through its default :class:`~.view.ExportView` (one output tensor)
    unless it is a view already.
    """
    if not isinstance(model, ExportView):
        model, batch = export_view(model, batch)
    with torch.no_grad():
        was = model.training
        model.eval()
        ref = call_model(model, batch).float()
        model.train(was)
        got = call_model(runtime, batch).float()
    cos = nn.functional.cosine_similarity(got.flatten(1).double(), ref.flatten(1).double())
    return {"max_abs_diff": float((got - ref).abs().max()), "mean_cosine": float(cos.mean())}


def export_dir(ctx: Context, kind: str, file: str) -> Path:
    """The folder an export step writes into (``ctx.extras["export_dir"]``, set by ``slimkit compress``)."""
    out_dir = ctx.extras.get("export_dir")
    if out_dir is None:
        raise MethodError(f"{kind} needs Context.extras['export_dir'], the folder to write {file} into")
    return Path(out_dir)


@register_method(OnnxExport)
def onnx_export(model: nn.Module, config: OnnxExport, targets: Targets, ctx: Context) -> Record:
    out_dir = export_dir(ctx, config.kind, config.file)
    batch = ctx.need("example_inputs", config.kind)
    calib = list(ctx.calib_data)[: config.calib_batches] if (config.int8 == "static" and ctx.calib_data) else None
    info = write_onnx(model, batch, out_dir / config.file, int8=config.int8, per_channel=config.per_channel,
                      exclude=config.exclude, optimize=config.optimize, calib=calib, calibration=config.calibration,
                      opset=config.opset, atol=config.atol, output=config.output, part=config.part)
    summary = {k: info[k] for k in ("file", "int8", "bytes", "max_abs_diff_float", "part") if k in info}
    if "mean_cosine" in info:
        summary["mean_cosine"] = info["mean_cosine"]
    return Record(kind=config.kind, data=info, summary=summary)
