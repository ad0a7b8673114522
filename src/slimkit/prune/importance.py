"""Importance criteria: one score per prunable unit (channel, neuron, head) along a dim.

Every function here is pure tensor math: no modules, no hooks, no data loading. Structured
pruning gathers the tensors (weights, gradients, activations) and calls these; the
allocation step (:mod:`slimkit.prune.allocation`) then decides how many units each group
keeps. A *higher* score always means *more important* (kept first).

"Unit ``i`` along ``dim``" is the slice ``t.select(dim, i)``: for a Linear weight
``[out, in]``, ``dim=0`` scores output neurons (the producer's "onorm") and ``dim=1``
scores input features (the consumer's "inorm", He et al. 2018/2019).

:data:`CRITERIA` is the one table the pruning methods dispatch through: a name maps to a
:class:`Criterion`, a pure function of a group's tensors (:class:`GroupInputs`) plus what
the caller must gather first (gradients, activations or head gates;
:mod:`slimkit.prune.unit_inputs` does that module plumbing). A new criterion is a new
entry here and a new name in the method's ``importance`` Literal.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import Tensor

from ..core.errors import ConfigError, MethodError


def _slices(t: Tensor, dim: int) -> Tensor:
    """``t`` reshaped to ``[n, rest]`` with row ``i`` the flattened slice ``t.select(dim, i)``."""
    if t.dim() == 0:
        raise ValueError("expected a tensor with at least one dim, got a scalar")
    return t.movedim(dim, 0).reshape(t.shape[dim], -1)  # [n, rest]


def lp_scores(t: Tensor, dim: int, p: float = 1) -> Tensor:
    """L_p norm of each slice of ``t`` along ``dim`` (p=1: L1 "magnitude", p=2: L2).

    Used for output-norm scores (a producer's output rows) and input-norm scores (a
    consumer's input columns); coupled groups add both with :func:`aggregate`.
    """
    if p <= 0:
        raise ValueError(f"expected p > 0, got {p}")
    return torch.linalg.vector_norm(_slices(t.detach().float(), dim), ord=p, dim=1)  # [n]


def taylor_scores(w: Tensor, grad: Tensor, dim: int) -> Tensor:
    """First-order Taylor importance of each slice, group variant of Molchanov et al. 2019.

    Removing slice ``S`` changes the loss by about ``-sum_{s in S} g_s w_s``, so the score
    is ``|sum_{s in S} w_s * g_s|`` (the absolute value of the summed contribution, *not*
    the sum of per-weight absolute values: Molchanov's group criterion squares this same
    sum, which ranks identically).

    ``grad`` is either the gradient of the loss on one batch or a gradient accumulated
    (summed/averaged) over batches, with ``w``'s shape; or a stack ``[K, *w.shape]`` of
    per-batch gradients, in which case the per-batch scores are averaged, as Molchanov
    does (averaging |.| per batch is not the same as |.| of the averaged gradient).
    """
    w = w.detach().float()
    grad = grad.detach().float()
    if grad.shape == w.shape:
        return _slices(w * grad, dim).sum(dim=1).abs()  # [n]
    if grad.dim() == w.dim() + 1 and grad.shape[1:] == w.shape:
        per_batch = (w.unsqueeze(0) * grad).movedim(dim + 1 if dim >= 0 else dim, 1)  # [K, n, ...]
        return per_batch.reshape(grad.shape[0], w.shape[dim], -1).sum(dim=2).abs().mean(dim=0)  # [n]
    raise ValueError(f"expected grad of shape {tuple(w.shape)} or [K, *{tuple(w.shape)}], got {tuple(grad.shape)}")


def fpgm_scores(w: Tensor, dim: int) -> Tensor:
    """FPGM (He et al. 2019): sum of L2 distances from each filter to all the others.

    Filters close to the geometric median of the layer can be represented by the others,
    so they are redundant: a small total distance means a low score.
    """
    flat = _slices(w.detach().float(), dim)  # [n, rest]
    return torch.cdist(flat.unsqueeze(0), flat.unsqueeze(0)).squeeze(0).sum(dim=1)  # [n]


def bn_scale_scores(gamma: Tensor) -> Tensor:
    """``|gamma|`` of a normalisation layer (network slimming, Liu et al. 2017)."""
    if gamma.dim() != 1:
        raise ValueError(f"expected a 1-d scale vector, got shape {tuple(gamma.shape)}")
    return gamma.detach().float().abs()


def entropy_scores(acts: Tensor, dim: int, bins: int = 32) -> Tensor:
    """Shannon entropy (nats) of each channel's activation histogram (Luo & Wu 2017).

    A channel whose output barely varies carries little information. Each channel is
    histogrammed over its own ``[min, max]`` range into ``bins`` bins; a constant channel
    scores 0. Luo & Wu global-average-pool conv maps first: pass ``acts.mean((2, 3))``
    (``[B, C]``) for their exact recipe, or the raw ``[B, C, H, W]`` to histogram every value.
    """
    if bins < 2:
        raise ValueError(f"expected bins >= 2, got {bins}")
    x = _slices(acts.detach().float(), dim)  # [n, m]
    lo = x.min(dim=1, keepdim=True).values
    span = x.max(dim=1, keepdim=True).values - lo  # [n, 1]
    scaled = (x - lo) / span.clamp_min(torch.finfo(x.dtype).tiny)  # [n, m] in [0, 1]
    idx = (scaled * bins).long().clamp_(0, bins - 1)  # [n, m]
    counts = torch.zeros(x.shape[0], bins, dtype=x.dtype).scatter_add_(1, idx, torch.ones_like(x))  # [n, bins]
    prob = counts / x.shape[1]
    ent = -(prob * torch.log(prob.clamp_min(1e-30))).sum(dim=1)  # [n]
    return torch.where(span.squeeze(1) > 0, ent, torch.zeros_like(ent))


def head_importance(attn_probs: Tensor, attn_grads: Tensor) -> Tensor:
    """Head importance of Michel et al. 2019: ``I_h = E_x |sum_{q,k} A_h * dL/dA_h|``.

    This is ``|dL/d xi_h|`` for a gate ``xi_h`` multiplying head ``h``'s attention
    probabilities, taken per example and averaged over the batch. Shapes ``[B, H, T, T]``
    (or ``[H, T, T]`` for one example); returns ``[H]``.
    """
    if attn_probs.shape != attn_grads.shape:
        raise ValueError(f"probs {tuple(attn_probs.shape)} and grads {tuple(attn_grads.shape)} differ")
    a, g = attn_probs.detach().float(), attn_grads.detach().float()
    if a.dim() == 3:
        a, g = a.unsqueeze(0), g.unsqueeze(0)
    if a.dim() != 4:
        raise ValueError(f"expected [B, H, T, T], got {tuple(attn_probs.shape)}")
    return (a * g).sum(dim=(2, 3)).abs().mean(dim=0)  # [B, H] -> [H]


def head_gate_contributions(w: Tensor, grad: Tensor, dim: int, head_of: Tensor, n_heads: int) -> Tensor:
    """Signed gate gradient of every head per batch, ``[K, n_heads]``, from an output projection.

    A gate ``xi_h`` multiplying head ``h``'s context output ``x_h`` (the slice entering
    the output projection ``y = W x``) has ``dL/dxi_h = sum_t x_h . dL/dx_h``, and since
    ``dL/dW[o, j] = sum_t dL/dy[t, o] x[t, j]`` this equals the sum of ``W * dL/dW`` over
    the head's input columns: no activation hook is needed, only the weight gradient.

    ``w`` is the projection weight, ``dim`` its input dim (1 for ``nn.Linear``, 0 for HF
    ``Conv1D``), ``head_of[j]`` the head of input position ``j`` (-1: in no head).
    ``grad`` is one batch's gradient (``w``'s shape) or a stack ``[K, *w.shape]``. A unit
    read by several projections (heads tied across layers) sums their contributions.
    """
    w, grad = w.detach().float(), grad.detach().float()
    if grad.shape == w.shape:
        grad = grad.unsqueeze(0)
    elif not (grad.dim() == w.dim() + 1 and grad.shape[1:] == w.shape):
        raise ValueError(f"expected grad of shape {tuple(w.shape)} or [K, *{tuple(w.shape)}], "
                         f"got {tuple(grad.shape)}")
    dim = dim % w.dim()
    head_of = torch.as_tensor(head_of, dtype=torch.long)
    if head_of.shape != (w.shape[dim],):
        raise ValueError(f"expected head_of of length {w.shape[dim]}, got shape {tuple(head_of.shape)}")
    k = grad.shape[0]
    per_col = (w.unsqueeze(0) * grad).movedim(dim + 1, 1).reshape(k, w.shape[dim], -1).sum(dim=2)  # [K, cols]
    ok = head_of >= 0
    return torch.zeros(k, n_heads).index_add_(1, head_of[ok], per_col[:, ok])  # [K, H]


def head_gate_scores(w: Tensor, grad: Tensor, dim: int, head_of: Tensor, n_heads: int) -> Tensor:
    """Michel et al. 2019 head importance ``E_batches |dL/d xi_h|`` from an output projection, ``[n_heads]``.

    See :func:`head_gate_contributions` for the arguments. The absolute value is taken
    per batch and then averaged, as in Michel's expectation: |.| of a gradient summed
    over batches would let batches of opposite sign cancel.
    """
    return head_gate_contributions(w, grad, dim, head_of, n_heads).abs().mean(dim=0)


def random_scores(n: int, seed: int) -> Tensor:
    """Uniform random scores from a private generator (the baseline every criterion must beat)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, generator=gen)


