"""The shared base of attention conversions: find HF self-attention modules, swap them, replay the swap.

A conversion (``attention.linformer``, ``attention.linear``, ``attention.window``) replaces
only the *attention computation* (scores, softmax, weighted sum) of a trained encoder and
keeps everything else of the HF module it replaces:

- the same projection submodules, as the same objects under the same names (``query`` /
  ``key`` / ``value`` for BERT-family ``*SelfAttention``; ``q_proj`` / ``k_proj`` /
  ``v_proj`` / ``o_proj`` for ViT-style ``*Attention``), so state-dict keys of the trained
  weights do not move and pruning, quantization and low-rank kinds that act on the Linears
  keep working before or after the conversion;
- the attributes other kinds read (``num_attention_heads``, ``attention_head_size`` or
  ``head_dim``, ``all_head_size``, ``scaling``, ``config``, ``is_causal``), so head pruning's
  surgery (:func:`slimkit.prune.surgery.fix_attention`) still recounts heads;
- the forward signature and return convention of transformers 5.24
  (``forward(hidden_states, attention_mask=None, cache=None, **kwargs) -> (context, None)``):
  the second item is the attention map HF returns, which these methods never materialise,
  so ``output_attentions`` returns no map for converted layers (HF's recorder skips None).

Writing a new conversion: subclass :class:`ConvertedAttention`, implement
:meth:`~ConvertedAttention.attend` (``q, k, v`` are ``[B, heads, N, head_dim]``, scaled by
nothing yet; ``key_padding_mask`` is ``[B, N]`` bool, True for real tokens, or None when
nothing is padded; return the context ``[B, heads, N, head_dim]``), :meth:`options` (the
JSON data that rebuilds the module's structure) and :meth:`from_options`; then the handler
is ``return convert(model, targets, kind, lambda i, src, layout: MyAttention(src, layout, ...))``
and the replay ``replay(model, record, MyAttention)``.

Masks: HF hands the module a 4-D mask ``[B, 1, Nq, Nk]`` (additive float for eager, bool
for SDPA) or None; :func:`key_padding_mask` reduces it to which *keys* are real. Only key
padding is honoured (what bidirectional encoders use); causal decoders are refused at
conversion time.
"""
from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from ..core import MethodError, Record, Targets
from ..core.modules import swap_module


@dataclasses.dataclass(frozen=True)
class Layout:
    """Attribute names of one supported family of HF attention modules."""

    family: str  # "bert" (BertSelfAttention and copies) or "vit" (ViTAttention and copies)
    q: str
    k: str
    v: str
    out: str | None  # output projection inside the module (ViT-style); BERT's lives in BertSelfOutput
    head_dim_attr: str  # "attention_head_size" (BERT) or "head_dim" (ViT)
    dropout_attr: str  # BERT: an nn.Dropout module called "dropout"; ViT: a float "attention_dropout"


BERT = Layout("bert", "query", "key", "value", None, "attention_head_size", "dropout")
VIT = Layout("vit", "q_proj", "k_proj", "v_proj", "o_proj", "head_dim", "attention_dropout")
LAYOUTS: dict[str, Layout] = {"bert": BERT, "vit": VIT}
SUPPORTED = ("BERT-family *SelfAttention (query/key/value Linears: BERT, RoBERTa, ELECTRA, MiniLM, ...) and "
             "ViT-style *Attention (q_proj/k_proj/v_proj/o_proj, no position embeddings in forward)")

# a key counts as masked when its additive mask is below this (HF writes finfo.min, older code -10000)
_MASKED_BELOW = -5000.0


def _has_linears(module: nn.Module, names: tuple[str, ...]) -> bool:
    children = dict(module.named_children())
    return all(n in children and hasattr(children[n], "weight") for n in names)


