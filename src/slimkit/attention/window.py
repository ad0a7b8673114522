"""``attention.window``: sliding-window attention with global tokens (Longformer / BigBird).

Beltagy et al. 2020 (Longformer) and Zaheer et al. 2020 (BigBird): most of what a token
needs is nearby, so each query attends only the keys within ``window`` positions on
either side (a band ``2 * window + 1`` wide), plus a few *global* tokens (``[CLS]`` by
default) that attend every position and that every position attends. Cost per head is
``O(N * window * d)`` instead of ``O(N^2 * d)``, computed blockwise
(:func:`~slimkit.attention.window_math.window_attention`), never as a masked dense matrix.

Choices made here:

- ``window`` is the reach on ONE side (Longformer's ``attention_window`` is the full
  width, i.e. ``2 * window``). With ``window >= N - 1`` and any global tokens the result
  is exactly the original attention, so short inputs lose nothing; below that the model
  changes and is distilled back (``distill.embedding`` / ``distill.intermediate``).
- No new parameters: the trained query / key / value projections are reused for local and
  global attention alike (Longformer adds separate global projections; they would have
  to be learned from scratch, which a conversion of a trained model avoids).
- Global positions past an input's length are ignored; padded keys are never attended.
- Inputs longer than the position table need more positions first
  (:func:`slimkit.attention.positions.extend_positions`).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..core import Context, MethodConfig, Record, Targets, method_config, register_method, register_replay
from .base import ConvertedAttention, Layout, convert, option, replay
from .window_math import window_attention

_MAX_GLOBAL = 64  # a global token costs O(N); more than this is dense attention in disguise


@method_config
class WindowAttention(MethodConfig):
    """Sliding-window attention with global tokens (Longformer/BigBird), blockwise O(N * window)."""

    kind = "attention.window"
    stage = "train"  # a conversion, distilled back afterwards (as attention.linformer / attention.linear)

    # reach on one side: query i sees keys j with |i - j| <= window (band 2 * window + 1 wide)
    window: int = 64
    # positions that attend everything and are attended by all ([CLS] = 0); () for none
    global_tokens: tuple[int, ...] = (0,)

    def validate(self) -> None:
        self._require(self.window >= 1, "window", "an int >= 1", self.window)
        self._require(len(self.global_tokens) <= _MAX_GLOBAL and all(g >= 0 for g in self.global_tokens)
                      and len(set(self.global_tokens)) == len(self.global_tokens), "global_tokens",
                      f"at most {_MAX_GLOBAL} distinct positions >= 0", self.global_tokens)


class WindowSelfAttention(ConvertedAttention):
    """HF self-attention computing banded + global attention blockwise; same projections, no new weights."""

    kind = "attention.window"

    def __init__(self, source: nn.Module, layout: Layout, *, window: int, global_tokens: tuple[int, ...]) -> None:
        super().__init__(source, layout)
        self.window = int(window)
        self.global_tokens = tuple(sorted(int(g) for g in global_tokens))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               key_padding_mask: torch.Tensor | None) -> torch.Tensor:
        return window_attention(q, k, v, self.window, global_tokens=self.global_tokens,  # [B, H, N, d]
                                key_valid=key_padding_mask, scaling=self.scaling,
                                dropout=self.attention_dropout, training=self.training)

    def options(self) -> dict[str, Any]:
        return {"window": self.window, "global_tokens": list(self.global_tokens)}

    @classmethod
    def from_options(cls, source: nn.Module, layout: Layout, options: dict[str, Any]) -> "WindowSelfAttention":
        where = f"{cls.kind} replay"
        window = option(options, "window", int, where, lambda v: 1 <= v <= 1 << 20)
        glob = option(options, "global_tokens", list, where,
                      lambda v: len(v) <= _MAX_GLOBAL and all(type(g) is int and 0 <= g < 1 << 20 for g in v))
        return cls(source, layout, window=window, global_tokens=tuple(glob))


@register_method(WindowAttention)
def window(model: nn.Module, config: WindowAttention, targets: Targets, ctx: Context) -> Record:
    record = convert(model, targets, config.kind, lambda i, src, layout: WindowSelfAttention(
        src, layout, window=config.window, global_tokens=config.global_tokens))
    record.summary.update(window=config.window, global_tokens=list(config.global_tokens))
    return record


@register_replay(WindowAttention)
def replay_window(model: nn.Module, record: Record) -> None:
    replay(model, record, WindowSelfAttention)


__all__ = ["WindowAttention", "WindowSelfAttention"]