def normalize_scores(s: Tensor, how: str | None) -> Tensor:
    """Divide by the mean (``"mean"``) or max (``"max"``) so differently scaled scores compare."""
    s = s.float()
    if how is None:
        return s
    if how not in ("mean", "max"):
        raise ValueError(f"expected normalize 'mean', 'max' or None, got {how!r}")
    denom = s.abs().mean() if how == "mean" else s.abs().max()
    return s / denom if denom > 0 else s


def aggregate(scores: list[Tensor], how: str = "sum", normalize: str | None = None) -> Tensor:
    """Combine the scores of coupled members (e.g. a producer's rows and a consumer's columns).

    Coupled members have different scales (a conv kernel vs a BN scale), so each member
    is normalised first when ``normalize`` is ``"mean"`` or ``"max"``; ``how`` is one of
    ``"sum"``, ``"mean"``, ``"max"``, ``"prod"``.
    """
    if not scores:
        raise ValueError("expected at least one score tensor")
    n = scores[0].shape
    if any(s.shape != n or s.dim() != 1 for s in scores):
        raise ValueError(f"expected 1-d scores of equal length, got shapes {[tuple(s.shape) for s in scores]}")
    stack = torch.stack([normalize_scores(s, normalize) for s in scores])  # [members, n]
    if how == "sum":
        return stack.sum(dim=0)
    if how == "mean":
        return stack.mean(dim=0)
    if how == "max":
        return stack.max(dim=0).values
    if how == "prod":
        return stack.prod(dim=0)
    raise ValueError(f"expected how in 'sum', 'mean', 'max', 'prod', got {how!r}")


