"""Pieces the recipe kinds of :mod:`slimkit.distill` share: the output-level loss named by a
``loss:`` / ``logits:`` option, which Context data a step trains on, and teachers named by
model specs.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..core import Context, MethodError, ModelSpecError
from ..core.context import select_output
from ..core.safety import runs_code
from .cache import kd_with
from .engine import split_batch
from .losses import cosine_loss

OutputLoss = Literal["kd", "mse", "cosine"]
DataChoice = Literal["auto", "unlabeled", "train", "calib"]
LossFn = Callable[[Any, Any, Any], torch.Tensor]


def output_tensor(out: Any, kind: str) -> torch.Tensor:
    """The tensor a model's output is compared on: itself, ``.logits``, else ``last_hidden_state``."""
    try:
        return select_output(out)
    except MethodError as exc:
        raise MethodError(f"{kind}: {exc}") from exc


def class_labels(batch: Any, logits: torch.Tensor) -> torch.Tensor | None:
    """The batch's integer class labels when it has ones that fit ``logits`` ``[..., C]`` (else None)."""
    _, labels = split_batch(batch)
    if isinstance(labels, torch.Tensor) and not labels.is_floating_point() and labels.shape == logits.shape[:-1]:
        return labels
    return None


def compare_outputs(s: torch.Tensor, t: torch.Tensor, loss: OutputLoss, batch: Any, *, temperature: float,
                    alpha: float, kind: str) -> torch.Tensor:
    """``kd``: Hinton KD (mixed with cross-entropy by ``alpha`` when the batch has class labels);
    ``mse``: Ba & Caruana logit regression; ``cosine``: ``1 - cos`` (sentence embeddings)."""
    if s.shape != t.shape:
        raise MethodError(f"{kind}: student output {tuple(s.shape)} and teacher output {tuple(t.shape)} differ in shape")
    t = t.to(s.dtype)
    if loss == "kd":
        return kd_with(s, t, class_labels(batch, s), temperature=temperature, alpha=alpha)
    if loss == "mse":
        return F.mse_loss(s, t)
    return cosine_loss(s, t)


def output_loss(loss: OutputLoss, *, temperature: float, alpha: float, kind: str) -> LossFn:
    """An engine loss ``(student_out, teacher_out, batch) -> scalar`` on the models' outputs."""
    def fn(s_out: Any, t_out: Any, batch: Any) -> torch.Tensor:
        return compare_outputs(output_tensor(s_out, kind), output_tensor(t_out, kind), loss, batch,
                               temperature=temperature, alpha=alpha, kind=kind)
    return fn


_ORDER = {"unlabeled": ("unlabeled_data",), "train": ("train_data",), "calib": ("calib_data",)}


def step_data(data: DataChoice, ctx: Context, kind: str, *, labels_first: bool) -> Any:
    """The batches a step trains on. ``auto``: ``train_data`` first when the loss uses labels
    (``labels_first``), else the unlabelled corpus first; then the others, then ``calib_data``."""
    if data == "auto":
        order = ("train_data", "unlabeled_data", "calib_data") if labels_first else (
            "unlabeled_data", "train_data", "calib_data")
    else:
        order = _ORDER[data]
    for attr in order:
        if getattr(ctx, attr) is not None:
            return getattr(ctx, attr)
    raise MethodError(f"{kind} (data: {data}) needs {' or '.join(f'Context.{a}' for a in order)}; none is set")


def is_path_spec(spec: str) -> bool:
    """Whether ``spec`` reads as a folder path (``./teacher``, ``/models/t``, ``~/t``) rather than a name."""
    return "/" in spec or spec.startswith((".", "~"))


def load_model_spec(spec: str, ctx: Context, kind: str) -> nn.Module:
    """The model a teacher / peer spec names.

    ``context`` is ``ctx.teacher``; ``zoo:NAME`` and ``hf:PATH`` load through
    :func:`slimkit.zoo.load`; a folder path loads a saved slimkit artifact (``manifest.json``,
    restored with its records) or a Hugging Face folder. ``py:module:factory`` runs code, so a
    recipe may name it (directly or through an artifact's manifest) only when the caller opted
    in with ``ctx.extras["trust_code"] = True``.
    """
    if spec == "context":
        if ctx.teacher is None:
            raise MethodError(f"{kind}: spec 'context' names Context.teacher, which is not set")
        return ctx.teacher
    trust = ctx.extras.get("trust_code") is True
    if runs_code(spec) and not trust:
        raise ModelSpecError(f"{kind}: model spec {spec!r} would import and run Python code; set "
                             "Context.extras['trust_code'] = True to allow it, or use zoo:/hf: specs")
    from .. import zoo

    if is_path_spec(spec) and ":" not in spec.partition("/")[0]:
        path = Path(spec).expanduser()
        if (path / "manifest.json").is_file():
            from ..core.api import restore  # rebuilds from the manifest's model_spec (trust rules apply)

            return restore(path, trust_code=trust).to(ctx.device)
        if not (path / "config.json").is_file():
            raise ModelSpecError(f"{kind}: {spec!r} is neither a slimkit artifact (manifest.json) nor a Hugging "
                                 "Face folder (config.json)")
        spec = f"hf:{path}"
    return zoo.load(spec).model.to(ctx.device)


__all__ = ["DataChoice", "OutputLoss", "class_labels", "compare_outputs", "is_path_spec", "load_model_spec", "output_loss",
           "output_tensor", "step_data"]
