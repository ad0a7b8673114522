"""The ``matches`` of a ``distill.intermediate`` step: what each one compares and how.

A recipe writes each match as a small mapping, e.g. ``{what: attention_relation, weight: 1.0}``
or ``{what: hidden, loss: mse}``; :func:`parse_matches` checks it strictly (unknown keys and
bad values are :class:`ConfigError` naming ``matches[i].key``) and :func:`match_loss` computes
it for one student layer against one teacher layer with the pure losses of
:mod:`slimkit.distill.losses`.

==================== ============================================================ ==============
``what``             compares                                                     options
==================== ============================================================ ==============
hidden               layer outputs: MSE (TinyBERT; a Linear maps the student      loss: mse|cosine
                     width to the teacher's when they differ) or per-token 1-cos
fitnets              FitNets hint: a trained regressor (Linear, or 1x1 conv on    (none)
                     feature maps) maps the student's output onto the teacher's,
                     MSE, whether or not the widths differ
attention            attention maps softmax(QK^T/sqrt(d)) recomputed from the     loss: kl|mse,
                     captured Q and K (TinyBERT / MiniLM-v1)                      heads: match|mean
attention_relation   MiniLM-v2 Q-Q, K-K and V-V self-attention relations; widths   relation_heads
                     and head counts may differ
attention_transfer   Zagoruyko & Komodakis: L2-normalised sum_c |A_c|^p maps       p
                     (tokens play the role of positions for [B, T, D] outputs)
fsp                  Yim et al.: Gram matrices between consecutive matched layers  (none)
                     (equal widths needed on both sides)
==================== ============================================================ ==============

Every match also takes ``weight`` (> 0, default 1). Attention maps are recomputed without
position biases, so they are exact for absolute-position models (BERT family) and the
content part of the map for relative-position ones.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any

import torch
from torch import nn

from ..core import ConfigError, MethodError
from .features import Features
from .losses import (
    attention_kl,
    attention_mse,
    attention_transfer,
    cosine_loss,
    fsp_loss,
    hidden_mse,
    minilm_relation_loss,
)

WHATS: dict[str, dict[str, Any]] = {  # what -> {option: default}
    "hidden": {"loss": "mse"},
    "fitnets": {},
    "attention": {"loss": "kl", "heads": "match"},
    "attention_relation": {"relation_heads": None},
    "attention_transfer": {"p": 2.0},
    "fsp": {},
}
_CHOICES = {("hidden", "loss"): ("mse", "cosine"), ("attention", "loss"): ("kl", "mse"),
            ("attention", "heads"): ("match", "mean")}
NEEDS_QKV = ("attention", "attention_relation")


@dataclasses.dataclass(frozen=True)
class Match:
    """One parsed match: ``what`` it compares, its ``weight`` and its ``options`` (defaults filled in)."""

    what: str
    weight: float
    options: dict[str, Any]

    @property
    def projects(self) -> bool:
        """Whether the match trains a student -> teacher projection (FitNets always, hidden when widths differ)."""
        return self.what in ("hidden", "fitnets")


def parse_matches(raw: tuple[Any, ...]) -> list[Match]:
    """Check every ``matches`` entry and fill in its defaults; errors name ``matches[i].<key>``."""
    out = []
    for i, m in enumerate(raw):
        where = f"matches[{i}]"
        if not isinstance(m, dict):
            raise ConfigError(f"expected a mapping such as {{what: hidden}}, got {m!r}", key=where)
        what = m.get("what")
        if not isinstance(what, str) or what not in WHATS:
            raise ConfigError(f"expected one of {sorted(WHATS)}, got {what!r}", key=f"{where}.what")
        allowed = WHATS[what]
        for key in m:
            if not isinstance(key, str) or key not in ("what", "weight", *allowed):
                raise ConfigError(f"unknown option for {what}; expected one of {sorted(['weight', *allowed])}",
                                  key=f"{where}.{key}")
        weight = m.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight <= 0:
            raise ConfigError(f"expected a positive number, got {weight!r}", key=f"{where}.weight")
        options = {**allowed, **{k: v for k, v in m.items() if k in allowed}}
        for key, value in options.items():
            choices = _CHOICES.get((what, key))
            if choices is not None and value not in choices:
                raise ConfigError(f"expected one of {list(choices)}, got {value!r}", key=f"{where}.{key}")
        rh = options.get("relation_heads")
        if rh is not None and (isinstance(rh, bool) or not isinstance(rh, int) or rh < 1):
            raise ConfigError(f"expected a positive int or null, got {rh!r}", key=f"{where}.relation_heads")
        p = options.get("p", 2.0)
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not p > 0:
            raise ConfigError(f"expected a positive number, got {p!r}", key=f"{where}.p")
        out.append(Match(what=what, weight=float(weight), options=options))
    return out


def make_projection(match: Match, s: torch.Tensor, t: torch.Tensor) -> nn.Module | None:
    """The trained map from a student feature ``s`` to the teacher's ``t`` a match needs, or None.

    ``[B, T, D_s] -> [B, T, D_t]``: a Linear; ``[B, C_s, H, W] -> [B, C_t, H, W]``: a 1x1 conv.
    """
    if not match.projects or (match.what == "hidden" and s.shape == t.shape):
        return None
    if s.dim() == 4 and t.dim() == 4:
        return nn.Conv2d(s.shape[1], t.shape[1], kernel_size=1).to(s.device)
    if s.dim() >= 2 and s.shape[:-1] == t.shape[:-1]:
        return nn.Linear(s.shape[-1], t.shape[-1]).to(s.device)
    raise MethodError(f"distill.intermediate: {match.what} cannot map student features {tuple(s.shape)} onto "
                      f"teacher features {tuple(t.shape)} (batch and positions must agree)")


def _as_map(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Token states ``[B, T, D]`` as a feature map ``[B, D, T, 1]`` with padded tokens zeroed; 4-D maps as they are."""
    if x.dim() == 4:
        return x
    if x.dim() != 3:
        raise MethodError(f"distill.intermediate: expected [B, T, D] or [B, C, H, W] features, got {tuple(x.shape)}")
    if mask is not None and mask.shape == x.shape[:2]:
        x = x * mask[..., None].to(x.dtype)
    return x.transpose(1, 2)[..., None]  # [B, D, T, 1]


