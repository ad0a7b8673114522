"""``sst2``: sentiment classification accuracy on SST-2 for models that output logits (``zoo:sst2-bilstm``).

The model maps ``{"input_ids", "attention_mask"}`` to ``[B, 2]`` logits. Reported on the
test split (872 sentences, the GLUE dev set); calibration and training batches come from
the train split, so nothing the report scores is seen while compressing. Evaluation batches
are sorted by token length (little padding). With a reference model ``agreement`` is the
fraction of sentences where both predict the same class.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..core.context import call_model
from ..core.errors import DataError
from .task_base import EpochBatches, accuracy, check_limit, check_split, model_device, outputs_of, to_device
from .text_tasks import MAX_LENGTH, _TextTask, encode_sorted

if TYPE_CHECKING:
    from .specs import ZooModel

TRAIN_MAX_LENGTH = 64


class Sst2Task(_TextTask):
    """Accuracy of a sentiment classifier (logits ``[B, 2]``) on the SST-2 test split."""

    name = "sst2"
    metric = "accuracy"
    description = "SST-2 binary sentiment; accuracy of the model's own logits on the test split (872)"
    has_training = True

    def _sentences(self) -> list[str]:
        from .data import read_sst2

        return read_sst2("train")[0]

    def logits(self, model: nn.Module, zm: ZooModel, texts: list[str]) -> torch.Tensor:
        """``[N, C]`` logits in the order of ``texts``."""
        assert zm.tokenizer is not None
        batches, order = encode_sorted(zm.tokenizer, texts, 64, MAX_LENGTH)
        out = outputs_of(model, batches)  # [N, C] in sorted order
        if out.dim() != 2 or out.shape[1] < 2:
            raise DataError(f"task 'sst2' needs class logits [B, 2]; the model returned shape {tuple(out.shape)}")
        result = torch.empty_like(out)
        result[torch.tensor(order)] = out
        return result

    def evaluate(self, model: nn.Module | ZooModel, zm: ZooModel | None = None, *,
                 reference: nn.Module | None = None, limit: int | None = None,
                 split: str = "test") -> dict[str, float]:
        from .data import read_sst2

        check_limit(limit)
        check_split(self.name, split)
        model, zm = self.resolve(model, zm)
        texts, labels = read_sst2(split)
        texts, labels = texts[:limit], labels[:limit]
        pred = self.logits(model, zm, texts).argmax(dim=1)
        out = {"accuracy": accuracy(pred, torch.tensor(labels)), "n": float(len(labels))}
        if reference is not None:
            out["agreement"] = accuracy(pred, self.logits(reference, zm, texts).argmax(dim=1))
        return out

    def train_batches(self, zm: ZooModel, batch_size: int, *, epochs: int = 1, seed: int = 0) -> EpochBatches:
        """``(inputs, labels)`` batches from SST-2 train, reshuffled per epoch (padded per batch)."""
        from .data import read_sst2

        self.check_model(zm)
        tok = zm.tokenizer
        assert tok is not None
        texts, labels = read_sst2("train")
        y = torch.tensor(labels)

        def make(idx: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
            return tok.encode([texts[i] for i in idx.tolist()], TRAIN_MAX_LENGTH), y[idx]

        return EpochBatches(len(texts), batch_size, make, epochs=epochs, seed=seed)

    def loss_fn(self, model: nn.Module, batch: Any) -> torch.Tensor:
        inputs, target = to_device(batch, model_device(model))
        return nn.functional.cross_entropy(call_model(model, inputs), target)


__all__ = ["Sst2Task"]
