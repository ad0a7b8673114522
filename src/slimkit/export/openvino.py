"""OpenVINO: convert a model (through slimkit's ONNX export), quantize it with NNCF, serve it.

:class:`OvModel` is an ``nn.Module`` whose ``forward`` runs an OpenVINO CPU compiled model,
so the zoo tasks (``Task.evaluate``), ``measure.compare`` and ``call_model`` drive it exactly
like the torch model it came from (as :class:`~.onnx.OrtModel` does for ONNX Runtime).

Conversion goes through the ONNX file of :func:`~.onnx.export_onnx` (``ov.convert_model``
reads it): the same graph view (one output tensor, an encoder-decoder's encoder), the same
input names and the same dynamic batch / sequence axes as the ONNX Runtime artifacts, and
slimkit int8 layers exported through their dequantized float twins.

:func:`quantize_ov` is NNCF post-training quantization of the OpenVINO model (int8 weights
and activations, ranges from calibration batches; ``transformer=True`` selects NNCF's
transformer scheme, which keeps LayerNorm / softmax / GELU inputs in float).

Low-bit embedding tables (``quantize.embedding``) are converted as float tables holding the
same dequantized values: their bit unpacking has no ONNX export (uint8 bitwise ops), and a
table lookup costs next to nothing at run time, but the file keeps the tables in fp32.

:func:`write_openvino` writes the IR (``model.xml`` + ``model.bin``) of the ``export.openvino``
recipe step and of ``slimkit export DIR --format openvino``: NNCF int8 (default) or fp32.

OpenVINO is optional (``pip install 'slimkit[openvino]'``): without it every entry point
raises a :class:`~slimkit.core.errors.MethodError` that says so.
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
from ..core.context import Batch, batch_args
from ..core.errors import ArtifactError, MethodError, SlimkitError

INSTALL_HINT = "pip install 'slimkit[openvino]' (openvino and nncf)"


def available() -> bool:
    """Whether OpenVINO can be imported here (benchmarks use it to write a "not installed" row)."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def _ov() -> Any:
    try:
        import openvino as ov
    except ImportError as e:
        raise MethodError(f"the OpenVINO backend needs openvino: {INSTALL_HINT}") from e
    return ov


def _nncf() -> Any:
    try:
        import nncf
    except ImportError as e:
        raise MethodError(f"OpenVINO int8 quantization needs nncf: {INSTALL_HINT}") from e
    return nncf


def convert_ov(source: nn.Module | str | os.PathLike[str], example_inputs: Batch | None = None, **onnx_kw: Any) -> Any:
    """An ``openvino.Model`` from an ONNX file, or from a torch model exported to ONNX first.

    ``onnx_kw`` go to :func:`~.onnx.export_onnx` (``output``, ``part``, ``dynamic_batch``...);
    a torch model needs ``example_inputs``. Slimkit int8 layers are exported through their
    dequantized float twins (:mod:`.int8_float`), as for ONNX.
    """
    ov = _ov()
    if isinstance(source, nn.Module):
        from .int8_float import dequantized_int8
        from .onnx import export_onnx

        if example_inputs is None:
            raise MethodError("converting a torch model to OpenVINO needs example inputs")
        with tempfile.TemporaryDirectory() as tmp, dequantized_int8(source), float_tables(source):
            path = export_onnx(source, example_inputs, Path(tmp) / "model.onnx", **onnx_kw)
            return _read(ov, path)
    path = Path(source)
    if not path.is_file():
        raise ArtifactError(f"{path} not found")
    return _read(ov, path)


class _FloatTable(nn.Module):
    """A low-bit table's dequantized rows as a float lookup (with its trim remap, if any)."""

    def __init__(self, table: nn.Module) -> None:
        super().__init__()
        self.weight = nn.Parameter(table.dequantized().detach(), requires_grad=False)  # [R, H]
        self.remap = table.remap if table.meta["trimmed"] else None

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.remap[ids] if self.remap is not None else ids
        return nn.functional.embedding(rows, self.weight)  # [..., H]


@contextlib.contextmanager
def float_tables(model: nn.Module) -> Iterator[list[str]]:
    """Swap every ``QuantEmbedding`` in ``model`` for a float lookup of its dequantized rows, for
    the duration; yields the names swapped."""
    from ..core.modules import swap_module as swap
    from ..quantize.embedding import QuantEmbedding

    found = [(n, m) for n, m in model.named_modules() if isinstance(m, QuantEmbedding)]
    for n, m in found:
        swap(model, n, _FloatTable(m))
    try:
        yield [n for n, _ in found]
    finally:
        for n, m in found:
            swap(model, n, m)


def _read(ov: Any, path: Path) -> Any:
    try:
        return ov.convert_model(str(path))
    except Exception as exc:  # the frontends raise their own types for unsupported ops
        raise MethodError(f"OpenVINO could not convert {path.name}: {exc}") from exc


