"""What a task is (data + headline metric) and the small pure pieces tasks share.

Metrics are computed directly here (numpy/scipy) so the zoo does not depend on the
measurement package. Every batch a task hands out is in the form the model's forward
takes (tensor or dict), so ``slimkit.core.call_model`` drives any of them.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from collections.abc import Sequence as SequenceABC
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ..core.context import call_model, to_device
from ..core.errors import DataError

if TYPE_CHECKING:
    from .specs import ZooModel


# ---------------------------------------------------------------- metrics (pure)

def accuracy(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Fraction of equal entries of two ``[N]`` label tensors."""
    if pred.shape != target.shape or pred.numel() == 0:
        raise ValueError(f"accuracy needs two equal, non-empty shapes, got {tuple(pred.shape)} and {tuple(target.shape)}")
    return float((pred == target).float().mean())


def spearman(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Spearman rank correlation in [-1, 1] (ties get average ranks)."""
    from scipy.stats import spearmanr

    return float(spearmanr(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)).statistic)


def pearson(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Pearson correlation in [-1, 1]."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / math.sqrt((a * a).sum() * (b * b).sum()))


def row_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of matching rows: ``[N, H], [N, H] -> [N]``."""
    return nn.functional.cosine_similarity(a.double(), b.double(), dim=-1)


# ---------------------------------------------------------------- running models

@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no autograd for the duration; the model's train/eval flag is restored after."""
    was = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield model
    finally:
        model.train(was)



def model_device(model: nn.Module) -> torch.device:
    """Where the model's first parameter (or buffer) lives; CPU for a stateless module."""
    first: torch.Tensor | None = next(iter(model.parameters()), None)
    if first is None:
        first = next(iter(model.buffers()), None)
    return first.device if first is not None else torch.device("cpu")


def outputs_of(model: nn.Module, batches: Sequence[Any]) -> torch.Tensor:
    """Concatenate ``model``'s tensor outputs over ``batches`` (row-aligned with the batches' samples).

    Batches go to the model's device; outputs come back to the CPU as float32.
    """
    outs = []
    device = model_device(model)
    with eval_mode(model):
        for b in batches:
            out = call_model(model, to_device(b, device))
            if not isinstance(out, torch.Tensor):
                raise DataError(f"the model returned {type(out).__name__}; this task needs a tensor output")
            outs.append(out.float().cpu())
    return torch.cat(outs)


def chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


class LazyBatches(SequenceABC):
    """``make(slice)`` for consecutive slices of ``range(n)``, built on access.

    Lets evaluation walk 500 ImageNet images twice (model and reference) without holding
    300 MB of preprocessed floats (500 x 3 x 224 x 224 float32).
    """

    def __init__(self, n: int, batch_size: int, make: Callable[[slice], Any]) -> None:
        self.slices, self.make = chunks(n, batch_size), make

    def __len__(self) -> int:
        return len(self.slices)

    def __getitem__(self, i: int) -> Any:  # type: ignore[override]
        return self.make(self.slices[i])


class Deferred(SequenceABC):
    """A sequence whose items ``build()`` makes on first access (then kept).

    Lets a Context offer an expensive corpus (tokenising 70 k sentences) that only the
    methods which use it pay for.
    """

    def __init__(self, build: Callable[[], Sequence[Any]]) -> None:
        self._build, self._items = build, None

    @property
    def items(self) -> Sequence[Any]:
        if self._items is None:
            self._items = list(self._build())
        return self._items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Any:  # type: ignore[override]
        return self.items[i]

    def __iter__(self) -> Iterator[Any]:
        return iter(self.items)


class EpochBatches:
    """A re-iterable, deterministic stream of training batches: ``epochs`` passes, reshuffled per pass.

    Iterating twice yields the same batches (fine-tuning and distillation loops may restart it).
    ``make(indices) -> batch`` builds one batch from sample indices.
    """

    def __init__(self, n: int, batch_size: int, make: Callable[[torch.Tensor], Any], *, epochs: int = 1,
                 seed: int = 0, drop_last: bool = False) -> None:
        if batch_size < 1 or epochs < 1 or n < 1:
            raise ValueError(f"need n, batch_size, epochs >= 1, got {n}, {batch_size}, {epochs}")
        self.n, self.batch_size, self.make, self.epochs, self.seed = n, batch_size, make, epochs, seed
        self.drop_last = drop_last

    def __len__(self) -> int:
        per = self.n // self.batch_size if self.drop_last else math.ceil(self.n / self.batch_size)
        return per * self.epochs

    def __iter__(self) -> Iterator[Any]:
        gen = torch.Generator().manual_seed(self.seed)
        for _ in range(self.epochs):
            perm = torch.randperm(self.n, generator=gen)
            for s in chunks(self.n, self.batch_size):
                idx = perm[s]
                if self.drop_last and len(idx) < self.batch_size:
                    continue
                yield self.make(idx)


def fixed_subset(n: int, k: int, seed: int = 0) -> torch.Tensor:
    """``k`` distinct indices out of ``n`` in a seeded random order (the same on every machine)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=gen)[: min(k, n)]


# ---------------------------------------------------------------- the task interface

class Task:
    """A data set plus a headline metric, and the batches compression methods need from it.

    - ``evaluate(model, zm, *, reference=None, limit=None, split="test") -> dict[str, float]``: the
      metrics; ``model`` may be a compressed copy of ``zm.model`` or the :class:`ZooModel` itself; with
      ``reference`` (usually the dense model) agreement/fidelity numbers are added; ``limit``
      evaluates on a prefix only (quick checks; not for reported figures); ``split="dev"`` scores
      the split tuning may look at (the planner's sensitivity), never the test split.
    - ``calibration_batches(zm, n_batches, batch_size)``: forward-only input batches.
    - ``train_batches(zm, batch_size, *, epochs=1, seed=0)`` and ``loss_fn(model, batch)``
      where ``has_training`` (batches are ``(inputs, target)``).
    """

    name: str = ""
    metric: str = ""
    description: str = ""
    families: tuple[str, ...] = ()
    has_training: bool = False

    def __repr__(self) -> str:
        return f"<Task {self.name}: {self.metric}>"

    def check_model(self, zm: ZooModel) -> None:
        """Raise :class:`DataError` when ``zm`` cannot run this task (wrong family or input)."""
        if zm.family not in self.families:
            raise DataError(f"task {self.name!r} needs a {' or '.join(self.families)} model; "
                            f"{zm.spec} is a {zm.family} model")

    def resolve(self, model: nn.Module | ZooModel, zm: ZooModel | None) -> tuple[nn.Module, ZooModel]:
        """Accept ``evaluate(zm)`` as well as ``evaluate(model, zm)``; check the pairing."""
        from .specs import ZooModel

        if isinstance(model, ZooModel):
            zm, model = model if zm is None else zm, model.model
        if zm is None:
            raise DataError(f"task {self.name!r} needs the ZooModel (tokenizer, preprocessing) next to a bare module: "
                            "call evaluate(model, zm)")
        self.check_model(zm)
        return model, zm

    def evaluate(self, model: nn.Module | ZooModel, zm: ZooModel | None = None, *,
                 reference: nn.Module | None = None, limit: int | None = None,
                 split: str = "test") -> dict[str, float]:
        raise NotImplementedError

    def calibration_batches(self, zm: ZooModel, n_batches: int, batch_size: int) -> list[Any]:
        raise NotImplementedError

    def unlabeled_batches(self, zm: ZooModel, batch_size: int, *, seed: int = 0) -> Sequence[Any] | None:
        """Input-only batches of the task's whole unlabelled corpus (None: the task has none)."""
        return None

    def train_batches(self, zm: ZooModel, batch_size: int, *, epochs: int = 1, seed: int = 0) -> EpochBatches:
        raise DataError(f"task {self.name!r} has no training data (has_training is False)")

    def loss_fn(self, model: nn.Module, batch: Any) -> torch.Tensor:
        raise DataError(f"task {self.name!r} has no training loss (has_training is False)")


SPLITS = ("dev", "test")


def check_split(task: str, split: str) -> None:
    """``split`` must be ``dev`` (for tuning) or ``test`` (for reported figures)."""
    if split not in SPLITS:
        raise DataError(f"task {task!r} has no split {split!r}; expected one of {', '.join(SPLITS)}")


def check_limit(limit: int | None) -> None:
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise DataError(f"limit must be a positive int or None, got {limit!r}")
