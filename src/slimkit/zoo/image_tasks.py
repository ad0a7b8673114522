"""Classification tasks: ``digits`` (8x8 digits test split) and ``imagenet-sample`` (500 photos).

Both report ``accuracy`` (top-1, in [0, 1]) and, with a reference model, ``agreement``:
the fraction of samples where the compressed model's top-1 equals the reference's, which
shows damage even where the labels are noisy or the sample is small.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..core.context import call_model
from ..core.errors import DataError
from .task_base import (
    EpochBatches,
    LazyBatches,
    Task,
    accuracy,
    check_limit,
    check_split,
    chunks,
    fixed_subset,
    model_device,
    outputs_of,
    to_device,
)

if TYPE_CHECKING:
    from .specs import ZooModel

EVAL_BATCH = 50
DEV_SIZE, DEV_SEED = 300, 1  # digits has no held-out dev split: a seeded subset of train (see DigitsTask)


def classification_metrics(model: nn.Module, batches: Sequence[Any], labels: torch.Tensor,
                           reference: nn.Module | None) -> dict[str, float]:
    """Top-1 accuracy (and top-5 when there are more than 5 classes), plus agreement with ``reference``."""
    logits = outputs_of(model, batches)  # [N, C]
    if logits.dim() != 2 or logits.shape[0] != len(labels):
        raise DataError(f"expected logits [N={len(labels)}, classes], got {tuple(logits.shape)}")
    pred = logits.argmax(dim=1)
    out = {"accuracy": accuracy(pred, labels), "n": float(len(labels))}
    if logits.shape[1] > 5:
        top5 = logits.topk(5, dim=1).indices  # [N, 5]
        out["top5"] = float((top5 == labels.unsqueeze(1)).any(dim=1).float().mean())
    if reference is not None:
        out["agreement"] = accuracy(pred, outputs_of(reference, batches).argmax(dim=1))
    return out


def _ce_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    inputs, target = to_device(batch, model_device(model))
    return nn.functional.cross_entropy(call_model(model, inputs), target)


class DigitsTask(Task):
    """Accuracy of a digits classifier on the fixed 450-image test split (the split ``zoo:digits-cnn`` trained on)."""

    name = "digits"
    metric = "accuracy"
    description = "scikit-learn digits, 8x8 grey, 10 classes; accuracy on the fixed 25 % test split"
    families = ("image",)
    has_training = True

    def check_model(self, zm: ZooModel) -> None:
        super().check_model(zm)
        if zm.input_shape != (1, 8, 8):
            raise DataError(f"task 'digits' needs [B, 1, 8, 8] inputs; {zm.spec} takes {zm.input_shape}")

    def evaluate(self, model: nn.Module | ZooModel, zm: ZooModel | None = None, *,
                 reference: nn.Module | None = None, limit: int | None = None,
                 split: str = "test") -> dict[str, float]:
        """``split="dev"``: a fixed-seed subset of DEV_SIZE images of the training split (the test
        split is never looked at; the CNN has seen these images, so dev numbers rank damage, they
        are not an accuracy estimate)."""
        from .digits import digits_split

        check_limit(limit)
        check_split(self.name, split)
        if zm is None and isinstance(model, nn.Module):  # the inputs need no tokenizer or preprocessing
            from .specs import ZooModel

            zm = ZooModel(model=model, spec="zoo:digits-cnn", family="image", input_shape=(1, 8, 8))
        model, zm = self.resolve(model, zm)
        x_tr, y_tr, x, y = digits_split()
        if split == "dev":
            idx = fixed_subset(len(y_tr), DEV_SIZE, seed=DEV_SEED)
            x, y = x_tr[idx], y_tr[idx]
        x, y = x[:limit], y[:limit]
        return classification_metrics(model, [x[s] for s in chunks(len(y), 256)], y, reference)

    def calibration_batches(self, zm: ZooModel, n_batches: int, batch_size: int) -> list[Any]:
        from .digits import digits_split

        self.check_model(zm)
        x, _, _, _ = digits_split()
        idx = fixed_subset(len(x), n_batches * batch_size)
        return [x[idx[s]] for s in chunks(len(idx), batch_size)]

    def train_batches(self, zm: ZooModel, batch_size: int, *, epochs: int = 1, seed: int = 0) -> EpochBatches:
        from .digits import digits_split

        self.check_model(zm)
        x, y, _, _ = digits_split()
        return EpochBatches(len(y), batch_size, lambda i: (x[i], y[i]), epochs=epochs, seed=seed)

    def loss_fn(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """Cross-entropy of ``(inputs [B, 1, 8, 8], labels [B])``."""
        return _ce_loss(model, batch)


class ImageNetSampleTask(Task):
    """Top-1 on the last 500 images (by label) of the ImageNet sample; the first 500 calibrate and fine-tune."""

    name = "imagenet-sample"
    metric = "accuracy"
    description = "ImageNet-1k sample, one photo per class; top-1 on the last 500, first 500 for calibration"
    families = ("image",)
    has_training = True

    def check_model(self, zm: ZooModel) -> None:
        super().check_model(zm)
        if zm.preprocess is None or zm.input_shape is None or zm.input_shape[0] != 3:
            raise DataError(f"task 'imagenet-sample' needs an RGB model with a pixel preprocessor; {zm.spec} has none")

    def evaluate(self, model: nn.Module | ZooModel, zm: ZooModel | None = None, *,
                 reference: nn.Module | None = None, limit: int | None = None,
                 split: str = "test") -> dict[str, float]:
        """``split="dev"`` scores the calibration half (the first 500 images), never the evaluation half."""
        from .data import imagenet_sample

        check_limit(limit)
        check_split(self.name, split)
        model, zm = self.resolve(model, zm)
        images, labels = imagenet_sample("eval" if split == "test" else "calib")
        images, labels = images[:limit], labels[:limit]
        pre = zm.preprocess
        assert pre is not None
        batches = LazyBatches(len(labels), EVAL_BATCH, lambda s: pre(images[s]))
        return classification_metrics(model, batches, labels, reference)

    def calibration_batches(self, zm: ZooModel, n_batches: int, batch_size: int) -> list[Any]:
        from .data import imagenet_sample

        self.check_model(zm)
        images, _ = imagenet_sample("calib")
        idx = fixed_subset(len(images), n_batches * batch_size)
        assert zm.preprocess is not None
        return [zm.preprocess(images[idx[s]]) for s in chunks(len(idx), batch_size)]

    def train_batches(self, zm: ZooModel, batch_size: int, *, epochs: int = 1, seed: int = 0) -> EpochBatches:
        """``(inputs, labels)`` from the calibration half (a small set: for recovery fine-tuning, not training)."""
        from .data import imagenet_sample

        self.check_model(zm)
        images, labels = imagenet_sample("calib")
        pre = zm.preprocess
        assert pre is not None
        return EpochBatches(len(labels), batch_size, lambda i: (pre(images[i]), labels[i]), epochs=epochs, seed=seed)

    def loss_fn(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """Cross-entropy of ``(inputs [B, 3, 224, 224], labels [B])``."""
        return _ce_loss(model, batch)