# -- criteria over a whole group ----------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Member:
    """One coupled tensor axis of a group, as a criterion sees it.

    ``units[j]`` is the unit that slice ``j`` of ``tensor`` along ``dim`` belongs to (-1:
    none). ``producer``: the tensor's module *makes* the units (output rows of a Linear /
    conv); ``norm``: the tensor belongs to a BatchNorm-style layer (its scale, shift or statistics). ``grad`` is the
    loss gradient of ``tensor`` (summed over batches) when the criterion needs one.
    """

    tensor: Tensor
    dim: int
    units: Tensor  # [tensor.shape[dim]] long
    attr: str  # "weight", "bias", "running_mean", ...
    producer: bool = False
    norm: bool = False
    grad: Tensor | None = None


@dataclasses.dataclass(frozen=True)
class GroupInputs:
    """Everything a criterion may read about one group; the pruning code gathers it.

    ``acts`` holds, per producer, its output activations ``[samples, channels]`` and the
    unit of each channel (entropy); ``gates`` the signed per-batch head-gate gradients
    ``[K, n_units]`` (head importance).
    """

    name: str
    n_units: int
    members: tuple[Member, ...] = ()
    seed: int = 0
    acts: tuple[tuple[Tensor, Tensor], ...] = ()
    gates: Tensor | None = None