def attention_probs(q: torch.Tensor, k: torch.Tensor, heads: int, mask: torch.Tensor | None) -> torch.Tensor:
    """``softmax(Q_h K_h^T / sqrt(d))`` per head: Q, K ``[B, T, H*d]`` -> ``[B, H, T, T]``; padded keys get 0."""
    b, n, width = q.shape
    d = width // heads
    qh = q.reshape(b, n, heads, d).transpose(1, 2)  # [B, H, T, d]
    kh = k.reshape(b, n, heads, d).transpose(1, 2)  # [B, H, T, d]
    scores = qh @ kh.transpose(-1, -2) / math.sqrt(d)  # [B, H, T, T]
    if mask is not None:
        scores = scores.masked_fill(~mask.bool()[:, None, None, :], float("-inf"))
    return torch.softmax(scores, dim=-1)


def _mask_for(mask: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
    """The batch's ``[B, T]`` attention mask when it fits ``x`` ``[B, T, ...]`` (else None: no token axis)."""
    return mask if mask is not None and x.dim() >= 3 and tuple(mask.shape) == tuple(x.shape[:2]) else None


def match_loss(match: Match, s: Features, t: Features, proj: nn.Module | None, mask: torch.Tensor | None) -> torch.Tensor:
    """One match between one student layer's features ``s`` and one teacher layer's ``t`` (a scalar)."""
    sh, th = s["hidden"], t["hidden"].to(s["hidden"].dtype)
    m = _mask_for(mask, sh)
    if match.what in ("hidden", "fitnets"):
        if match.options.get("loss") == "cosine":
            return cosine_loss(proj(sh) if proj is not None else sh, th, m)
        return hidden_mse(sh, th, proj=proj, mask=m)
    if match.what == "attention":
        a_s = attention_probs(s["q"], s["k"], s["heads"], m)  # [B, H_s, T, T]
        a_t = attention_probs(t["q"].to(sh.dtype), t["k"].to(sh.dtype), t["heads"], m)  # [B, H_t, T, T]
        fn = attention_kl if match.options["loss"] == "kl" else attention_mse
        return fn(a_s, a_t, m, heads=match.options["heads"])
    if match.what == "attention_relation":
        heads = match.options["relation_heads"] or t["heads"]
        for side, f in (("student", s), ("teacher", t)):
            if f["q"].shape[-1] % heads:
                raise MethodError(f"distill.intermediate: attention_relation: {side} width {f['q'].shape[-1]} is not "
                                  f"divisible by relation_heads={heads}; set relation_heads")
        return minilm_relation_loss(s["q"], s["k"], s["v"], t["q"].to(sh.dtype), t["k"].to(sh.dtype),
                                    t["v"].to(sh.dtype), heads, m)
    if match.what == "attention_transfer":
        return attention_transfer(_as_map(sh, m), _as_map(th, m), p=match.options["p"])
    raise MethodError(f"distill.intermediate: {match.what} is not a per-layer match")  # fsp: see fsp_chain


def fsp_chain(s_feats: list[Features], t_feats: list[Features], pairs: list[tuple[int, int]],
              mask: torch.Tensor | None) -> torch.Tensor:
    """FSP (Yim et al.) over consecutive matched pairs: Gram(s_a, s_b) vs Gram(t_a, t_b), averaged."""
    if len(pairs) < 2:
        raise MethodError("distill.intermediate: fsp compares consecutive matched layers; the layer map pairs "
                          f"only {len(pairs)} layer(s)")
    losses = []
    for (sa, ta), (sb, tb) in itertools.pairwise(pairs):
        xs = [_as_map(f["hidden"], _mask_for(mask, f["hidden"])) for f in (s_feats[sa], s_feats[sb])]
        xt = [_as_map(f["hidden"], _mask_for(mask, f["hidden"])).to(xs[0].dtype) for f in (t_feats[ta], t_feats[tb])]
        try:
            losses.append(fsp_loss(xs[0], xs[1], xt[0], xt[1]))
        except ValueError as exc:
            raise MethodError(f"distill.intermediate: fsp needs equal widths and positions on both sides: {exc}") from exc
    return torch.stack(losses).mean()


__all__ = [
    "NEEDS_QKV",
    "WHATS",
    "Match",
    "attention_probs",
    "fsp_chain",
    "make_projection",
    "match_loss",
    "parse_matches",
]
