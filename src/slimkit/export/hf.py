"""Hugging Face format: write a pruned HF model as a folder ``from_pretrained`` loads.

A slimkit model is expressible in HF format when its HF model class, built from an updated
config, has exactly the pruned model's modules and tensor shapes. The config keys set here:

- depth: ``num_hidden_layers`` / ``n_layer`` / ``num_layers`` (``prune.layers`` already keeps them
  in step, with per-layer lists such as ``layer_types``);
- FFN width, one value for every layer: ``intermediate_size`` (BERT-like ``intermediate.dense``,
  LLaMA-like ``mlp.up_proj``), ``n_inner`` (GPT-2 ``mlp.c_fc``), ``hidden_dim`` (DistilBERT
  ``ffn.lin1``);
- attention heads, one count for every layer: ``num_attention_heads`` / ``n_head`` and
  ``num_key_value_heads``, only where the config stores the head size itself (``head_dim``:
  LLaMA, Mistral, Qwen2...). BERT-like configs derive the head size as ``hidden_size /
  num_attention_heads`` and transformers 5 dropped ``pruned_heads``, so there a head-pruned
  model is refused;
- ``dtype`` when every float tensor has one dtype (``quantize.cast``).

Everything else is refused with a :class:`~slimkit.core.errors.MethodError` that lists what
cannot be expressed: per-layer different sizes, slimkit modules (int8 / low-bit / fake-quant
layers, 4-bit embedding tables, low-rank factors), tensors the architecture does not have,
and records whose result lives only in the weight values (sparsity masks, N:M patterns,
shared codebooks), which a dense HF checkpoint would silently drop. The written folder is
then reloaded and its outputs compared with the pruned model (an error if they differ).
"""
from __future__ import annotations

import copy
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.context import Batch, call_model
from ..core.errors import ArtifactError, ConfigError, MethodError, SlimkitError
from ..prune.surgery import _HEAD_DIM_ATTRS, _K_NAMES, _Q_NAMES

# (module-name suffix of the FFN's first projection, config key of its width)
FFN_KEYS = (("intermediate.dense", "intermediate_size"), ("mlp.up_proj", "intermediate_size"),
            ("mlp.c_fc", "n_inner"), ("ffn.lin1", "hidden_dim"))
HEAD_KEYS = ("num_attention_heads", "n_head", "num_heads", "n_heads")
# record kinds whose float weights a dense HF checkpoint holds exactly and meaningfully
VALUE_ONLY_OK = ("quantize.cast", "quantize.smoothquant")


def _pretrained_types() -> tuple[type, ...]:
    try:
        from transformers import PreTrainedModel
    except ImportError as e:
        raise MethodError("HF export needs transformers: pip install 'slimkit[text]'") from e
    return (PreTrainedModel,)


def hf_root(model: nn.Module) -> tuple[str, nn.Module]:
    """``(name, module)`` of the outermost HF ``PreTrainedModel`` in ``model`` ("" for the model itself).

    A wrapper around it (e.g. the sentence embedder's pooling) may hold no tensors of its own:
    they would not be in the HF folder.
    """
    kinds = _pretrained_types()
    for name, m in model.named_modules():
        if isinstance(m, kinds):
            outside = [n for n, _ in _tensors(model) if not (name == "" or n.startswith(name + "."))]
            if outside:
                raise MethodError(f"HF export writes {type(m).__name__} {name!r}; the tensors {outside[:4]} "
                                  f"({len(outside)} in all) of {type(model).__name__} outside it have no place there")
            return name, m
    raise MethodError(f"HF export needs a transformers PreTrainedModel; {type(model).__name__} holds none")


