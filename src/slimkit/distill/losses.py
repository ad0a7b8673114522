"""Knowledge-distillation losses: small pure functions on student/teacher tensors.

Every function takes already-computed tensors (logits, hidden states, attention maps,
feature maps) and returns a scalar loss; none of them runs a model, so each can be tested
on hand-made tensors. Teacher tensors are not detached here: a frozen teacher should be run
under ``torch.no_grad()`` by the caller, and mutual / online distillation can then still
backpropagate into both sides.

Masks follow the Hugging Face ``attention_mask`` convention: ``[B, T]``, 1/True for a real
token and 0/False for padding; padded positions never contribute to a loss.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

_EPS = 1e-12


def _check_same_shape(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{what}: student and teacher shapes must match, got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")


def _token_mask(mask: torch.Tensor | None, x: torch.Tensor, what: str) -> torch.Tensor | None:
    """Validate a [B, T] mask against ``x`` [B, T, ...] and return it as float."""
    if mask is None:
        return None
    if x.dim() < 3 or tuple(mask.shape) != tuple(x.shape[:2]):
        raise ValueError(f"{what}: mask must be [B, T] matching a [B, T, D] input, got mask "
                         f"{tuple(mask.shape)} for input {tuple(x.shape)}")
    if not bool(mask.any()):
        raise ValueError(f"{what}: mask has no real (non-padding) position")
    return mask.to(x.dtype)


# --------------------------------------------------------------------------- logits


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    temperature: float = 4.0,
    alpha: float = 0.5,
) -> torch.Tensor:
    """Hinton et al. 2015, "Distilling the Knowledge in a Neural Network".

    ``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, labels)``.
    The KL gradient shrinks like ``1/T^2``; multiplying by ``T^2`` keeps the soft-target
    term on the same scale whatever the temperature, so ``alpha`` means the same thing at
    T=2 and T=20. With ``labels=None`` the loss is pure KD (``alpha`` is ignored).
    Logits are ``[..., C]`` (e.g. ``[B, C]`` or token-level ``[B, T, C]``); the KL is averaged
    over rows, and labels equal to -100 are ignored by the cross-entropy.
    """
    if temperature <= 0:
        raise ValueError(f"kd_loss: temperature must be > 0, got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"kd_loss: alpha must be in [0, 1], got {alpha}")
    _check_same_shape(student_logits, teacher_logits, "kd_loss")
    n_cls = student_logits.shape[-1]
    s = student_logits.reshape(-1, n_cls)  # [N, C]
    t = teacher_logits.reshape(-1, n_cls)  # [N, C]
    log_ps = F.log_softmax(s / temperature, dim=-1)  # [N, C]
    log_pt = F.log_softmax(t / temperature, dim=-1)  # [N, C]
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(-1).mean()  # KL(p_t || p_s), mean over rows
    soft = kl * temperature**2
    if labels is None:
        return soft
    hard = F.cross_entropy(s, labels.reshape(-1), ignore_index=-100)
    return alpha * soft + (1.0 - alpha) * hard


def logit_mse(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Ba & Caruana 2014, "Do Deep Nets Really Need to be Deep?": regress the teacher's logits.

    Matching logits rather than probabilities keeps information the softmax squashes (the
    relative size of very negative logits); it is the T -> infinity limit of KD.
    """
    _check_same_shape(student_logits, teacher_logits, "logit_mse")
    return F.mse_loss(student_logits, teacher_logits)


# --------------------------------------------------------------------------- hidden states


