"""Pure saliency and mask math for unstructured and semi-structured sparsity.

No modules here: functions take weights, statistics and a target and return keep-masks
(``True`` = keep) or updated weights. The registered methods in
:mod:`slimkit.prune.unstructured` do the module plumbing (hooks, gradients, ``targets``).

Conventions: a Linear weight is ``[out, in]``; a conv kernel ``[out, in, kh, kw]`` is
viewed as a matrix ``[out, in*kh*kw]`` except for N:M, which groups along input
channels (channels-last view, as NVIDIA's 2:4 kernels expect).
"""
from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F

from ..core.targets import first_match
from .masks import _n_prune, global_topk_masks, topk_mask

# -- weight classes (See et al. 2016) ----------------------------------------------------------

# Name fragments that put a Linear into the "attention" or "ffn" class. Order matters:
# attention is tested first, so "attention.output.dense" is attention, not ffn.
_ATTENTION = re.compile(r"(^|[._])(attn|attention|self_attn|query|key|value|q_proj|k_proj|v_proj|o_proj|out_proj)"
                        r"([._]|$)")
_FFN = re.compile(r"(^|[._])(intermediate|mlp|ffn|feed_forward|fc1|fc2|output|dense_h_to_4h|dense_4h_to_h)([._]|$)")


def weight_class(name: str, type_name: str, classes: dict[str, tuple[str, ...]] | None = None) -> str:
    """The weight class of module ``name`` (of class ``type_name``).

    A *class* in See et al. (2016) is a group of weights that play the same role (all
    embeddings, all attention projections, all FFN weights); class-uniform and
    class-distribution pruning treat each class separately, because different roles have
    very different weight scales. ``classes`` maps a class name to module-name patterns
    (fnmatch, or ``re:`` + regular expression); the first class with a matching pattern
    wins. Modules matching none fall back to the default rule: ``"embedding"`` for
    embeddings, ``"attention"`` / ``"ffn"`` for Linears whose dotted name contains an
    attention / feed-forward word, else the module type in lower case (``"conv2d"``,
    ``"linear"``).
    """
    for cls_name, patterns in (classes or {}).items():
        if first_match(patterns, name) is not None:
            return cls_name
    if "Embedding" in type_name:
        return "embedding"
    if type_name == "Linear" or type_name.endswith("Linear"):
        low = name.lower()
        if _ATTENTION.search(low):
            return "attention"
        if _FFN.search(low):
            return "ffn"
    return type_name.lower()


def class_uniform_masks(scores: list[torch.Tensor], labels: list[str], sparsity: float) -> list[torch.Tensor]:
    """Every class pruned to ``sparsity``, with one threshold per class (pooled over its tensors)."""
    out: list[torch.Tensor | None] = [None] * len(scores)
    for label in dict.fromkeys(labels):
        idx = [i for i, lab in enumerate(labels) if lab == label]
        for i, m in zip(idx, global_topk_masks([scores[i] for i in idx], sparsity)):
            out[i] = m
    return out  # type: ignore[return-value]


def class_sigmas(weights: list[torch.Tensor], labels: list[str]) -> dict[str, float]:
    """Standard deviation of the weights of each class (all its tensors pooled)."""
    sig = {}
    for label in dict.fromkeys(labels):
        pooled = torch.cat([w.detach().reshape(-1).float() for w, lab in zip(weights, labels) if lab == label])
        sig[label] = float(pooled.std()) if pooled.numel() > 1 else 0.0
    return sig


def class_distribution_masks(
    weights: list[torch.Tensor], labels: list[str], sparsity: float | None = None, lam: float | None = None,
) -> tuple[list[torch.Tensor], float]:
    """Prune ``|w| < lam * sigma_c`` per class c (See et al. 2016, "class-distribution").

    With ``lam`` given that is the rule as stated. With ``sparsity`` instead, ``lam`` is
    solved so the overall sparsity is reached: ``|w| < lam * sigma_c`` iff
    ``|w| / sigma_c < lam``, so a global top-k over the normalised scores ``|w| / sigma_c``
    is exactly the class-distribution rule for the lambda that prunes that many weights.
    Returns ``(masks, lam)``.
    """
    if (sparsity is None) == (lam is None):
        raise ValueError("give exactly one of sparsity and lam")
    sig = class_sigmas(weights, labels)
    normed = [w.detach().abs().float() / max(sig[lab], 1e-12) for w, lab in zip(weights, labels)]
    if lam is not None:
        return [n >= lam for n in normed], float(lam)
    masks = global_topk_masks(normed, float(sparsity))  # type: ignore[arg-type]
    pruned = torch.cat([n[~m].reshape(-1) for n, m in zip(normed, masks)])
    return masks, float(pruned.max()) if pruned.numel() else 0.0


