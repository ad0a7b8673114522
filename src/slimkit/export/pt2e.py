"""Int8 on PyTorch's own x86 kernels: torchao's PT2E flow with the x86 Inductor quantizer.

``torch.export`` captures the model as an ATen graph; the x86 Inductor quantizer annotates
every Linear/Conv (int8 per-channel symmetric weights; uint8 activations with ranges
observed on calibration batches for ``static``, or computed per call for ``dynamic``);
``convert_pt2e`` turns the annotations into quantize/dequantize pairs, and Inductor, with
*freezing* on, folds the weights and pattern-matches each ``dequant -> linear -> quant``
into one oneDNN int8 kernel (VNNI on this CPU) with bias and elementwise epilogues fused.
Before quantizing, Linears that read the same tensor (attention's Q, K, V) are packed into
one GEMM (:mod:`.graph_passes`): at batch 1 the three small GEMMs are mostly per-kernel
overhead, which one larger GEMM pays once (measured: docs/quantization.md#which-int8-runtime,
"Packed QKV").

Why this backend as well as ONNX Runtime: Inductor fuses the elementwise work (bias, GELU,
residual adds, LayerNorm) into the oneDNN int8 kernels, while ORT runs it as separate
memory-bound kernels; so on transformers static PT2E int8 is faster than ORT's own
per-channel dynamic int8 at large batches and at least as fast at batch 1, and its
calibrated ranges with per-channel weights cost almost no accuracy (measured on
``zoo:minilm-l6`` with ``benchmarks/minilm_int8.py``: docs/quantization.md#which-int8-runtime).

The artifact is the converted program saved with ``torch.export.save`` (``model.pt2``);
:class:`Pt2eModel` loads it and compiles it on first call (once per shape family, and far
slower than a call).
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ..core import Context, MethodConfig, Record, Targets, cpu, method_config, register_method
from ..core.context import Batch, batch_args
from ..core.errors import ArtifactError, MethodError
from ..core.modules import owner_of
from .graph_passes import drop_integer_observers, fuse_sibling_linears
from .int8_float import dequantized_int8
from .view import ExportView, Part, export_view


def _torchao_pt2e() -> Any:
    try:
        from torchao.quantization.pt2e import quantize_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise MethodError("the PT2E int8 backend needs torchao: pip install 'slimkit[int8]'") from e
    return quantize_pt2e, xiq


def max_positions(model: nn.Module, default: int = 4096) -> int:
    """The longest sequence an HF-style model takes (``config.max_position_embeddings``)."""
    for m in model.modules():
        n = getattr(getattr(m, "config", None), "max_position_embeddings", None)
        if isinstance(n, int) and n > 2:
            return n
    return default


def dynamic_shapes_for(batch: Batch, max_seq: int = 4096) -> Any:
    """``torch.export`` dynamic dims: dim 0 of every tensor is the batch; dim 1 of 2-D
    integer tensors (token ids, masks) is the sequence length (up to ``max_seq``). Image
    sizes stay static."""
    b = torch.export.Dim("batch", min=1, max=4096)
    t = torch.export.Dim("seq", min=2, max=max_seq)

    def dims(x: Any) -> dict[int, Any] | None:
        if not isinstance(x, torch.Tensor) or x.dim() == 0:
            return None
        d = {0: b}
        if x.dim() == 2 and not x.is_floating_point():
            d[1] = t
        return d

    args, kwargs = batch_args(batch)
    if kwargs:
        return {k: dims(v) for k, v in kwargs.items()}
    return tuple(dims(a) for a in args)


def _batch_of_two(batch: Batch) -> Batch:
    """``batch`` with every batch-1 tensor repeated to batch 2 (other inputs unchanged)."""
    def two(x: Any) -> Any:
        return x.repeat(2, *([1] * (x.dim() - 1))) if isinstance(x, torch.Tensor) and x.dim() and x.shape[0] == 1 else x

    args, kwargs = batch_args(batch)
    if kwargs:
        return {k: two(v) for k, v in kwargs.items()}
    return tuple(two(a) for a in args) if isinstance(batch, (tuple, list)) else two(batch)


def _shapes(batch: Batch) -> list[tuple[int, ...]]:
    args, kwargs = batch_args(batch)
    return [tuple(x.shape) for x in (*args, *kwargs.values()) if isinstance(x, torch.Tensor)]


def has_token_inputs(batch: Batch) -> bool:
    """Whether any input is a 2-D integer tensor (token ids / attention mask)."""
    args, kwargs = batch_args(batch)
    return any(isinstance(x, torch.Tensor) and x.dim() == 2 and not x.is_floating_point()
               for x in (*args, *kwargs.values()))


def _quantizer(xiq: Any, static: bool, float_modules: Sequence[str] = (), weight_qmax: int = 127) -> Any:
    class Quantizer(xiq.X86InductorQuantizer):
        # torchao 0.18 fails on HF's GELU modules (an empty source partition) when it
        # looks for Linear->GELU pairs; without the pair annotation each Linear is still
        # quantized and Inductor fuses the GELU into the int8 kernel's epilogue anyway.
        def _annotate_linear_unary(self, *args: Any, **kwargs: Any) -> None:
            return None

    q = Quantizer()
    config = xiq.get_default_x86_inductor_quantization_config(is_dynamic=not static)
    if weight_qmax < 127:
        # no VNNI: oneDNN adds pairs of u8 x s8 products into int16; codes in [-63, 63] cannot saturate
        weight = dataclasses.replace(config.weight, quant_min=-weight_qmax, quant_max=weight_qmax)
        config = dataclasses.replace(config, weight=weight)
    q.set_global(config)
    for name in float_modules:
        q.set_module_name_qconfig(name, None)  # this module's ops stay float
    return q


def quantize_pt2e(model: nn.Module, example_inputs: Batch, calib: Iterable[Batch] | None = None, *,
                  static: bool = True, dynamic_shapes: bool | None = None,
                  fuse_linears: bool = True, float_modules: Sequence[str] = (), output: str = "auto",
                  part: Part = "auto", weight_qmax: int | None = None) -> torch.export.ExportedProgram:
    """The int8 program of ``model`` (a new object; ``model`` is not changed).

    ``static`` needs ``calib`` (a few batches like the ones served; they may vary in batch
    size and, for token inputs, length). ``dynamic_shapes`` exports with a symbolic batch
    (and sequence) dimension so one program serves every shape; the default (None) turns
    it on for token models only: with torch 2.13, Inductor's int8 Conv lowering fails on a
    symbolic batch (a channels-last stride assertion), so an image program serves the
    shape of ``example_inputs``. ``fuse_linears`` packs Linears that read the same tensor
    (attention's Q, K, V) into one GEMM first (:func:`~.graph_passes.fuse_sibling_linears`).
    ``float_modules`` (qualified module names) stay float: the sensitive layers an int8
    program can leave out (a fused Q/K/V GEMM belongs to the first of its projections).

    The program is that of :func:`~.view.export_view` (``output`` picks the tensor of a
    ``ModelOutput`` / dict / tuple output, ``part`` an encoder-decoder's encoder, no KV
    cache); it takes the inputs by the example batch's names. ``model`` may be such a view.
    ``weight_qmax``: weight codes in ``[-qmax, qmax]``; None = what this CPU's int8 kernels
    take without saturating (127 with VNNI, 63 without; :mod:`slimkit.core.cpu`).
    """
    quantize_pt2e_mod, xiq = _torchao_pt2e()
    weight_qmax = cpu.weight_qmax() if weight_qmax is None else weight_qmax
    calib = list(calib) if calib is not None else []
    if static and not calib:
        raise MethodError("static PT2E int8 needs calibration batches (Context.calib_data or --task)")
    if not isinstance(model, ExportView):
        model, example_inputs = export_view(model, example_inputs, output=output, part=part)
        float_modules = [model.module_name(n) for n in float_modules]
    calib = [_named(model, b) for b in calib]
    example_inputs = _named(model, example_inputs)
    was = model.training
    model.eval()
    args, kwargs = batch_args(example_inputs)
    if dynamic_shapes is None:
        dynamic_shapes = has_token_inputs(example_inputs)
    if dynamic_shapes:
        # torch.export specialises a size-1 dimension to the constant 1, so a batch-1 example
        # cannot carry a symbolic batch: trace with the example repeated to batch 2
        example_inputs = _batch_of_two(example_inputs)
        args, kwargs = batch_args(example_inputs)
    ds = dynamic_shapes_for(example_inputs, max_positions(model)) if dynamic_shapes else None
    if ds is None:
        shape = _shapes(example_inputs)
        odd = [_shapes(b) for b in calib if _shapes(b) != shape]
        if odd:
            raise MethodError(f"a fixed-shape program for inputs {shape} cannot calibrate on batches of shapes {odd[0]}; "
                              "give calibration batches of the example shape")
    try:
        with torch.no_grad():
            graph = torch.export.export(model, args, kwargs, dynamic_shapes=ds).module()
            if fuse_linears:
                fuse_sibling_linears(graph)
            prepared = quantize_pt2e_mod.prepare_pt2e(graph, _quantizer(xiq, static, float_modules, weight_qmax))
            drop_integer_observers(prepared)  # int tensors (RoBERTa's position ids) stay exact
            # dynamic int8 still needs one forward: the weight observers record the weight
            # ranges when they run; unrun, convert quantizes the weights with meaningless
            # scales, which wrecks accuracy
            # (measured: docs/quantization.md#figures-behind-design-choices-in-the-code)
            for batch in calib if static else (calib[:1] or [example_inputs]):
                a, k = batch_args(batch)
                prepared(*a, **k)
            converted = drop_unused_attributes(quantize_pt2e_mod.convert_pt2e(prepared))
            return torch.export.export(converted, args, kwargs, dynamic_shapes=ds)
    finally:
        model.train(was)


def _named(view: ExportView, batch: Batch) -> Batch:
    """``batch`` as the traced program takes it: a keyword view's named tensors (other keys
    dropped, as the view holds them as constants), a positional view's batch unchanged."""
    if not view.keyword:
        return batch
    _, kwargs = batch_args(batch)
    missing = [n for n in view.names if n not in kwargs]
    if missing:
        raise MethodError(f"a batch lacks input(s) {missing} that the exported program takes ({list(view.names)})")
    return {n: kwargs[n] for n in view.names}


