"""Model spec strings -> models: ``zoo:NAME``, ``hf:PATH`` and ``py:module:factory``.

A spec is the one string a saved artifact keeps to say where its dense model came from;
``slimkit.restore`` calls :func:`build` with it, replays the records and loads weights.

``py:module:factory`` imports and calls code. A spec typed by the user (``--model``) is
their choice; one read from an artifact's manifest is not, so ``restore`` and the CLI
refuse it unless the caller passes ``trust_code=True`` / ``--trust-code``
(:func:`slimkit.core.safety.require_trust`). ``zoo:`` and ``hf:`` are data: an ``hf:``
folder loads its config and safetensors weights with ``trust_remote_code=False``.
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, cast

import torch
from torch import nn

from ..core.errors import ModelSpecError
from ..core.record import set_model_spec
from .minilm import TextTokenizer

Family = Literal["image", "text", "custom"]


@dataclasses.dataclass
class ZooModel:
    """A loaded model and what the rest of slimkit needs to drive it.

    - ``model``: the ``nn.Module`` (eval mode, carries its spec for ``slimkit.save``).
    - ``family``: ``"image"`` (tensor input), ``"text"`` (dict of ``input_ids`` /
      ``attention_mask``) or ``"custom"`` (``py:`` factories).
    - ``tokenizer``: text models only; ``encode(texts, max_length=128) -> batch dict``.
    - ``input_shape``: image models: one sample's shape, e.g. ``(3, 224, 224)``.
    - ``preprocess``: image models fed from uint8 pixels: ``uint8 [B, 3, H, W] -> float input``.
    - ``default_task``: the task name :func:`slimkit.zoo.get_task` knows for this model, if any.
    """

    model: nn.Module
    spec: str
    family: Family
    default_task: str | None = None
    tokenizer: TextTokenizer | None = None
    input_shape: tuple[int, ...] | None = None
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None
    example_fn: Callable[[int], Any] | None = dataclasses.field(default=None, repr=False)

    def example_inputs(self, batch_size: int = 1, seq_len: int = 128) -> Any:
        """One batch in the form ``model``'s forward takes (deterministic; for tracing and profiling).

        Text: ``{"input_ids", "attention_mask"}`` of ``seq_len`` tokens (at most the model's
        position table), all-ones mask; without a tokenizer (an ``hf:`` folder that ships
        none) the ids are drawn from the config's vocabulary.
        Image: a float tensor ``[batch_size, *input_shape]``.
        """
        if self.example_fn is not None:
            return self.example_fn(batch_size)
        if self.family == "text":
            from .hf_folder import max_tokens, synthetic_text_inputs

            seq_len = min(seq_len, max_tokens(self.model))
            if self.tokenizer is None:
                return synthetic_text_inputs(self.model, batch_size, seq_len)
            return self.tokenizer.example(batch_size, seq_len)
        if self.input_shape is None:
            raise ModelSpecError(f"{self.spec}: no example inputs known; give the factory's module an "
                                 "`example_inputs(batch_size)` function")
        gen = torch.Generator().manual_seed(0)
        return torch.rand((batch_size, *self.input_shape), generator=gen)  # [B, C, H, W] in [0, 1)


ZOO_NAMES = ("digits-cnn", "minilm-l6", "efficientnet-lite0", "sst2-bilstm")


def specs() -> list[str]:
    """The built-in zoo specs (``hf:PATH`` and ``py:module:factory`` are open-ended and not listed)."""
    return [f"zoo:{n}" for n in ZOO_NAMES]


def _unknown(spec: str, why: str) -> ModelSpecError:
    return ModelSpecError(f"unknown model spec {spec!r}: {why}; known zoo models: {', '.join(specs())} "
                          "(or hf:PATH, py:module:factory)")


def _parse(spec: str) -> tuple[str, str]:
    if not isinstance(spec, str) or ":" not in spec:
        raise _unknown(str(spec), "expected 'zoo:NAME', 'hf:PATH' or 'py:module:factory'")
    scheme, _, rest = spec.partition(":")
    if scheme not in ("zoo", "hf", "py") or not rest:
        raise _unknown(spec, f"scheme {scheme!r} with name {rest!r} is not one of zoo:, hf:, py:")
    if scheme == "zoo" and rest not in ZOO_NAMES:
        raise _unknown(spec, f"no zoo model named {rest!r}")
    return scheme, rest


def load(spec: str) -> ZooModel:
    """Load a model by spec, with its tokenizer / preprocessing / default task. See :class:`ZooModel`."""
    scheme, rest = _parse(spec)
    if scheme == "zoo":
        zm = _load_zoo(rest, spec)
    elif scheme == "hf":
        zm = _load_hf(Path(rest).expanduser(), spec)
    else:
        zm = _load_py(rest, spec)
    set_model_spec(zm.model, spec)
    zm.model.eval()
    return zm


def build(spec: str) -> nn.Module:
    """The dense model for ``spec`` (what ``slimkit.restore`` rebuilds before replaying records)."""
    return load(spec).model


def _load_zoo(name: str, spec: str) -> ZooModel:
    if name == "digits-cnn":
        from .digits import pretrained_digits_cnn

        return ZooModel(model=pretrained_digits_cnn(), spec=spec, family="image", default_task="digits",
                        input_shape=(1, 8, 8))
    if name == "minilm-l6":
        from .minilm import load_sentence_embedder, minilm_path

        path = minilm_path()
        return ZooModel(model=load_sentence_embedder(path), spec=spec, family="text", default_task="stsb",
                        tokenizer=TextTokenizer(path))
    if name == "sst2-bilstm":
        from .bilstm import pretrained_bilstm
        from .minilm import minilm_path

        tok = TextTokenizer(minilm_path())  # the MiniLM WordPiece vocabulary
        return ZooModel(model=pretrained_bilstm(tok), spec=spec, family="text", default_task="sst2", tokenizer=tok)
    from .efficientnet import IMAGE_SIZE, build_efficientnet_lite0, normalize_images

    return ZooModel(model=build_efficientnet_lite0(), spec=spec, family="image", default_task="imagenet-sample",
                    input_shape=(3, IMAGE_SIZE, IMAGE_SIZE), preprocess=normalize_images,
                    example_fn=lambda b: normalize_images(_example_pixels(b, IMAGE_SIZE)))


def _example_pixels(batch_size: int, size: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (batch_size, 3, size, size), generator=gen, dtype=torch.uint8)  # [B, 3, S, S]


def _load_hf(path: Path, spec: str) -> ZooModel:
    from .minilm import is_sentence_transformers_folder, load_hf_encoder, load_sentence_embedder

    if not (path / "config.json").is_file():
        raise ModelSpecError(f"{spec}: {path} is not a local Hugging Face model folder (no config.json)")
    tokenizer = None
    if any((path / f).is_file() for f in ("tokenizer.json", "vocab.txt", "tokenizer_config.json")):
        tokenizer = TextTokenizer(path)
    if is_sentence_transformers_folder(path):
        return ZooModel(model=load_sentence_embedder(path), spec=spec, family="text", default_task="stsb",
                        tokenizer=tokenizer)
    from .hf_folder import base_model_class, image_shape

    model = load_hf_encoder(path, base_model_class(path))
    shape = image_shape(model)
    if shape is not None:
        return ZooModel(model=model, spec=spec, family="image", input_shape=shape)
    return ZooModel(model=model, spec=spec, family="text", tokenizer=tokenizer)


def _load_py(target: str, spec: str) -> ZooModel:
    """``py:package.module:factory``: the factory returns an ``nn.Module``.

    The module may also define ``example_inputs(batch_size) -> batch`` and ``FAMILY`` /
    ``DEFAULT_TASK`` strings; without ``example_inputs`` the family is ``"custom"`` and
    asking for example inputs raises a clear error.
    """
    mod_name, _, attr = target.rpartition(":")
    if not mod_name or not attr:
        raise _unknown(spec, "expected py:module:factory")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as exc:
        raise ModelSpecError(f"{spec}: cannot import module {mod_name!r}: {exc}") from exc
    factory = getattr(mod, attr, None)
    if factory is None or not callable(factory):
        raise ModelSpecError(f"{spec}: module {mod_name!r} has no callable {attr!r}")
    model = factory()
    if not isinstance(model, nn.Module):
        raise ModelSpecError(f"{spec}: {attr}() returned {type(model).__name__}, not an nn.Module")
    example = getattr(mod, "example_inputs", None)
    if example is not None and not (callable(example) and len(inspect.signature(example).parameters) >= 1):
        raise ModelSpecError(f"{spec}: {mod_name}.example_inputs must be a function of batch_size")
    family = getattr(mod, "FAMILY", "custom")
    if family not in ("image", "text", "custom"):
        raise ModelSpecError(f"{spec}: {mod_name}.FAMILY must be image, text or custom, got {family!r}")
    return ZooModel(model=model, spec=spec, family=cast(Family, family), default_task=getattr(mod, "DEFAULT_TASK", None),
                    example_fn=example)