def hidden_mse(
    student_h: torch.Tensor,
    teacher_h: torch.Tensor,
    proj: nn.Module | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """FitNets (Romero et al. 2015) / TinyBERT (Jiao et al. 2020) hidden-state regression.

    ``proj`` (FitNets' "regressor", TinyBERT's ``W_h``) maps the narrower student width to
    the teacher's, so a 384-wide student can learn from a 768-wide teacher; it is trained
    together with the student. Inputs are ``[B, T, D]`` (or any shape when ``mask`` is None,
    e.g. conv maps with a conv ``proj``); ``mask`` ``[B, T]`` drops padded tokens from the
    mean.
    """
    s = proj(student_h) if proj is not None else student_h  # [B, T, D_t]
    if s.shape != teacher_h.shape:
        hint = "" if proj is not None else "; pass proj to map student width to teacher width"
        raise ValueError(f"hidden_mse: (projected) student shape {tuple(s.shape)} != teacher shape "
                         f"{tuple(teacher_h.shape)}{hint}")
    m = _token_mask(mask, teacher_h, "hidden_mse")
    sq = (s - teacher_h).pow(2)  # [B, T, D]
    if m is None:
        return sq.mean()
    per_tok = sq.flatten(2).mean(-1)  # [B, T]
    return (per_tok * m).sum() / m.sum()


def cosine_loss(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``1 - cos(a, b)`` along the last dim, averaged (DistilBERT, Sanh et al. 2019).

    Aligns the *direction* of student and teacher vectors, not their norm. Works on
    ``[B, D]`` sentence embeddings and on ``[B, T, D]`` hidden states, where ``mask`` ``[B, T]``
    drops padded tokens.
    """
    _check_same_shape(a, b, "cosine_loss")
    m = _token_mask(mask, a, "cosine_loss")
    dist = 1.0 - F.cosine_similarity(a, b, dim=-1, eps=1e-8)  # [B] or [B, T]
    if m is None:
        return dist.mean()
    return (dist * m).sum() / m.sum()


# --------------------------------------------------------------------------- attention maps


def _match_heads(
    s: torch.Tensor, t: torch.Tensor, heads: Literal["match", "mean"], what: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Make [B, H, T, T] student/teacher maps comparable head by head."""
    if s.dim() != 4 or t.dim() != 4 or s.shape[-1] != s.shape[-2]:
        raise ValueError(f"{what}: attention maps must be [B, H, T, T], got {tuple(s.shape)} and "
                         f"{tuple(t.shape)}")
    if heads == "mean":
        # The mean of probability rows is still a probability row, so averaging heads is a
        # valid (if lossy) way to compare models with different head counts.
        s, t = s.mean(1, keepdim=True), t.mean(1, keepdim=True)  # [B, 1, T, T]
    elif heads != "match":
        raise ValueError(f"{what}: heads must be 'match' or 'mean', got {heads!r}")
    elif s.shape[1] != t.shape[1]:
        raise ValueError(f"{what}: student has {s.shape[1]} heads, teacher has {t.shape[1]}; "
                         "pass heads='mean' to compare head-averaged maps")
    _check_same_shape(s, t, what)
    return s, t


def attention_kl(
    student_attn: torch.Tensor,
    teacher_attn: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    heads: Literal["match", "mean"] = "match",
) -> torch.Tensor:
    """KL(teacher row || student row) of attention probabilities ``[B, H, T, T]``.

    TinyBERT (Jiao et al. 2020) transfers attention maps and MiniLM (Wang et al. 2020) uses
    exactly this KL; each query row is a distribution over keys. Averaged over batch, heads
    and (real) query positions; ``mask`` ``[B, T]`` drops padded query rows and key columns.
    ``heads="mean"`` averages heads on both sides when the head counts differ.
    """
    s, t = _match_heads(student_attn, teacher_attn, heads, "attention_kl")
    kl = torch.xlogy(t, t) - t * s.clamp_min(_EPS).log()  # [B, H, T, T]
    if mask is None:
        return kl.sum(-1).mean()
    m = _token_mask(mask, s.transpose(1, 2), "attention_kl")  # [B, T]
    per_row = (kl * m[:, None, None, :]).sum(-1)  # [B, H, T], padded keys dropped
    return (per_row * m[:, None, :]).sum() / (m.sum() * s.shape[1])


def attention_mse(
    student_attn: torch.Tensor,
    teacher_attn: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    heads: Literal["match", "mean"] = "match",
) -> torch.Tensor:
    """Mean squared error between attention maps ``[B, H, T, T]`` (TinyBERT, Jiao et al. 2020).

    ``mask`` ``[B, T]`` keeps only (query, key) pairs where both tokens are real.
    """
    s, t = _match_heads(student_attn, teacher_attn, heads, "attention_mse")
    sq = (s - t).pow(2)  # [B, H, T, T]
    if mask is None:
        return sq.mean()
    m = _token_mask(mask, s.transpose(1, 2), "attention_mse")  # [B, T]
    pair = m[:, :, None] * m[:, None, :]  # [B, T, T]
    return (sq * pair[:, None]).sum() / (pair.sum() * s.shape[1])


def _relation(x: torch.Tensor, n_heads: int, key_mask: torch.Tensor | None) -> torch.Tensor:
    """Log of softmax(x_h x_h^T / sqrt(d_h)) per relation head: [B, T, D] -> [B, R, T, T]."""
    b, n_tok, width = x.shape
    d = width // n_heads
    xh = x.reshape(b, n_tok, n_heads, d).transpose(1, 2)  # [B, R, T, d]
    scores = xh @ xh.transpose(-1, -2) / math.sqrt(d)  # [B, R, T, T]
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    return F.log_softmax(scores, dim=-1)


def minilm_relation_loss(
    s_q: torch.Tensor,
    s_k: torch.Tensor,
    s_v: torch.Tensor,
    t_q: torch.Tensor,
    t_k: torch.Tensor,
    t_v: torch.Tensor,
    n_relation_heads: int,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """MiniLMv2 (Wang et al. 2021) multi-head self-attention relation distillation.

    Q, K and V ``[B, T, D]`` (all heads concatenated) are re-split into ``n_relation_heads``
    relation heads on both sides, so student width ``D_s`` and teacher width ``D_t`` (and
    their attention head counts) may differ: only the ``[B, R, T, T]`` relation maps
    ``softmax(X X^T / sqrt(D/R))`` are compared. Returns the sum over the Q-Q, K-K and V-V
    relations of KL(teacher || student), each averaged over batch, relation heads and real
    query positions; ``mask`` ``[B, T]`` removes padded keys and queries.
    """
    if n_relation_heads < 1:
        raise ValueError(f"minilm_relation_loss: n_relation_heads must be >= 1, got {n_relation_heads}")
    for name, x in (("s_q", s_q), ("s_k", s_k), ("s_v", s_v), ("t_q", t_q), ("t_k", t_k), ("t_v", t_v)):
        if x.dim() != 3 or x.shape[-1] % n_relation_heads:
            raise ValueError(f"minilm_relation_loss: {name} must be [B, T, D] with D divisible by "
                             f"n_relation_heads={n_relation_heads}, got {tuple(x.shape)}")
    m = _token_mask(mask, s_q, "minilm_relation_loss")
    key_mask = None if mask is None else mask.bool()
    total = s_q.new_zeros(())
    for s, t in ((s_q, t_q), (s_k, t_k), (s_v, t_v)):
        if s.shape[:2] != t.shape[:2]:
            raise ValueError(f"minilm_relation_loss: student {tuple(s.shape)} and teacher "
                             f"{tuple(t.shape)} differ in batch or sequence length")
        log_s = _relation(s, n_relation_heads, key_mask)  # [B, R, T, T]
        log_t = _relation(t, n_relation_heads, key_mask)  # [B, R, T, T]
        p_t = log_t.exp()  # [B, R, T, T], exactly 0 at padded keys
        if key_mask is not None:
            # Padded keys have log = -inf on both sides; zero the logs so neither the value
            # nor the gradient ever sees 0 * (-inf - -inf).
            pad = ~key_mask[:, None, None, :]
            log_s, log_t = log_s.masked_fill(pad, 0.0), log_t.masked_fill(pad, 0.0)
        kl = (p_t * (log_t - log_s)).sum(-1)  # [B, R, T]
        if m is None:
            total = total + kl.mean()
        else:
            total = total + (kl * m[:, None, :]).sum() / (m.sum() * n_relation_heads)
    return total


# --------------------------------------------------------------------------- conv feature maps


def _spatial_attention(fmap: torch.Tensor, p: float) -> torch.Tensor:
    """[B, C, H, W] -> L2-normalised sum_c |A_c|^p, flattened to [B, H*W]."""
    return F.normalize(fmap.abs().pow(p).sum(1).flatten(1), dim=1)


def attention_transfer(student_fmap: torch.Tensor, teacher_fmap: torch.Tensor, p: float = 2) -> torch.Tensor:
    """Zagoruyko & Komodakis 2017, "Paying More Attention to Attention".

    Each ``[B, C, H, W]`` map is summarised by its spatial attention ``sum_c |A_c|^p``,
    L2-normalised, so channel counts may differ and only *where* the network looks matters,
    not how strongly. Returns the mean squared difference of the normalised maps, as in the
    authors' reference code.
    """
    if student_fmap.dim() != 4 or teacher_fmap.dim() != 4:
        raise ValueError("attention_transfer: feature maps must be [B, C, H, W], got "
                         f"{tuple(student_fmap.shape)} and {tuple(teacher_fmap.shape)}")
    if student_fmap.shape[0] != teacher_fmap.shape[0] or student_fmap.shape[2:] != teacher_fmap.shape[2:]:
        raise ValueError("attention_transfer: batch and spatial size must match (interpolate first), got "
                         f"{tuple(student_fmap.shape)} and {tuple(teacher_fmap.shape)}")
    diff = _spatial_attention(student_fmap, p) - _spatial_attention(teacher_fmap, p)  # [B, H*W]
    return diff.pow(2).mean()


def fsp_matrix(f1: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
    """Flow-of-solution-procedure matrix of Yim et al. 2017: ``[B, C1, H, W] x [B, C2, H, W] -> [B, C1, C2]``.

    The Gram matrix between two layers' channels, averaged over spatial positions, describes
    how the network transforms features from one layer to the next.
    """
    if f1.dim() != 4 or f2.dim() != 4 or f1.shape[0] != f2.shape[0] or f1.shape[2:] != f2.shape[2:]:
        raise ValueError("fsp_matrix: both maps must be [B, C, H, W] with the same batch and spatial size "
                         f"(pool the larger one first), got {tuple(f1.shape)} and {tuple(f2.shape)}")
    a = f1.flatten(2)  # [B, C1, HW]
    b = f2.flatten(2)  # [B, C2, HW]
    return a @ b.transpose(1, 2) / a.shape[-1]  # [B, C1, C2]


def fsp_loss(
    student_f1: torch.Tensor, student_f2: torch.Tensor, teacher_f1: torch.Tensor, teacher_f2: torch.Tensor
) -> torch.Tensor:
    """FSP loss (Yim et al. 2017) for one layer pair: mean squared difference of FSP matrices.

    Student and teacher must have the same channel counts at both layers (the paper pairs
    same-width stages); sum this over several layer pairs with weights as needed.
    """
    g_s = fsp_matrix(student_f1, student_f2)  # [B, C1, C2]
    g_t = fsp_matrix(teacher_f1, teacher_f2)  # [B, C1, C2]
    _check_same_shape(g_s, g_t, "fsp_loss")
    return (g_s - g_t).pow(2).mean()


# --------------------------------------------------------------------------- relational KD


def _check_embeddings(s: torch.Tensor, t: torch.Tensor, min_n: int, what: str) -> None:
    if s.dim() != 2 or t.dim() != 2 or s.shape[0] != t.shape[0]:
        raise ValueError(f"{what}: embeddings must be [N, D] with the same N, got {tuple(s.shape)} and "
                         f"{tuple(t.shape)}")
    if s.shape[0] < min_n:
        raise ValueError(f"{what}: needs at least {min_n} samples in the batch, got {s.shape[0]}")


def _pairwise_distance(x: torch.Tensor) -> torch.Tensor:
    """[N, D] -> [N, N] Euclidean distances, safe to differentiate at zero distance."""
    diff = x[:, None, :] - x[None, :, :]  # [N, N, D]
    return diff.pow(2).sum(-1).clamp_min(_EPS).sqrt()


def rkd_distance_loss(s_emb: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
    """Park et al. 2019, "Relational Knowledge Distillation", distance-wise loss.

    Compares the ``[N, N]`` pairwise-distance structure of a batch, each side divided by its
    mean off-diagonal distance, with a Huber (smooth L1) loss. Because only relations are
    matched, student and teacher widths may differ and the loss ignores the embeddings'
    global scale and any rotation.
    """
    _check_embeddings(s_emb, t_emb, 2, "rkd_distance_loss")
    n = s_emb.shape[0]
    off = ~torch.eye(n, dtype=torch.bool, device=s_emb.device)  # [N, N]
    d_s = _pairwise_distance(s_emb)[off]  # [N*(N-1)]
    d_t = _pairwise_distance(t_emb)[off]  # [N*(N-1)]
    return F.smooth_l1_loss(d_s / d_s.mean(), d_t / d_t.mean())


def _angles(x: torch.Tensor) -> torch.Tensor:
    """[N, D] -> [N, N, N]: cos of the angle at vertex j between i-j and k-j."""
    e = F.normalize(x[None, :, :] - x[:, None, :], dim=-1)  # [N(j), N(i), D] unit vectors j -> i
    return e @ e.transpose(1, 2)  # [N, N, N]


def rkd_angle_loss(s_emb: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
    """Park et al. 2019, angle-wise relational loss: Huber loss between triplet angle cosines.

    Angles are a higher-order relation than distances and are invariant to scale,
    rotation and translation of either embedding space.
    """
    _check_embeddings(s_emb, t_emb, 3, "rkd_angle_loss")
    return F.smooth_l1_loss(_angles(s_emb), _angles(t_emb))