def _per_unit(n_units: int, units: Tensor, s: Tensor) -> Tensor:
    """Slice scores ``s`` summed per unit, ``[n_units]`` float64 (slices of unit -1 dropped)."""
    ok = units >= 0
    return torch.zeros(n_units, dtype=torch.float64).index_add_(0, units[ok], s.double()[ok])


def combine_members(g: GroupInputs, criterion: str, score: Callable[[Member], Tensor | None]) -> Tensor:
    """Sum over members of each member's per-unit scores divided by their mean.

    ``score`` returns one score per slice of a member, or ``None`` to skip the member.
    Coupled tensors have different scales (a conv kernel vs a BN scale), hence the
    per-member mean normalisation. Raises :class:`MethodError` when no member was scored.
    """
    total = torch.zeros(g.n_units, dtype=torch.float64)
    used = 0
    for m in g.members:
        s = score(m)
        if s is None:
            continue
        per_unit = _per_unit(g.n_units, m.units, s)
        mean = per_unit.mean()
        total += per_unit / mean if mean > 0 else per_unit
        used += 1
    if used == 0:
        raise MethodError(f"importance {criterion!r} found no tensor to score in group {g.name!r}"
                          + _NEEDS_HINT.get(criterion, ""))
    return total.float()


def _plain(m: Member) -> bool:
    """A weight-like float tensor (not a norm layer's running statistics)."""
    return m.attr not in ("running_mean", "running_var") and m.tensor.is_floating_point()


def _l1(g: GroupInputs) -> Tensor:
    return combine_members(g, "l1", lambda m: lp_scores(m.tensor, m.dim, 1) if _plain(m) else None)


def _l2(g: GroupInputs) -> Tensor:
    # squared, so a unit spanning several slices (conv -> flatten -> Linear) adds up to its L2**2
    return combine_members(g, "l2", lambda m: lp_scores(m.tensor, m.dim, 2) ** 2 if _plain(m) else None)


def _taylor(g: GroupInputs) -> Tensor:
    return combine_members(g, "taylor", lambda m: taylor_scores(m.tensor, m.grad, m.dim)
                           if _plain(m) and m.grad is not None else None)


def _fpgm(g: GroupInputs) -> Tensor:  # FPGM compares producer filters
    return combine_members(g, "fpgm", lambda m: fpgm_scores(m.tensor, 0)
                           if m.attr == "weight" and m.tensor.dim() >= 2 and m.dim == 0 else None)


def _bn_scale(g: GroupInputs) -> Tensor:
    return combine_members(g, "bn_scale", lambda m: bn_scale_scores(m.tensor) if m.norm and m.attr == "weight" else None)


def _norm_of(role: str) -> Callable[[GroupInputs], Tensor]:
    """Squared L2 of the producers' output rows (``output_norm``) or of the consumers' input
    columns (``input_norm``): how strongly a unit is driven vs how strongly it is read."""
    def pick(m: Member) -> bool:
        return _plain(m) and m.tensor.dim() >= 2 and not m.norm and m.producer == (role == "output_norm")

    def score(g: GroupInputs) -> Tensor:
        return combine_members(g, role, lambda m: lp_scores(m.tensor, m.dim, 2) ** 2 if pick(m) else None)
    return score


