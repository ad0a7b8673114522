"""Write a model as an ONNX artifact (float or int8 for ONNX Runtime) and check it: the
``export.onnx`` recipe step and ``slimkit export DIR --format onnx`` share :func:`write_onnx`.

The float file must reproduce the PyTorch outputs (``atol``; otherwise the export is
wrong and an error is raised). An int8 file legitimately differs; its deviation from the
PyTorch model (max abs difference and mean row cosine) is measured and recorded instead.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ..core import Context, MethodConfig, MethodError, Record, Targets, method_config, register_method
from ..core.context import Batch, call_model
from ..core.cpu import int8_isa
from .int8_float import dequantized_int8, int8_modules, nodes_outside
from .onnx import OrtModel, check_onnx, export_onnx
from .ort_quant import (describe_ops, optimize_transformer, quantizable_nodes, quantize_dynamic_onnx,
                        quantize_static_onnx)
from .view import ExportView, Part, export_view

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
    # for int8 (quantizing the plain graph and letting the ORT session fuse it is faster:
    # 1.14-1.33x over the offline-fused int8 graph on MiniLM-L6 at 32 x 128, measured)
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
    """``(num_heads, hidden_size)`` of an HF BERT-like encoder inside ``model``, else None."""
    for m in model.modules():
        cfg = getattr(m, "config", None)
        if cfg is not None and getattr(cfg, "model_type", None) in ("bert", "roberta", "distilbert", "xlm-roberta"):
            return int(cfg.num_attention_heads), int(cfg.hidden_size)
    return None


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
    if optimize == "auto":
        shape = bert_shape(model) if int8 == "none" else None
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
