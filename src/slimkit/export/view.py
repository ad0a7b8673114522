"""The one view of a model that both exporters and the output checks run: named tensor
inputs in, one tensor out, no KV cache.

Hugging Face models return a ``ModelOutput`` (a dict of tensors, caches and ``None``
fields), decoders build a KV cache unless told not to, and encoder-decoders need decoder
inputs a served encoder never sees. An exporter needs a graph from a fixed set of named
tensors to one tensor, and the checks must compare exactly what the graph computes, so
:class:`ExportView` is built once per export and handed to ``torch.onnx.export``,
``torch.export`` and :func:`~slimkit.export.onnx.deviation` alike.

Its ``forward`` has an explicit signature (the batch's input names): the TorchScript ONNX
exporter pads missing positional parameters with their defaults, which on HF models
(whose decorated ``forward`` also injects ``use_cache`` from the config) raised "got
multiple values for argument 'use_cache'"; an explicit signature leaves nothing to pad,
and every input reaches the model by keyword.
"""
from __future__ import annotations

import inspect
from typing import Any, Literal

import torch
from torch import nn

from ..core.context import Batch, batch_args, forward_params, select_output
from ..core.errors import MethodError

Part = Literal["auto", "model", "encoder"]


def is_encoder_decoder(model: nn.Module) -> bool:
    """Whether ``model`` is a full HF encoder-decoder (BART, T5, Whisper, ...): it needs decoder inputs."""
    cfg = getattr(model, "config", None)
    return (bool(getattr(cfg, "is_encoder_decoder", False)) and callable(getattr(model, "get_encoder", None))
            and "decoder_input_ids" in forward_params(model))


def select_part(model: nn.Module, part: Part) -> tuple[nn.Module, str]:
    """The module to export and its qualified name in ``model`` ("" for the model itself).

    ``auto``: an encoder-decoder's encoder, anything else whole. A full encoder-decoder
    (autoregressive decoding with a cache) is not one graph from the encoder's inputs, so
    ``part="model"`` on one is refused rather than exported with made-up decoder inputs.
    """
    seq2seq = is_encoder_decoder(model)
    if part == "model" or (part == "auto" and not seq2seq):
        if seq2seq:
            raise MethodError(f"{type(model).__name__} is an encoder-decoder: exporting the full model (decoder and "
                              "generation loop) is not supported; export its encoder (part: encoder)")
        return model, ""
    if part not in ("auto", "encoder"):
        raise MethodError(f"unknown part {part!r}; expected auto, model or encoder")
    get = getattr(model, "get_encoder", None)
    enc = get() if callable(get) else None
    if not isinstance(enc, nn.Module) or enc is model:
        raise MethodError(f"{type(model).__name__} has no separate encoder to export (part: encoder)")
    name = next((n for n, m in model.named_modules() if m is enc), None)
    if name is None:
        raise MethodError(f"{type(model).__name__}.get_encoder() is not one of its submodules")
    return enc, name


class ExportView(nn.Module):
    """``forward(<input names>) -> tensor``: ``inner`` called by keyword (or positionally for
    a positional batch) with ``fixed`` extra keywords, its output reduced by
    :func:`~slimkit.core.context.select_output`. Build it with :func:`export_view`."""

    def __init__(self, inner: nn.Module, names: tuple[str, ...], *, keyword: bool, output: str = "auto",
                 fixed: dict[str, Any] | None = None, prefix: str = "", ones_mask: bool = False) -> None:
        super().__init__()
        self.inner = inner
        self.names = names
        self.keyword = keyword
        self.output = output
        self.fixed = dict(fixed or {})
        self.prefix = prefix  # qualified name of ``inner`` in the model the view was built from
        self.ones_mask = ones_mask  # pass attention_mask = ones_like(input_ids) (see export_view)
        self.training = inner.training  # mirror the model's flag without touching its submodules

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        if len(args) > len(self.names):
            raise MethodError(f"the exported model takes {len(self.names)} inputs {list(self.names)}, got {len(args)}")
        named = {**dict(zip(self.names, args)), **kwargs}
        if self.ones_mask:
            named["attention_mask"] = torch.ones_like(named["input_ids"])  # [B, T]: every token attended
        if self.keyword:
            out = self.inner(**named, **self.fixed)
        else:
            out = self.inner(*(named[n] for n in self.names), **self.fixed)
        return select_output(out, self.output)

    def module_name(self, name: str) -> str:
        """The name in this view of the module called ``name`` in the original model."""
        if self.prefix and name != self.prefix and not name.startswith(self.prefix + "."):
            raise MethodError(f"module {name!r} is outside the exported part {self.prefix!r}")
        rest = name[len(self.prefix):].lstrip(".") if self.prefix else name
        return f"inner.{rest}" if rest else "inner"


def export_view(model: nn.Module, example_inputs: Batch, *, output: str = "auto", part: Part = "auto",
                use_cache: bool = False) -> tuple[ExportView, Batch]:
    """An :class:`ExportView` of ``model`` for ``example_inputs`` and the batch to trace it with.

    A dict batch's tensors become the named inputs (its other entries, e.g. flags, are
    passed as constants; the batch returned is the dict of tensors); a tensor / tuple
    batch's items become ``input`` / ``input_i`` (the batch returned is the tuple).
    A model whose ``forward`` takes ``use_cache`` gets ``use_cache=False`` unless the
    batch or ``use_cache`` says otherwise, so a decoder's graph holds no KV cache outputs.
    """
    inner, prefix = select_part(model, part)
    args, kwargs = batch_args(example_inputs)
    if kwargs:
        tensors = {k: v for k, v in kwargs.items() if isinstance(v, torch.Tensor)}
        fixed = {k: v for k, v in kwargs.items() if not isinstance(v, torch.Tensor)}
        names, batch, keyword = tuple(tensors), tensors, True
    else:
        if not all(isinstance(a, torch.Tensor) for a in args):
            raise MethodError("positional example inputs must all be tensors (give a dict batch for other arguments)")
        names = ("input",) if len(args) == 1 else tuple(f"input_{i}" for i in range(len(args)))
        fixed, keyword = {}, False
        batch = tuple(args)  # traced positionally: a torch.export program is called as it was traced
    if not names:
        raise MethodError("the example inputs hold no tensor to export the model with")
    params = forward_params(inner)
    if "use_cache" in params:
        fixed.setdefault("use_cache", use_cache)
    # Without a mask (and without a cache) HF decoders look for packed sequences in the
    # position ids with aten::diff, which ONNX has no operator for; an all-ones mask is what
    # "no mask" means, so the view passes one and the graph gains a ConstantOfShape.
    ones_mask = keyword and "input_ids" in names and "attention_mask" not in names and "attention_mask" in params
    view = _with_signature(names)(inner, names, keyword=keyword, output=output, fixed=fixed, prefix=prefix,
                                  ones_mask=ones_mask)
    return view, batch


def _with_signature(names: tuple[str, ...]) -> type[ExportView]:
    """A subclass of :class:`ExportView` whose ``forward`` declares exactly ``names``
    (``torch.export`` binds inputs and the ONNX exporter pads defaults by this signature)."""
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    sig = inspect.Signature([inspect.Parameter("self", kind), *(inspect.Parameter(n, kind) for n in names)])

    def forward(self: ExportView, *args: Any, **kwargs: Any) -> torch.Tensor:
        return ExportView.forward(self, *args, **kwargs)

    forward.__signature__ = sig  # type: ignore[attr-defined]
    return type("ExportView", (ExportView,), {"forward": forward, "__module__": __name__})