def feeds_for(model: Any, batch: Batch) -> dict[str, np.ndarray]:
    """The OpenVINO input dict (name -> numpy in the declared dtype) for one slimkit batch."""
    names = [i.get_any_name() for i in model.inputs]
    args, kwargs = batch_args(batch)
    return _named_arrays(names, _ov_dtypes(model), args, kwargs, "OpenVINO model")


def quantize_ov(model: Any, calib: Sequence[Batch], *, transformer: bool = False, subset_size: int | None = None,
                fast_bias_correction: bool = True) -> Any:
    """NNCF post-training int8 quantization of an ``openvino.Model`` on ``calib`` batches.

    Every batch is one NNCF sample, fed whole; ``subset_size`` (default: all of them) is the
    number of batches NNCF draws statistics from. ``transformer=True`` is NNCF's
    ``ModelType.TRANSFORMER`` scheme (for BERT-like encoders).
    """
    nncf = _nncf()
    if not calib:
        raise MethodError("OpenVINO int8 quantization needs calibration batches")
    items = [feeds_for(model, b) for b in calib]
    kw: dict[str, Any] = {"subset_size": subset_size or len(items), "fast_bias_correction": fast_bias_correction}
    if transformer:
        kw["model_type"] = nncf.ModelType.TRANSFORMER
    try:
        return nncf.quantize(model, nncf.Dataset(items), **kw)
    except SlimkitError:
        raise
    except Exception as exc:  # NNCF raises many types for graphs it cannot handle
        raise MethodError(f"NNCF quantization failed: {type(exc).__name__}: {exc}") from exc