def drop_unused_attributes(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Delete parameters and buffers no graph node reads any more.

    After ``convert_pt2e`` the Linear weights live on as int8 constants, but the float
    originals stay registered on the module; left there, the ``.pt2`` file would carry
    both, and the unused float weights can be most of the file
    (measured: docs/quantization.md#figures-behind-design-choices-in-the-code).
    """
    used = {str(n.target) for n in gm.graph.nodes if n.op == "get_attr"}
    names = [n for n, _ in gm.named_parameters()] + [n for n, _ in gm.named_buffers()]
    for name in names:
        if name in used:
            continue
        owner, attr = owner_of(gm, name)
        owner._parameters.pop(attr, None)
        owner._buffers.pop(attr, None)
    return gm


def save_pt2(program: torch.export.ExportedProgram, path: str | os.PathLike[str]) -> Path:
    """Write ``program`` as a ``.pt2`` file (``torch.export.save``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(path))
    return path


class Pt2eModel(nn.Module):
    """A PT2E int8 program behind an ``nn.Module`` interface, compiled by Inductor with freezing.

    Takes the same arguments as the exported model. The first call of each new shape
    family compiles (the program is held outside the module tree, so ``.eval()`` and
    ``.parameters()`` see nothing to change). ``cpp_wrapper`` generates the kernel-launch
    code as C++ instead of Python: compiling takes longer, once, and every call saves the
    Python launch overhead, which matters at batch 1
    (measured: docs/quantization.md#figures-behind-design-choices-in-the-code).
    """

    def __init__(self, program: torch.export.ExportedProgram | str | os.PathLike[str], *, compile: bool = True,
                 cpp_wrapper: bool = True) -> None:
        super().__init__()
        if not isinstance(program, torch.export.ExportedProgram):
            path = Path(program)
            if not path.is_file():
                raise ArtifactError(f"{path} not found")
            program = torch.export.load(str(path))
            cpu.warn_if_poorer({"name": "an int8 dot-product CPU", "weight_qmax": program_weight_qmax(program)},
                               f"{path.name}")
        from torch._inductor import config  # imported here, not when slimkit registers its methods

        module = program.module()
        self._fn = [torch.compile(module) if compile else module]  # a list keeps it out of the module tree
        self._inductor = config
        self._config = {"freezing": True, "cpp_wrapper": cpp_wrapper}
        self._seen: set[tuple[Any, ...]] = set()  # input signatures already run (and compiled) under the config

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        # freezing (weights as constants) is what lets Inductor pre-pack the int8 weights
        # and match the oneDNN int8 kernels; it must be set while a shape compiles (passing
        # it as a compile option instead fails on the pre-pack ops under fake tensors).
        # Patching the config costs a measurable share of a small batch-1 call
        # (docs/quantization.md#figures-behind-design-choices-in-the-code), so only calls with an
        # input signature not seen before (the ones that may compile) pay it.
        key = signature(args, kwargs)
        with torch.no_grad():
            if key in self._seen:
                return self._fn[0](*args, **kwargs)
            with self._inductor.patch(self._config):
                out = self._fn[0](*args, **kwargs)
            self._seen.add(key)
            return out


def program_weight_qmax(program: torch.export.ExportedProgram) -> int:
    """The largest weight code range (``quant_max``) of the program's per-channel dequantize ops (0 if none)."""
    qmax = 0
    for n in program.graph.nodes:
        if n.op == "call_function" and "dequantize_per_channel" in str(n.target) and len(n.args) > 5:
            qmax = max(qmax, int(n.args[5]))
    return qmax


def signature(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """Shapes and dtypes of the tensor arguments (what decides whether a compiled program is reused)."""
    def one(v: Any) -> Any:
        return (tuple(v.shape), v.dtype, v.device.type) if isinstance(v, torch.Tensor) else type(v).__name__
    return tuple(one(v) for v in args) + tuple((k, one(v)) for k, v in sorted(kwargs.items()))


def write_pt2e(model: nn.Module, example_inputs: Batch, dest: str | os.PathLike[str], *, static: bool = True,
               calib: Iterable[Batch] | None = None, check: bool = True, fuse_linears: bool = True,
               float_modules: Sequence[str] = (), output: str = "auto", part: Part = "auto",
               weight_bits: Literal["auto", 8, 7] = "auto") -> dict[str, Any]:
    """Quantize ``model``, save ``dest`` and return what was done and measured.

    With ``check``, the saved file is loaded back, compiled and run on ``example_inputs``;
    its deviation from the float model (max abs difference, mean row cosine) is recorded.
    ``output`` / ``part`` choose the tensor and module exported (:func:`~.view.export_view`);
    ``float_modules`` are module names in ``model``.
    """
    from ..quantize.int8_recurrent import refuse_unexportable
    from .onnx import deviation

    refuse_unexportable(model, "pt2e")  # LSTM/GRU: a clear refusal, not torch.export's UserError
    dest = Path(dest)
    view, example_inputs = export_view(model, example_inputs, output=output, part=part)
    qmax, isa = cpu.weight_choice(weight_bits)
    with dequantized_int8(model):  # slimkit int8 layers: traced as their dequantized float twins
        program = quantize_pt2e(view, example_inputs, calib, static=static, fuse_linears=fuse_linears,
                               float_modules=[view.module_name(n) for n in float_modules], weight_qmax=qmax)
    save_pt2(program, dest)
    info: dict[str, Any] = {"file": dest.name, "int8": "static" if static else "dynamic", "bytes": dest.stat().st_size,
                            "float_modules": list(float_modules), "inputs": list(view.names), "output": output,
                            "int8_isa": isa}
    if view.prefix:
        info["part"] = view.prefix
    info["int8_ops"] = sum(1 for n in program.graph.nodes
                           if n.op == "call_function" and "quantize_per_channel" in str(n.target))
    if check:
        info.update(deviation(Pt2eModel(dest), view, example_inputs))
    return info


@method_config
class Pt2eExport(MethodConfig):
    """Write the model as a PT2E int8 program for PyTorch's x86 Inductor backend (``.pt2``).

    ``keep_float``: module-name patterns (fnmatch, or ``re:`` regex) whose ops stay float,
    for layers too sensitive for int8; a pattern that matches nothing is an error.
    """

    kind = "export.pt2e"
    stage = "export"

    file: str = "model.pt2"
    int8: Literal["static", "dynamic"] = "static"
    calib_batches: int = 8
    check: bool = True
    fuse_linears: bool = True
    keep_float: tuple[str, ...] = ()
    # the output tensor and module exported, as for export.onnx (auto: logits, else
    # last_hidden_state, else the first tensor; an encoder-decoder's encoder)
    output: str = "auto"
    part: Literal["auto", "model", "encoder"] = "auto"
    # "auto": 8-bit weight codes with a VNNI int8 dot product, 7-bit without (no int16 saturation)
    weight_bits: Literal["auto", 8, 7] = "auto"

    def validate(self) -> None:
        self._require(self.file.endswith(".pt2") and "/" not in self.file, "file", "a file name ending in .pt2",
                      self.file)
        self._require(bool(self.output), "output", "'auto', an output name or a tuple index", self.output)
        self._require(self.calib_batches >= 1, "calib_batches", "an integer >= 1", self.calib_batches)


@register_method(Pt2eExport)
def pt2e_export(model: nn.Module, config: Pt2eExport, targets: Targets, ctx: Context) -> Record:
    from .onnx import export_dir

    out_dir = export_dir(ctx, config.kind, config.file)
    batch = ctx.need("example_inputs", config.kind)
    static = config.int8 == "static"
    calib = list(ctx.calib_data)[: config.calib_batches] if (static and ctx.calib_data) else None
    float_modules = _matching(model, config.keep_float)
    info = write_pt2e(model, batch, out_dir / config.file, static=static, calib=calib, check=config.check,
                      fuse_linears=config.fuse_linears, float_modules=float_modules, output=config.output,
                      part=config.part, weight_bits=config.weight_bits)
    summary = {k: info[k] for k in ("file", "int8", "bytes", "mean_cosine", "part") if k in info}
    summary["int8_isa"] = info["int8_isa"]["name"]
    return Record(kind=config.kind, data=info, summary=summary)


def _matching(model: nn.Module, patterns: Sequence[str]) -> list[str]:
    """The qualified names of ``model``'s modules that match any of ``patterns`` (read as
    ``Targets`` reads them), in pattern order."""
    out: list[str] = []
    for pat in patterns:
        hit = [n for n, _ in Targets(include=(pat,)).iter(model) if n]
        if not hit:
            raise MethodError(f"export.pt2e keep_float: pattern {pat!r} matches no module")
        out += [n for n in hit if n not in out]
    return out