# -- second order: OBD -------------------------------------------------------------------------

def obd_saliency(weight: torch.Tensor, hess_diag: torch.Tensor) -> torch.Tensor:
    """Optimal Brain Damage saliency ``s_i = 1/2 h_ii w_i^2`` (LeCun et al. 1990).

    At a minimum (zero gradient) with a diagonal Hessian this is exactly the loss increase
    from zeroing ``w_i`` alone. ``hess_diag`` is usually the empirical Fisher diagonal.
    """
    return 0.5 * hess_diag * weight.detach() ** 2


# -- second order: SparseGPT (layer-wise OBS) --------------------------------------------------

def sparsegpt_prune(
    weight: torch.Tensor, hessian: torch.Tensor, sparsity: float = 0.5, *,
    n: int = 0, m: int = 0, blocksize: int = 128, damp: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune a Linear weight with SparseGPT (Frantar & Alistarh 2023); returns ``(new_weight, keep_mask)``.

    Minimises ``||W X - W' X||^2`` column by column: each pruned weight's error is pushed
    onto the not-yet-processed columns of its row through the inverse Hessian
    ``H^-1`` (``H = X X^T``), taken from the upper Cholesky factor of ``H^-1`` so each
    step is a rank-one update (the "inverse-Hessian Cholesky trick"). Masks are chosen per
    block of ``blocksize`` columns by the OBS score ``w^2 / [H^-1]_jj^2`` ("adaptive mask
    selection"), or per group of ``m`` columns keeping ``n`` when ``n, m`` are given (N:M).

    ``weight``: ``[out, in]``; ``hessian``: ``[in, in]``, e.g. ``sum_x x x^T``; ``damp``
    adds ``damp * mean(diag H)`` to the diagonal so H is invertible.
    """
    W = weight.detach().clone().double()  # [out, in]
    H = hessian.detach().clone().double()  # [in, in]
    cols = W.shape[1]
    if H.shape != (cols, cols):
        raise ValueError(f"hessian must be [{cols}, {cols}], got {list(H.shape)}")
    dead = torch.diag(H) == 0  # inputs that never fire: their weights are irrelevant
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H += damp * torch.mean(torch.diag(H)) * torch.eye(cols, dtype=H.dtype)
    L = torch.linalg.cholesky(H)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)  # [in, in] upper factor of H^-1
    pruned = torch.zeros_like(W, dtype=torch.bool)  # [out, in]
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1 = W[:, i1:i2].clone()  # [out, b]
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]  # [b, b]
        d1 = torch.diag(Hinv1)  # [b]
        mask1 = torch.zeros_like(W1, dtype=torch.bool)  # True = prune
        if not n:
            score = W1**2 / d1.reshape(1, -1) ** 2  # [out, b]
            mask1 = ~topk_mask(score, sparsity)
        for i in range(i2 - i1):
            if n and i % m == 0:
                score = W1[:, i:i + m] ** 2 / d1[i:i + m].reshape(1, -1) ** 2  # [out, m]
                drop = torch.topk(score, m - n, dim=1, largest=False).indices
                mask1.scatter_(1, i + drop, True)
            w = W1[:, i]  # [out]
            q = w.clone()
            q[mask1[:, i]] = 0
            Q1[:, i] = q
            err = (w - q) / d1[i]  # [out]
            W1[:, i:] -= err.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        pruned[:, i1:i2] = mask1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    keep = ~pruned
    return (W * keep).to(weight.dtype), keep


def reconstruction_error(weight: torch.Tensor, new_weight: torch.Tensor, x: torch.Tensor) -> float:
    """``||x W^T - x W'^T||_F^2`` over calibration inputs ``x`` ``[N, in]``: what layer-wise OBS minimises."""
    return float(((x @ (weight - new_weight).T) ** 2).sum())


# -- Wanda -------------------------------------------------------------------------------------

def wanda_scores(weight: torch.Tensor, act_norm: torch.Tensor) -> torch.Tensor:
    """Wanda importance ``|W_ij| * ||X_j||_2`` (Sun et al. 2023); ``act_norm`` ``[in]`` is the input-feature L2 norm."""
    return weight.detach().abs() * act_norm.reshape(1, -1)  # [out, in]


def rowwise_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Drop the ``sparsity`` fraction of lowest scores in every row (Wanda compares per output)."""
    rows = scores.reshape(scores.shape[0], -1)  # [out, k]
    n_drop = _n_prune(rows.shape[1], sparsity)
    keep = torch.ones_like(rows, dtype=torch.bool)
    if n_drop:
        keep.scatter_(1, torch.topk(rows, n_drop, dim=1, largest=False).indices, False)
    return keep.reshape(scores.shape)


# -- block sparsity ----------------------------------------------------------------------------

def block_scores(weight: torch.Tensor, block: tuple[int, int], reduce: str = "max") -> torch.Tensor:
    """Score per ``block`` tile of the matrix view (max |w| or L2 norm); edges are zero-padded.

    Returns ``[ceil(rows / bh), ceil(cols / bw)]``.
    """
    bh, bw = block
    mat = weight.detach().reshape(weight.shape[0], -1).abs().float()  # [rows, cols]
    r, c = mat.shape
    pad = F.pad(mat, (0, (-c) % bw, 0, (-r) % bh))  # [R, C] multiples of the block
    tiles = pad.reshape(pad.shape[0] // bh, bh, pad.shape[1] // bw, bw)  # [R/bh, bh, C/bw, bw]
    if reduce == "max":
        return tiles.amax(dim=(1, 3))
    if reduce == "l2":
        return tiles.pow(2).sum(dim=(1, 3)).sqrt()
    raise ValueError(f"reduce must be 'max' or 'l2', got {reduce!r}")


def expand_block_mask(block_keep: torch.Tensor, block: tuple[int, int], shape: torch.Size) -> torch.Tensor:
    """Blow a per-block keep-mask up to the weight's shape (cropping the padding)."""
    bh, bw = block
    rows = shape[0]
    cols = math.prod(shape[1:]) if len(shape) > 1 else 1
    full = block_keep.repeat_interleave(bh, 0).repeat_interleave(bw, 1)[:rows, :cols]  # [rows, cols]
    return full.reshape(shape)


def block_mask(weight: torch.Tensor, block: tuple[int, int], sparsity: float, reduce: str = "max") -> torch.Tensor:
    """Keep the top ``1 - sparsity`` of blocks by score; the mask is constant on each block."""
    return expand_block_mask(topk_mask(block_scores(weight, block, reduce), sparsity), block, weight.shape)


# -- N:M ---------------------------------------------------------------------------------------

def nm_matrix(weight: torch.Tensor) -> torch.Tensor:
    """The ``[out, K]`` view N:M groups along: input dim for Linear, channels-last for conv kernels."""
    if weight.dim() > 2:
        return weight.movedim(1, -1).reshape(weight.shape[0], -1)  # [out, kh*kw*in]
    return weight.reshape(weight.shape[0], -1)


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the ``n`` highest scores in every ``m`` consecutive entries along the input dim.

    ``scores`` has the weight's shape; conv kernels are grouped along input channels
    (``[out, kh, kw, in]`` order), so the groups are what 2:4 sparse tensor cores use.
    Raises ``ValueError`` when the grouped dim is not a multiple of ``m``.
    """
    if not 0 < n <= m:
        raise ValueError(f"need 0 < n <= m, got n={n}, m={m}")
    mat = nm_matrix(scores)  # [out, K]
    if mat.shape[1] % m:
        raise ValueError(f"the grouped dim ({mat.shape[1]}) is not a multiple of m={m}")
    groups = mat.reshape(mat.shape[0], -1, m)  # [out, K/m, m]
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(2, torch.topk(groups, n, dim=2).indices, True)
    keep = keep.reshape(mat.shape)
    if scores.dim() > 2:
        shp = scores.movedim(1, -1).shape  # [out, kh, kw, in]
        return keep.reshape(shp).movedim(-1, 1).contiguous()
    return keep.reshape(scores.shape)


def nm_ok(mask: torch.Tensor, n: int, m: int) -> bool:
    """True when every group of ``m`` (as :func:`nm_mask` groups them) keeps at most ``n``."""
    mat = nm_matrix(mask)
    if mat.shape[1] % m:
        return False
    return bool((mat.reshape(mat.shape[0], -1, m).sum(-1) <= n).all())


__all__ = [
    "block_mask",
    "block_scores",
    "class_distribution_masks",
    "class_sigmas",
    "class_uniform_masks",
    "expand_block_mask",
    "nm_mask",
    "nm_matrix",
    "nm_ok",
    "obd_saliency",
    "reconstruction_error",
    "rowwise_mask",
    "sparsegpt_prune",
    "wanda_scores",
    "weight_class",
]