def _tensors(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return list(model.state_dict(keep_vars=True).items())


def _width(m: nn.Module) -> int | None:
    for attr in ("out_features", "nf"):  # nn.Linear, GPT-2 Conv1D
        if isinstance(getattr(m, attr, None), int):
            return int(getattr(m, attr))
    return None


def _uniform(values: dict[str, int], what: str, key: str, config: Any, problems: list[str]) -> int | None:
    """The one value of ``values`` (per module), or a problem naming the layers that differ."""
    distinct = sorted(set(values.values()))
    if len(distinct) == 1:
        return distinct[0]
    listing = ", ".join(f"{n}: {v}" for n, v in list(values.items())[:6])
    problems.append(f"per-layer {what} differ ({listing}{', ...' if len(values) > 6 else ''}); "
                    f"{type(config).__name__} has one {key} for every layer")
    return None


def _value_only_records(model: nn.Module) -> list[str]:
    """Problems for records whose compression lives in the weight values (no HF form)."""
    from ..core import config_class
    from ..core.record import records

    out = []
    for rec in records(model):
        try:
            stage = config_class(rec.kind).stage
        except SlimkitError:
            continue
        if rec.kind in VALUE_ONLY_OK:
            continue
        if stage == "sparsify":
            out.append(f"{rec.kind}: its sparsity (masks / N:M patterns) lives only in zeroed weights; an HF "
                       "checkpoint is dense and keeps no mask, so the sparsity would be silently dropped")
        elif stage == "quantize":
            out.append(f"{rec.kind}: quantized weights (int8 / low-bit codes, codebooks or fake-quant ranges) "
                       "have no HF config form")
    return out


def hf_config(model: nn.Module) -> tuple[str, nn.Module, Any]:
    """``(root name, root, config)``: the HF config that describes the pruned ``model``.

    Raises :class:`MethodError` listing every part of the result the config cannot express.
    """
    name, root = hf_root(model)
    cfg = copy.deepcopy(root.config)
    problems = _value_only_records(model)
    modules = dict(root.named_modules())
    for suffix, key in FFN_KEYS:
        widths = {n: w for n, m in modules.items() if n.endswith(suffix) and (w := _width(m)) is not None}
        if widths and hasattr(cfg, key):
            value = _uniform(widths, "FFN widths", key, cfg, problems)
            if value is not None and value != getattr(cfg, key):
                setattr(cfg, key, value)
    _set_heads(cfg, modules, problems)
    dtypes = {t.dtype for _, t in _tensors(root) if t.is_floating_point()}
    if len(dtypes) > 1:
        problems.append(f"float tensors of several dtypes {sorted(str(d) for d in dtypes)}; an HF config has one dtype")
    elif dtypes:
        cfg.dtype = next(iter(dtypes))
    if not problems:
        problems += _structure_problems(root, cfg)
    if problems:
        raise MethodError(f"HF export of {type(root).__name__} cannot express: " + "; ".join(problems))
    return name, root, cfg


def _set_heads(cfg: Any, modules: dict[str, nn.Module], problems: list[str]) -> None:
    q_heads: dict[str, int] = {}
    kv_heads: dict[str, int] = {}
    head_dims = set()
    for n, m in modules.items():
        hd = next((getattr(m, a) for a in _HEAD_DIM_ATTRS if isinstance(getattr(m, a, None), int)), None)
        q = next((getattr(m, a) for a in _Q_NAMES if isinstance(getattr(m, a, None), nn.Module)), None)
        k = next((getattr(m, a) for a in _K_NAMES if isinstance(getattr(m, a, None), nn.Module)), None)
        if not hd or q is None or _width(q) is None:
            continue
        head_dims.add(hd)
        q_heads[n] = _width(q) // hd  # type: ignore[operator]
        if k is not None and _width(k) is not None:
            kv_heads[n] = _width(k) // hd  # type: ignore[operator]
    key = next((k for k in HEAD_KEYS if isinstance(getattr(cfg, k, None), int)), None)
    if not q_heads or key is None:
        return
    nq = _uniform(q_heads, "attention head counts", key, cfg, problems)
    nkv = _uniform(kv_heads, "key/value head counts", "num_key_value_heads", cfg, problems) if kv_heads else nq
    if nq is None or (nq == getattr(cfg, key) and nkv == getattr(cfg, "num_key_value_heads", nkv)):
        return
    hd = next(iter(head_dims))
    if "head_dim" not in cfg.to_dict() and nq * hd != getattr(cfg, "hidden_size", nq * hd):
        problems.append(f"{nq} attention heads of size {hd} per layer: {type(cfg).__name__} derives the head "
                        f"size as hidden_size / {key} ({cfg.hidden_size} / {nq} != {hd}) and has no pruned_heads "
                        "in transformers 5, so pruned heads cannot be expressed")
        return
    setattr(cfg, key, nq)
    if nkv is not None and hasattr(cfg, "num_key_value_heads"):
        cfg.num_key_value_heads = nkv


def _structure_problems(root: nn.Module, cfg: Any) -> list[str]:
    """Differences between ``root`` and ``type(root)(cfg)``: module types, tensor names and shapes."""
    try:
        with torch.device("meta"):
            fresh = type(root)(cfg)
    except Exception as exc:  # the model class rejects the config (its own exception types)
        raise MethodError(f"HF export: {type(root).__name__} cannot be built from the updated config: {exc}") from exc
    problems = []
    fresh_modules = dict(fresh.named_modules())
    odd = [f"{n} ({type(m).__name__})" for n, m in root.named_modules()
           if n and (n not in fresh_modules or type(fresh_modules[n]) is not type(m))]
    if odd:
        problems.append(f"modules {type(root).__name__} does not have: {', '.join(odd[:6])}"
                        + (f" and {len(odd) - 6} more" if len(odd) > 6 else ""))
    mine = {n: tuple(t.shape) for n, t in _tensors(root)}
    theirs = {n: tuple(t.shape) for n, t in _tensors(fresh)}
    extra = sorted(set(mine) - set(theirs))
    missing = sorted(set(theirs) - set(mine))
    shapes = [f"{n} {mine[n]} vs {theirs[n]}" for n in mine if n in theirs and mine[n] != theirs[n]]
    if not odd and extra:
        problems.append(f"tensors the architecture does not have: {extra[:6]}")
    if not odd and missing:
        problems.append(f"tensors the architecture needs but the model lacks: {missing[:6]}")
    if shapes:
        problems.append(f"sizes no config key sets: {'; '.join(shapes[:6])}" + (" ..." if len(shapes) > 6 else ""))
    return problems


def write_hf(model: nn.Module, dest: str | os.PathLike[str], *, example_inputs: Batch | None = None,
             tokenizer: Any = None, overwrite: bool = False, atol: float = 1e-4) -> dict[str, Any]:
    """Write the HF model inside ``model`` to the folder ``dest`` (``config.json`` + safetensors).

    With ``example_inputs`` (the batch the HF model takes), the written folder is reloaded with
    ``from_pretrained`` and its first output compared with the pruned model's (``atol`` for
    fp32, scaled for 16-bit dtypes); a difference raises :class:`ArtifactError` and nothing is
    left at ``dest``. ``tokenizer`` (an HF tokenizer, or slimkit's ``TextTokenizer``) is saved
    beside the weights.
    """
    name, root, cfg = hf_config(model)
    dest = Path(dest)
    if dest.exists() and not overwrite:
        raise ConfigError(f"{dest} exists; choose another --out or remove it", key="out")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        out = type(root)(cfg).to(cfg.dtype).eval()
        out.load_state_dict(root.state_dict(), strict=True)
        out.save_pretrained(str(tmp))
        tok = getattr(tokenizer, "hf", tokenizer)
        if tok is not None and hasattr(tok, "save_pretrained"):
            tok.save_pretrained(str(tmp))
        info: dict[str, Any] = {"format": "hf", "dir": str(dest), "class": type(root).__name__,
                                "part": name or None, "config": _config_summary(cfg), "tokenizer": tok is not None}
        if example_inputs is not None:
            info["max_abs_diff"] = _check(tmp, root, example_inputs, atol * (1 if cfg.dtype == torch.float32 else 100))
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    info["bytes"] = sum(p.stat().st_size for p in dest.iterdir() if p.is_file())
    return info


def _config_summary(cfg: Any) -> dict[str, Any]:
    keys = ("model_type", "num_hidden_layers", "n_layer", "intermediate_size", "n_inner", "hidden_dim",
            "num_attention_heads", "n_head", "num_key_value_heads", "head_dim", "hidden_size")
    doc = cfg.to_dict()
    return {k: doc[k] for k in keys if doc.get(k) is not None} | {"dtype": str(cfg.dtype).replace("torch.", "")}


def _check(folder: Path, root: nn.Module, batch: Batch, atol: float) -> float:
    from ..core.context import select_output

    try:
        again = type(root).from_pretrained(str(folder), local_files_only=True).eval()
    except Exception as exc:
        raise ArtifactError(f"the written HF folder does not load with from_pretrained: {exc}") from exc
    was = root.training
    root.eval()
    try:
        with torch.no_grad():
            ref = select_output(call_model(root, batch)).float()
            got = select_output(call_model(again, batch)).float()
    finally:
        root.train(was)
    if ref.shape != got.shape:
        raise ArtifactError(f"the reloaded HF model's output shape {tuple(got.shape)} != {tuple(ref.shape)}")
    diff = float((ref - got).abs().max())
    if diff > atol:
        raise ArtifactError(f"the reloaded HF model differs from the pruned model by {diff:.3g} > atol {atol:g}: "
                            "something in the model (a hook, a slimkit module) has no HF form")
    return diff