def _entropy(g: GroupInputs) -> Tensor:
    """Activation entropy (Luo & Wu 2017) of each producer channel, mean-normalised per producer."""
    members = tuple(Member(tensor=a, dim=1, units=u, attr="activation") for a, u in g.acts)
    return combine_members(dataclasses.replace(g, members=members), "entropy", lambda m: entropy_scores(m.tensor, 1))


def _head(g: GroupInputs) -> Tensor:
    """Michel et al. 2019: ``E_batches |dL/d xi_h|`` from the per-batch signed gate gradients."""
    if g.gates is None or g.gates.shape[0] == 0:
        raise MethodError(f"importance 'head' has no gate gradients for group {g.name!r}")
    return g.gates.abs().mean(dim=0)  # [K, H] -> [H]


def _random(g: GroupInputs) -> Tensor:
    return random_scores(g.n_units, g.seed)


@dataclasses.dataclass(frozen=True)
class Criterion:
    """A registered importance criterion: ``score(group) -> [n_units]`` (higher = keep) and
    what the pruning code must gather first: ``"grads"`` (loss gradients), ``"acts"``
    (producer activations on calibration data) or ``"gates"`` (head-gate gradients)."""

    score: Callable[[GroupInputs], Tensor]
    needs: str | None = None
    doc: str = ""


CRITERIA: dict[str, Criterion] = {
    "l1": Criterion(_l1, doc="L1 norm of every coupled slice"),
    "l2": Criterion(_l2, doc="squared L2 norm of every coupled slice"),
    "taylor": Criterion(_taylor, "grads", "first-order Taylor |sum w * dL/dw| (Molchanov et al. 2019)"),
    "fpgm": Criterion(_fpgm, doc="distance to the other producer filters (He et al. 2019)"),
    "bn_scale": Criterion(_bn_scale, doc="|gamma| of the group's normalisation layer (Liu et al. 2017)"),
    "output_norm": Criterion(_norm_of("output_norm"), doc="squared L2 of the producers' output rows"),
    "input_norm": Criterion(_norm_of("input_norm"), doc="squared L2 of the consumers' input columns"),
    "entropy": Criterion(_entropy, "acts", "entropy of the producers' output activations (Luo & Wu 2017)"),
    "head": Criterion(_head, "gates", "head-gate gradient E|dL/d xi_h| (Michel et al. 2019)"),
    "random": Criterion(_random, doc="uniform random scores (the baseline)"),
}

_NEEDS_HINT = {
    "bn_scale": " (bn_scale needs a BatchNorm in the group)",
    "input_norm": " (input_norm needs a layer reading the group's units)",
    "entropy": " (entropy needs a Linear / Conv / Embedding producing the group's units)",
}


def get_criterion(name: str) -> Criterion:
    """The criterion registered as ``name``; an unknown name lists the known ones."""
    try:
        return CRITERIA[name]
    except KeyError:
        raise ConfigError(f"unknown importance criterion {name!r}; expected one of {sorted(CRITERIA)}",
                          key="criterion") from None


def score_group(name: str, g: GroupInputs) -> Tensor:
    """Scores ``[n_units]`` of one group under criterion ``name`` (dispatch through :data:`CRITERIA`)."""
    return get_criterion(name).score(g)


__all__ = [
    "CRITERIA",
    "Criterion",
    "GroupInputs",
    "Member",
    "aggregate",
    "bn_scale_scores",
    "combine_members",
    "entropy_scores",
    "fpgm_scores",
    "get_criterion",
    "head_gate_contributions",
    "head_gate_scores",
    "head_importance",
    "lp_scores",
    "normalize_scores",
    "random_scores",
    "score_group",
    "taylor_scores",
]
