"""Which teacher layer each student layer learns from.

Layer indices count transformer blocks (or stages) from 0 on both sides; an embedding
output, if distilled, is mapped by the caller. The fixed maps return ``list[int]`` where
entry ``i`` is the teacher layer for student layer ``i``; :func:`explicit_map` returns a
validated ``dict`` because it may cover only some student layers.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from slimkit.core.errors import ConfigError


def _check_positive(n_student: int, n_teacher: int) -> None:
    for key, n in (("n_student", n_student), ("n_teacher", n_teacher)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"expected a positive int, got {n!r}", key=key)


def _check_sizes(n_student: int, n_teacher: int) -> None:
    _check_positive(n_student, n_teacher)
    if n_student > n_teacher:
        raise ConfigError(f"expected n_student <= n_teacher ({n_teacher}), got {n_student}", key="n_student")


def uniform_map(n_student: int, n_teacher: int) -> list[int]:
    """Skip teacher layers uniformly (TinyBERT's ``g(m) = m * N/M``; DistilBERT / PKD-Skip idea).

    Student layer ``i`` learns from teacher layer ``floor((i + 1) * n_teacher / n_student) - 1``,
    so the last student layer always matches the last teacher layer and the rest are spread
    evenly below it: 3 of 6 -> ``[1, 3, 5]``, 4 of 12 -> ``[2, 5, 8, 11]``.
    """
    _check_sizes(n_student, n_teacher)
    return [(i + 1) * n_teacher // n_student - 1 for i in range(n_student)]


def last_k_map(n_student: int, n_teacher: int) -> list[int]:
    """PKD-Last (Sun et al. 2019): student layer ``i`` learns from the teacher's last layers.

    3 of 6 -> ``[3, 4, 5]``. Sun et al. found skipping (:func:`uniform_map`) slightly better,
    as the last layers alone miss the lower layers' more general features.
    """
    _check_sizes(n_student, n_teacher)
    return list(range(n_teacher - n_student, n_teacher))


def explicit_map(mapping: dict[int, int], n_student: int, n_teacher: int) -> dict[int, int]:
    """Validate a hand-written ``{student_layer: teacher_layer}`` map and return it sorted.

    Keys must be distinct student layers in ``[0, n_student)`` and values teacher layers in
    ``[0, n_teacher)``; several student layers may share a teacher layer. Negative indices are
    rejected rather than wrapped, so a typo cannot silently pick the wrong layer.
    """
    _check_positive(n_student, n_teacher)
    if not isinstance(mapping, dict) or not mapping:
        raise ConfigError(f"expected a non-empty dict {{student_layer: teacher_layer}}, got {mapping!r}",
                          key="mapping")
    out: dict[int, int] = {}
    for s, t in sorted(mapping.items(), key=lambda kv: (str(type(kv[0])), kv[0])):
        for what, v, n in (("student", s, n_student), ("teacher", t, n_teacher)):
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < n:
                raise ConfigError(f"expected {what} layer indices as ints in [0, {n}), got {v!r} "
                                  f"in {s!r}: {t!r}", key="mapping")
        out[s] = t
    return out


def layer_pairs(layer_map: str, n_student: int, n_teacher: int, *, k: int | None = None,
                pairs: Sequence[tuple[int, int]] = ()) -> list[tuple[int, int]]:
    """The ``(student_layer, teacher_layer)`` pairs a recipe's ``layer_map`` option names.

    - ``uniform``: every student layer, :func:`uniform_map`.
    - ``last_k``: the last ``k`` student layers <- the last ``k`` teacher layers, in order
      (``k`` = 3 of a 3-layer student and a 6-layer teacher: ``(0, 3), (1, 4), (2, 5)``;
      ``k`` = 1 is MiniLM's "last layer only"); ``k=None`` is every student layer, i.e.
      :func:`last_k_map` (PKD-Last).
    - ``explicit``: ``pairs`` as given, validated by :func:`explicit_map`.
    - ``learned``: every student layer with every teacher layer (a :class:`LearnedLayerMap`
      weighs them).

    Errors are :class:`ConfigError` naming the recipe key at fault (``k``, ``pairs``,
    ``layer_map``).
    """
    _check_positive(n_student, n_teacher)
    if layer_map == "uniform":
        if n_student > n_teacher:
            raise ConfigError(f"uniform needs no more student layers ({n_student}) than teacher layers "
                              f"({n_teacher}); use explicit or learned", key="layer_map")
        return list(enumerate(uniform_map(n_student, n_teacher)))
    if layer_map == "last_k":
        k = n_student if k is None else k
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= min(n_student, n_teacher):
            raise ConfigError(f"expected an int in [1, {min(n_student, n_teacher)}] (student has {n_student} "
                              f"layers, teacher {n_teacher}), got {k!r}", key="k")
        return [(n_student - k + i, t) for i, t in enumerate(last_k_map(k, n_teacher))]
    if layer_map == "explicit":
        mapping: dict[int, int] = {}
        for pair in pairs:
            s, t = pair
            if s in mapping:
                raise ConfigError(f"student layer {s} is paired twice", key="pairs")
            mapping[s] = t
        try:
            return list(explicit_map(mapping, n_student, n_teacher).items())
        except ConfigError as exc:
            raise ConfigError(exc.bare, key="pairs") from exc
    if layer_map == "learned":
        return [(s, t) for s in range(n_student) for t in range(n_teacher)]
    raise ConfigError(f"expected uniform, last_k, explicit or learned, got {layer_map!r}", key="layer_map")


class LearnedLayerMap(nn.Module):
    """Learnable many-to-many student <- teacher layer weights (soft form of BERT-EMD, Li et al. 2020).

    Each student layer ``i`` holds a softmax distribution ``w[i, :]`` over teacher layers
    (uniform at init) and the loss is ``sum_ij w[i, j] * loss_fn(student_hs[i], teacher_hs[j])``.
    BERT-EMD solves an earth-mover's transport problem for the weights; this module instead
    learns them by gradient descent, which is simpler but lets each row drift toward the
    teacher layer the student already matches best, so it is meant to be trained alongside
    the student with a modest learning rate (or frozen after a warm-up).
    """

    def __init__(self, n_student: int, n_teacher: int) -> None:
        super().__init__()
        _check_positive(n_student, n_teacher)
        self.n_student = n_student
        self.n_teacher = n_teacher
        self.logits = nn.Parameter(torch.zeros(n_student, n_teacher))  # [S, T_layers]

    def weights(self) -> torch.Tensor:
        """Row-stochastic ``[n_student, n_teacher]`` weights (each row sums to 1)."""
        return torch.softmax(self.logits, dim=1)

    def forward(
        self,
        student_hs: Sequence[torch.Tensor],
        teacher_hs: Sequence[torch.Tensor],
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        if len(student_hs) != self.n_student or len(teacher_hs) != self.n_teacher:
            raise ValueError(f"LearnedLayerMap: expected {self.n_student} student and {self.n_teacher} "
                             f"teacher layers, got {len(student_hs)} and {len(teacher_hs)}")
        cost = torch.stack([
            torch.stack([loss_fn(s, t).reshape(()) for t in teacher_hs]) for s in student_hs
        ])  # [S, T_layers]
        return (self.weights() * cost).sum()

    def extra_repr(self) -> str:
        return f"n_student={self.n_student}, n_teacher={self.n_teacher}"