def save_ov(model: Any, path: str | os.PathLike[str]) -> Path:
    """Write ``model`` as ``path`` (``.xml``) plus its ``.bin`` weights, without fp16 weight compression
    (OpenVINO's default would halve float weights: the file must compute what was measured)."""
    ov = _ov()
    path = Path(path)
    if path.suffix != ".xml":
        raise MethodError(f"an OpenVINO model is written as a .xml file (with a .bin beside it), got {path.name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(path), compress_to_fp16=False)
    return path


def ov_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes of an OpenVINO model on disk: the ``.xml`` graph and its ``.bin`` weights."""
    path = Path(path)
    return path.stat().st_size + path.with_suffix(".bin").stat().st_size


class OvModel(nn.Module):
    """An OpenVINO CPU compiled model behind an ``nn.Module`` interface.

    ``source`` is an ``openvino.Model`` or a ``.xml`` / ``.onnx`` file. ``forward`` takes the
    same positional / keyword tensors as the exported model (a dict batch's keys are the
    graph's input names) and returns the first output as a float torch tensor. It has no
    parameters, so task code places its batches on the CPU.

    ``threads``: CPU inference threads (default: torch's count, as ORT sessions).
    ``precision``: the CPU plugin's ``INFERENCE_PRECISION_HINT`` for float ops, ``f32`` by
    default: on CPUs with AVX512-BF16 or AMX OpenVINO would otherwise run float ops in bf16,
    which changes the outputs of a model measured as fp32.
    """

    def __init__(self, source: Any, threads: int | None = None, *, precision: str = "f32",
                 latency_hint: bool = True) -> None:
        super().__init__()
        ov = _ov()
        self.path: Path | None = None
        if isinstance(source, (str, os.PathLike)):
            self.path = Path(source)
            if not self.path.is_file():
                raise ArtifactError(f"{self.path} not found")
            source = ov.Core().read_model(str(self.path))
        self.threads = threads or torch.get_num_threads()
        config: dict[str, Any] = {"INFERENCE_NUM_THREADS": self.threads, "INFERENCE_PRECISION_HINT": precision}
        if latency_hint:
            config["PERFORMANCE_HINT"] = "LATENCY"
        try:
            self.compiled = ov.Core().compile_model(source, "CPU", config)
        except Exception as exc:
            raise MethodError(f"OpenVINO could not compile {self._label()} for CPU: {exc}") from exc
        self.request = self.compiled.create_infer_request()
        self.input_names = [i.get_any_name() for i in self.compiled.inputs]
        self._dtypes = _ov_dtypes(self.compiled)

    def _label(self) -> str:
        return self.path.name if self.path is not None else "the model"

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        feeds = _named_arrays(self.input_names, self._dtypes, args, kwargs, self._label())
        out = self.request.infer(feeds)[self.compiled.output(0)]
        return torch.from_numpy(np.array(out, copy=True)).float()  # the request reuses its output buffer

    def extra_repr(self) -> str:
        return f"path={str(self.path)!r}, inputs={self.input_names}, threads={self.threads}"


def _ov_dtypes(model: Any) -> dict[str, Any]:
    out = {}
    for i in model.inputs:
        et = i.get_element_type()  # a dynamic element type has no numpy dtype: feed float32
        out[i.get_any_name()] = np.float32 if et.is_dynamic() else et.to_dtype()
    return out


def _named_arrays(names: list[str], dtypes: dict[str, Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                  label: str) -> dict[str, np.ndarray]:
    """Positional and keyword tensors as a name -> numpy dict in the graph's dtypes (checked like ORT feeds)."""
    if len(args) > len(names):
        raise MethodError(f"{label} takes {len(names)} inputs, got {len(args)}")
    named = dict(zip(names, args))
    unknown = set(kwargs) - set(names)
    if unknown:
        raise MethodError(f"{label} has no input(s) {sorted(unknown)}; inputs: {names}")
    named.update(kwargs)
    missing = [n for n in names if n not in named]
    if missing:
        raise MethodError(f"{label}: missing input(s) {missing}; inputs: {names}")
    out = {}
    for name in names:
        value = named[name]
        arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        out[name] = np.ascontiguousarray(arr.astype(dtypes[name], copy=False))
    return out


def write_openvino(model: nn.Module, example_inputs: Batch, dest: str | os.PathLike[str], *, int8: str = "static",
                   calib: Sequence[Batch] | None = None, transformer: bool | None = None, output: str = "auto",
                   part: str = "auto", atol: float = 1e-3) -> dict[str, Any]:
    """Write ``model`` as an OpenVINO IR (``dest`` .xml + .bin), fp32 (``int8="none"``) or NNCF int8
    (``"static"``, calibrated on ``calib``), and return what was done and measured.

    The fp32 IR must reproduce the PyTorch outputs within ``atol`` (an :class:`ArtifactError`
    otherwise); the int8 IR's deviation (max abs difference, mean cosine) is recorded.
    ``transformer=None`` picks NNCF's transformer scheme for HF BERT-like encoders.
    """
    from .onnx import bert_shape, deviation
    from .view import export_view

    if int8 not in ("none", "static"):
        raise MethodError(f"OpenVINO export: int8 {int8!r}: expected none or static (NNCF post-training int8)")
    if int8 == "static" and not calib:
        raise MethodError("OpenVINO int8 export needs calibration batches (Context.calib_data or --task)")
    dest = Path(dest)
    view, example_inputs = export_view(model, example_inputs, output=output, part=part)  # type: ignore[arg-type]
    ov_model = convert_ov(view, example_inputs)
    info: dict[str, Any] = {"file": dest.name, "int8": int8, "inputs": list(view.names), "output": output}
    if view.prefix:
        info["part"] = view.prefix
    if int8 == "none":
        save_ov(ov_model, dest)
        info.update(deviation(OvModel(dest), view, example_inputs))
        if info["max_abs_diff"] > atol:
            dest.unlink()
            dest.with_suffix(".bin").unlink()
            raise ArtifactError(f"{dest.name}: OpenVINO output differs from the PyTorch model by "
                                f"{info['max_abs_diff']:.3g} > atol {atol:g}")
    else:
        if transformer is None:
            transformer = bert_shape(model) is not None
        save_ov(quantize_ov(ov_model, list(calib or []), transformer=transformer), dest)
        info["nncf_scheme"] = "transformer" if transformer else "default"
        info.update(deviation(OvModel(dest), view, example_inputs))
    info["bytes"] = ov_bytes(dest)
    return info


@method_config
class OpenvinoExport(MethodConfig):
    """Write the model as an OpenVINO IR (``model.xml`` + ``model.bin``) for the OpenVINO CPU runtime:
    NNCF post-training int8 (``int8: static``, calibrated on the context's calibration batches) or fp32."""

    kind = "export.openvino"
    stage = "export"

    file: str = "model.xml"
    int8: Literal["static", "none"] = "static"
    calib_batches: int = 8
    # NNCF's transformer scheme (LayerNorm / softmax / GELU inputs kept float): "auto" = on for
    # HF BERT-like encoders
    scheme: Literal["auto", "transformer", "default"] = "auto"
    output: str = "auto"
    part: Literal["auto", "model", "encoder"] = "auto"
    atol: float = 1e-3

    def validate(self) -> None:
        self._require(self.file.endswith(".xml") and "/" not in self.file, "file", "a file name ending in .xml",
                      self.file)
        self._require(bool(self.output), "output", "'auto', an output name or a tuple index", self.output)
        self._require(self.calib_batches >= 1, "calib_batches", "an integer >= 1", self.calib_batches)
        self._require(self.atol > 0, "atol", "a positive float", self.atol)


@register_method(OpenvinoExport)
def openvino_export(model: nn.Module, config: OpenvinoExport, targets: Targets, ctx: Context) -> Record:
    from .onnx import export_dir

    out_dir = export_dir(ctx, config.kind, config.file)
    batch = ctx.need("example_inputs", config.kind)
    calib = list(ctx.calib_data)[: config.calib_batches] if (config.int8 == "static" and ctx.calib_data) else None
    transformer = None if config.scheme == "auto" else config.scheme == "transformer"
    info = write_openvino(model, batch, out_dir / config.file, int8=config.int8, calib=calib, transformer=transformer,
                          output=config.output, part=config.part, atol=config.atol)
    summary = {k: info[k] for k in ("file", "int8", "bytes", "mean_cosine", "part") if k in info}
    return Record(kind=config.kind, data=info, summary=summary)