def why_unsupported(module: nn.Module) -> str | None:
    """Why ``module`` (an attention-looking module) cannot be converted, or None when it can."""
    if isinstance(module, ConvertedAttention):
        return f"already converted by {module.kind}"
    cfg = getattr(module, "config", None)
    if getattr(module, "is_causal", False) or getattr(cfg, "is_decoder", False):
        return "causal / decoder attention (only bidirectional encoders are supported)"
    if getattr(cfg, "add_cross_attention", False):
        return "the model has cross-attention layers"
    for attr in ("distance_embedding", "rotary_emb", "relative_attention_bias"):
        if hasattr(module, attr):
            return f"relative / rotary position scores ({attr})"
    try:
        required = [p.name for p in inspect.signature(module.forward).parameters.values()
                    if p.default is inspect.Parameter.empty
                    and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    except (TypeError, ValueError):
        return "its forward signature cannot be read"
    if required != ["hidden_states"]:
        return f"its forward needs {required} (expected hidden_states only)"
    return None


def layout_of(module: nn.Module) -> Layout | None:
    """The :class:`Layout` of a convertible self-attention module, or None."""
    name = type(module).__name__
    heads = getattr(module, "num_attention_heads", None)
    for layout in (BERT, VIT):
        suffix = "SelfAttention" if layout is BERT else "Attention"
        if not name.endswith(suffix) or not isinstance(heads, int):
            continue
        names = (layout.q, layout.k, layout.v) + ((layout.out,) if layout.out else ())
        if _has_linears(module, names) and isinstance(getattr(module, layout.head_dim_attr, None), int):
            return layout if why_unsupported(module) is None else None
    return None


def _looks_like_attention(module: nn.Module) -> bool:
    if isinstance(module, ConvertedAttention):
        return True
    children = dict(module.named_children())
    return type(module).__name__.endswith("Attention") and any(
        n in children for n in ("query", "q_proj", "q_lin", "q", "qkv", "c_attn", "in_proj", "Wqkv"))


def find_attention(model: nn.Module, targets: Targets, kind: str) -> list[tuple[str, nn.Module, Layout]]:
    """``(name, module, layout)`` of every convertible self-attention module ``targets`` select.

    A selected attention-looking module that cannot be converted (causal, relative
    positions, fused qkv, already converted) is a :class:`MethodError` naming it and why,
    and so is a selection with nothing to convert.
    """
    found, refused = [], []
    for name, module in targets.iter(model):
        layout = layout_of(module)
        if layout is not None:
            found.append((name, module, layout))
        elif _looks_like_attention(module):
            reason = why_unsupported(module) or "not a supported layout"
            refused.append(f"{name or '<root>'} ({type(module).__name__}: {reason})")
    if refused:
        raise MethodError(f"{kind}: cannot convert {refused[0]}" + (f" and {len(refused) - 1} more" if refused[1:] else "")
                          + f"; supported: {SUPPORTED}")
    if not found:
        kinds = sorted({type(m).__name__ for _, m in model.named_modules() if type(m).__name__.endswith("Attention")})
        raise MethodError(f"{kind}: {type(model).__name__} has no supported self-attention module among the targets "
                          f"{targets.to_dict()} (attention classes seen: {kinds or 'none'}); supported: {SUPPORTED}")
    return found


def key_padding_mask(attention_mask: Any, batch: int, n: int) -> torch.Tensor | None:
    """``[B, N]`` bool (True = a real key) from the mask HF passes, or None when nothing is masked.

    Accepts HF's 4-D ``[B, 1 | heads, Nq, Nk]`` masks (bool: True = attend; float: additive,
    0 = attend) and plain ``[B, N]`` 0/1 masks. A key is real when any query may attend it,
    which for the bidirectional padding masks of encoders is exactly the padding mask.
    """
    if attention_mask is None:
        return None
    if not isinstance(attention_mask, torch.Tensor):
        raise MethodError(f"converted attention takes a tensor mask, got {type(attention_mask).__name__} "
                          "(flex attention BlockMask is not supported: load the model with "
                          "attn_implementation='eager' or 'sdpa')")
    m = attention_mask
    keep = m if m.dtype == torch.bool else (m > _MASKED_BELOW if m.is_floating_point() else m != 0)
    if keep.dim() == 4:
        keep = keep.any(dim=2).any(dim=1)  # [B, H, Nq, Nk] -> [B, Nk]
    elif keep.dim() == 3:
        keep = keep.any(dim=1)
    if keep.dim() != 2 or keep.shape[-1] != n:
        raise MethodError(f"converted attention got a mask of shape {tuple(attention_mask.shape)} "
                          f"for {batch} sequences of {n} tokens")
    return keep.expand(batch, n)


class ConvertedAttention(nn.Module):
    """A self-attention module with HF's interface whose attention computation is :meth:`attend`.

    Built from the HF module it replaces (``source``): it adopts the source's projection
    modules (same objects, same names) and the attributes other kinds read.
    """

    kind: ClassVar[str] = ""
    # read by export.onnx (no ORT Attention fusion to try) without importing this package
    converted_attention: ClassVar[bool] = True

    def __init__(self, source: nn.Module, layout: Layout) -> None:
        super().__init__()
        self.layout = layout
        for name in (layout.q, layout.k, layout.v) + ((layout.out,) if layout.out else ()):
            setattr(self, name, getattr(source, name))
        self.config = getattr(source, "config", None)
        self.num_attention_heads: int = source.num_attention_heads
        setattr(self, layout.head_dim_attr, int(getattr(source, layout.head_dim_attr)))
        if hasattr(source, "all_head_size"):
            self.all_head_size = source.all_head_size
        self.scaling: float = float(getattr(source, "scaling", self.head_size ** -0.5))
        self.is_causal = False
        self.is_decoder = False
        self.layer_idx = getattr(source, "layer_idx", None)
        drop = getattr(source, layout.dropout_attr, 0.0)
        if isinstance(drop, nn.Dropout):
            self.dropout = nn.Dropout(drop.p)
            self.attention_dropout = float(drop.p)
        else:
            self.attention_dropout = float(drop)

    @property
    def head_size(self) -> int:
        return int(getattr(self, self.layout.head_dim_attr))

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                cache: Any = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
        if cache is not None or kwargs.get("past_key_values") is not None:
            raise MethodError(f"{self.kind}: converted attention has no KV cache (encoders only)")
        if kwargs.get("encoder_hidden_states") is not None:
            raise MethodError(f"{self.kind}: converted attention is self-attention only (got encoder_hidden_states)")
        b, n = hidden_states.shape[0], hidden_states.shape[1]
        d = self.head_size
        lay = self.layout
        q = getattr(self, lay.q)(hidden_states).view(b, n, -1, d).transpose(1, 2)  # [B, H, N, d]
        k = getattr(self, lay.k)(hidden_states).view(b, n, -1, d).transpose(1, 2)
        v = getattr(self, lay.v)(hidden_states).view(b, n, -1, d).transpose(1, 2)
        context = self.attend(q, k, v, key_padding_mask(attention_mask, b, n))  # [B, H, N, d]
        out = context.transpose(1, 2).reshape(b, n, -1).contiguous()  # [B, N, H*d]
        if lay.out:
            out = getattr(self, lay.out)(out)
        return out, None

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               key_padding_mask: torch.Tensor | None) -> torch.Tensor:
        """Context ``[B, H, N, d]`` from ``q, k, v`` ``[B, H, N, d]`` (``self.scaling`` not yet applied)."""
        raise NotImplementedError

    def options(self) -> dict[str, Any]:
        """JSON data that, with the source module, rebuilds this module's structure (for replay)."""
        return {}

    @classmethod
    def from_options(cls, source: nn.Module, layout: Layout, options: dict[str, Any]) -> "ConvertedAttention":
        """Rebuild from :meth:`options` read back from a record (untrusted: check every value)."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"family={self.layout.family}, heads={self.num_attention_heads}, head_size={self.head_size}, " + \
            ", ".join(f"{k}={v}" for k, v in self.options().items())


def convert(model: nn.Module, targets: Targets, kind: str,
            make: Callable[[int, nn.Module, Layout], ConvertedAttention]) -> Record:
    """Swap every convertible attention module ``targets`` select for ``make(index, source, layout)``."""
    found = find_attention(model, targets, kind)
    layers: dict[str, dict[str, Any]] = {}
    for i, (name, module, layout) in enumerate(found):
        new = make(i, module, layout)
        new.train(module.training)
        swap_module(model, name, new)
        layers[name] = {"family": layout.family, **new.options()}
    families = sorted({v["family"] for v in layers.values()})
    return Record(kind=kind, data={"layers": layers}, summary={"layers": len(layers), "families": families})


def replay(model: nn.Module, record: Record, cls: type[ConvertedAttention]) -> None:
    """Redo a :func:`convert` from its record: same modules swapped for the same structure."""
    layers = record.data.get("layers")
    if not isinstance(layers, dict) or not layers:
        raise MethodError(f"{record.kind} replay: the record lists no converted layers")
    for name, info in layers.items():
        if not isinstance(info, dict) or info.get("family") not in LAYOUTS:
            raise MethodError(f"{record.kind} replay: layer {name!r} has no known family ({_short(info)})")
        try:
            module = model.get_submodule(name)
        except AttributeError as exc:
            raise MethodError(f"{record.kind} replay: the model has no module {name!r}") from exc
        layout = layout_of(module)
        if layout is None or layout.family != info["family"]:
            raise MethodError(f"{record.kind} replay: {name!r} ({type(module).__name__}) is not a {info['family']} "
                              f"self-attention module this slimkit can convert")
        options = {k: v for k, v in info.items() if k != "family"}
        swap_module(model, name, cls.from_options(module, layout, options))


def option(options: dict[str, Any], key: str, typ: type, where: str, check: Callable[[Any], bool] = lambda _: True) -> Any:
    """``options[key]`` checked to be a ``typ`` passing ``check`` (a record is untrusted input)."""
    value = options.get(key)
    ok = isinstance(value, typ) and not (typ is int and isinstance(value, bool))
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok or not check(value):
        raise MethodError(f"{where}: option {key!r} has an invalid value {_short(value)}")
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


__all__ = ["BERT", "VIT", "LAYOUTS", "Layout", "ConvertedAttention", "convert", "replay", "find_attention",
           "key_padding_mask", "layout_of", "why_unsupported", "option"]
