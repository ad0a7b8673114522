"""Token pruning (``attention.token_prune``): later blocks of an encoder see fewer tokens.

Easy tokens stop being refined after the first blocks (PoWER-BERT, Goyal et al. 2020; LTP,
Kim et al. 2022; EViT, Liang et al. 2022 for ViTs). The HF encoder (``BertEncoder``,
``ViTEncoder``, ... : a module holding a ``layer`` ModuleList and nothing else) is swapped
for :class:`TokenPruneEncoder`, which loops over the *same* block modules (their weights,
pruning and quantization are untouched; state-dict names do not change) and, between
blocks, gathers each row's highest-scoring tokens so the later blocks really run on a
shorter sequence.

- **Scores** come from the previous block's own query/key projections, read by forward
  hooks on them: ``score="cls"`` is [CLS]'s attention row (one ``1 x S`` product per head,
  cheap), ``score="mean"`` the attention each token receives averaged over the real
  queries (PoWER-BERT; one extra ``S x S`` product), ``score="key_norm"`` each key's norm
  (no product; best on MiniLM / STS-B when read at block 0). The block itself keeps whatever
  attention implementation the model uses (eager, sdpa, flash): no ``output_attentions``.
- **Never dropped**: the first token ([CLS]) and each row's last real token ([SEP]).
  A sentence pair's middle [SEP] is scored like any other token.
- **Batches with padding**: row ``b`` keeps ``ceil(f * len_b)`` of its ``len_b`` real tokens
  (at least 2); the batch tensor is as wide as the widest row's count and the shorter rows'
  extra slots are masked (the mask is rebuilt in the model's format by HF's
  ``create_bidirectional_mask``), so a row's result does not depend on its batch-mates
  (up to float rounding).
- **Full-length output**: each dropped token's last hidden state is scattered back to its
  position (as PoWER-BERT effectively does), so mean pooling over the original attention
  mask and [CLS] pooling both stay correct; ``last_hidden_state`` keeps its shape.
- ``reduce="merge"`` (ToMe, Bolya et al. 2023): instead of being dropped, each removed token
  is averaged (size-weighted) into its most similar kept token by key cosine; slots carry their
  size, attention adds ``log(size)`` to their logits (eager / sdpa), and every position outputs
  its group's final state, so mean pooling is the size-weighted mean. On MiniLM / STS-B it
  scores *below* dropping (measured; see docs/attention.md).
- ``min_keep``: every row keeps at least that many tokens, so short inputs (which gain little
  speed) are not pruned; long rows are unaffected while ``fraction * length >= min_keep``.

The schedule is one fraction per block (``keep``: the share of each row's real tokens the
block processes; ``keep[0]`` must be 1.0, there are no scores before block 0), or
``start`` + ``ratio`` (full length before block ``start``, then ``ratio`` of the previous
block's share per block). Distil afterwards (``distill.embedding`` / ``distill.logits``)
to recover. Not supported (clear errors): decoders / cross-attention / KV caches, flex
attention's BlockMask, EViT-style fusing of the dropped tokens into one token, learned
(LTP) scores, and a change of depth after pruning (apply ``prune.layers`` first).
"""
from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from ..core import (
    Context,
    MethodConfig,
    MethodError,
    Record,
    Targets,
    method_config,
    register_method,
    register_replay,
)
from ..core.context import forward_batches
from ..core.modules import swap_module
from ..prune.layers import find_block_lists
from . import token_math as tm

KIND = "attention.token_prune"
QUERY_NAMES = ("query", "q_proj", "q_lin")
KEY_NAMES = ("key", "k_proj", "k_lin")


@method_config
class TokenPruneAttention(MethodConfig):
    """Drop low-attention tokens between encoder blocks (per-block keep schedule); output stays full length."""

    kind = KIND
    stage = "shrink"

    keep: tuple[float, ...] = ()
    start: int | None = None
    ratio: float | None = None
    score: Literal["cls", "mean", "key_norm"] = "cls"
    reduce: Literal["drop", "merge"] = "drop"
    min_keep: int = 0

    def validate(self) -> None:
        self._require(self.reduce in ("drop", "merge"), "reduce", "'drop' or 'merge'", self.reduce)
        self._require(isinstance(self.min_keep, int) and not isinstance(self.min_keep, bool) and self.min_keep >= 0,
                      "min_keep", "an int >= 0 (tokens a row always keeps)", self.min_keep)
        self._require(bool(self.keep) != (self.ratio is not None), "keep",
                      "exactly one of keep (a fraction per block) or start + ratio",
                      {"keep": self.keep, "ratio": self.ratio})
        if self.keep:
            self._require(all(0 < f <= 1 for f in self.keep), "keep", "fractions in (0, 1]", self.keep)
            self._require(self.keep[0] == 1.0, "keep", "keep[0] == 1.0 (block 0 has no scores yet)", self.keep)
            self._require(all(a >= b for a, b in zip(self.keep, self.keep[1:])), "keep",
                          "a non-increasing schedule (a dropped token does not come back)", self.keep)
            self._require(self.start is None, "start", "no start with an explicit keep schedule", self.start)
        else:
            self._require(self.start is not None and self.start >= 1, "start", "an int >= 1 with ratio", self.start)
            self._require(self.ratio is not None and 0 < self.ratio < 1, "ratio", "a float in (0, 1)", self.ratio)


class TokenPruneEncoder(nn.Module):
    """An HF encoder's block loop that prunes tokens between blocks (same ``forward`` interface).

    ``layer`` is the original ``nn.ModuleList`` (so parameter names match the dense model's);
    ``fractions[i]`` is the share of each row's real tokens block ``i`` processes; ``qk`` names
    the query and key projections inside a block (relative names, e.g. ``attention.self.query``).
    """

    def __init__(self, encoder: nn.Module, fractions: list[float], score: str, qk: tuple[str, str],
                 reduce: str = "drop", min_keep: int = 0) -> None:
        super().__init__()
        self.config = encoder.config
        self.layer = encoder.layer
        self.gradient_checkpointing = getattr(encoder, "gradient_checkpointing", False)
        self.fractions = [float(f) for f in fractions]
        self.score = score
        self.qk = qk
        self.reduce = reduce
        self.min_keep = int(min_keep)

    def extra_repr(self) -> str:
        return (f"fractions={self.fractions}, score={self.score!r}, reduce={self.reduce!r}, "
                f"min_keep={self.min_keep}")

    def _heads(self, block: nn.Module, width: int) -> int:
        attn = block.get_submodule(self.qk[0].rpartition(".")[0])
        size = getattr(attn, "attention_head_size", None) or getattr(attn, "head_dim", None)
        return width // int(size) if size else int(self.config.num_attention_heads)

    def _run_scoring(self, block: nn.Module, h: torch.Tensor, mask: Any, kwargs: dict[str, Any],
                     alive: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run ``block`` and score its input slots from its own query/key outputs:
        ``(out, scores [B, S], keys [B, S, h*d])`` (the keys pick merge partners)."""
        got: dict[str, torch.Tensor] = {}
        hooks = [block.get_submodule(name).register_forward_hook(
            lambda _m, _a, out, key=key: got.__setitem__(key, out)) for key, name in zip("qk", self.qk)]
        try:
            out = block(h, mask, **kwargs)
        finally:
            for hk in hooks:
                hk.remove()
        if set(got) != {"q", "k"}:
            raise MethodError(f"{KIND}: block did not call its projections {list(self.qk)}; "
                              "the block was replaced by a form token pruning cannot score")
        q, k = got["q"].detach(), got["k"].detach()  # [B, S, h*d]
        fn = {"cls": tm.cls_scores, "mean": tm.mean_scores, "key_norm": tm.key_norm_scores}[self.score]
        with torch.no_grad():
            return out, fn(q, k, alive, self._heads(block, q.shape[-1])), k

    def forward(self, hidden_states: torch.Tensor, attention_mask: Any = None,
                encoder_hidden_states: torch.Tensor | None = None, encoder_attention_mask: Any = None,
                cache: Any = None, use_cache: bool | None = None, **kwargs: Any) -> Any:
        from transformers.modeling_outputs import BaseModelOutputWithPastAndCrossAttentions

        if _tracing():
            raise MethodError(f"{KIND}: a token-pruned model cannot be exported or traced: how many tokens "
                              "each block keeps depends on the input's real lengths (a data-dependent shape a "
                              "traced graph would freeze); export before token pruning, or serve it in PyTorch")
        if encoder_hidden_states is not None or cache is not None:
            raise MethodError(f"{KIND}: cross-attention and KV caches are not supported (encoders only)")
        n = len(self.layer)
        if n != len(self.fractions):
            raise MethodError(f"{KIND}: the encoder has {n} blocks but the keep schedule has {len(self.fractions)}; "
                              "change the depth (prune.layers) before token pruning, not after")
        b, s0, _ = hidden_states.shape
        h, mask = hidden_states, attention_mask  # [B, S, H]
        alive = tm.valid_from_mask(mask, b, s0, h.device)  # [B, S]
        valid0, lengths = alive, alive.sum(1)  # [B, S0], [B] real tokens per row
        merge = self.reduce == "merge"
        pos: torch.Tensor | None = None  # [B, S] original position of each slot, once pruned
        full = h  # [B, S0, H] latest state of every position
        scores: torch.Tensor | None = None
        keys = size = group = None  # merge: keys [B, S, D], size [B, S], group [B, S0] slot of each position
        for i, block in enumerate(self.layer):
            if scores is not None:  # block i processes fewer tokens than block i - 1
                if pos is None:
                    pos, full = torch.arange(s0, device=h.device).expand(b, s0), h
                    size, group = alive.to(h.dtype), pos
                else:
                    full = tm.write_back(full, pos, h, alive)
                counts = tm.keep_counts(lengths, self.fractions[i], self.min_keep)  # [B]
                always = tm.protected(pos, lengths)
                idx, kept = tm.select(scores, counts, alive, always, pos)  # [B, K]
                if merge:
                    target = tm.merge_targets(keys, idx, kept, alive, always)  # [B, S]
                    h, size = tm.merge_rows(h, size, target, alive, idx, kept)
                    group = target.gather(1, group)  # [B, S0]
                else:
                    h = tm.gather_rows(h, idx)
                pos, alive = pos.gather(1, idx), kept
                mask = self._mask(h, alive, size if merge else None)
                kwargs.pop("position_ids", None)  # positions were added by the embeddings already
            if i + 1 < n and self.fractions[i + 1] < self.fractions[i]:
                h, scores, keys = self._run_scoring(block, h, mask, kwargs, alive)
            else:
                h, scores = block(h, mask, **kwargs), None
        if pos is not None:
            last = h
            h = tm.write_back(full, pos, h, alive)
            if merge:  # every position takes its group's final state: mean pooling = size-weighted mean
                h = torch.where(valid0[..., None], tm.gather_rows(last, group), h)
        return BaseModelOutputWithPastAndCrossAttentions(last_hidden_state=h)


    def _mask(self, h: torch.Tensor, alive: torch.Tensor, size: torch.Tensor | None) -> Any:
        """The attention mask for the shortened batch, in the model's format; with ``size`` (merging)
        an additive ``[B, 1, 1, K]`` mask adding ``log(size)`` to each key's logit, so a slot standing
        for ``n`` tokens gets the attention those ``n`` tokens would (eager and sdpa only)."""
        from transformers.masking_utils import create_bidirectional_mask

        if size is None:
            return create_bidirectional_mask(config=self.config, inputs_embeds=h, attention_mask=alive)
        if self.config._attn_implementation not in ("eager", "sdpa"):
            raise MethodError(f"{KIND}: reduce='merge' needs the eager or sdpa attention implementation (it adds "
                              f"log(size) to the attention logits); this model uses "
                              f"{self.config._attn_implementation!r}")
        low = torch.finfo(h.dtype).min
        bias = torch.where(alive, size.clamp(min=1e-6).log().to(h.dtype), torch.full_like(h[..., 0], low))
        return bias[:, None, None, :]  # [B, 1, 1, K]


def _tracing() -> bool:
    """True under torch.jit tracing, ONNX export or torch.export (torch.compile is allowed: it graph-breaks at the data-dependent counts)."""
    return bool(torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting())


def find_qk(block: nn.Module) -> tuple[str, str]:
    """Relative names of a block's query and key projections (BERT ``query``/``key``, ViT and
    LLaMA-style ``q_proj``/``k_proj``, DistilBERT ``q_lin``/``k_lin``)."""
    names = [n for n, _ in block.named_modules()]
    q = [n for n in names if n.rpartition(".")[2] in QUERY_NAMES]
    k = [n for n in names if n.rpartition(".")[2] in KEY_NAMES]
    if len(q) != 1 or len(k) != 1 or q[0].rpartition(".")[0] != k[0].rpartition(".")[0]:
        raise MethodError(f"{KIND}: cannot find one query and one key projection in {type(block).__name__} "
                          f"(looked for {QUERY_NAMES} / {KEY_NAMES}; found {q} / {k})")
    return q[0], k[0]


def check_encoder(encoder: nn.Module, path: str) -> None:
    """The encoder must be a plain block loop (a ``layer`` list and a ``config``, nothing else)."""
    extra = [n for n, _ in encoder.named_children() if n != "layer"]
    own = [n for n, _ in encoder.named_parameters(recurse=False)] + [n for n, _ in encoder.named_buffers(recurse=False)]
    if extra or own or not isinstance(getattr(encoder, "layer", None), nn.ModuleList):
        raise MethodError(f"{KIND}: {path!r} ({type(encoder).__name__}) is not a plain block loop "
                          f"(a 'layer' ModuleList only; it also holds {extra + own}); unsupported")
    cfg = getattr(encoder, "config", None)
    if cfg is None or not hasattr(cfg, "_attn_implementation"):
        raise MethodError(f"{KIND}: {path!r} ({type(encoder).__name__}) has no HF config; HF encoders only")
    if getattr(cfg, "is_decoder", False) or getattr(cfg, "add_cross_attention", False):
        raise MethodError(f"{KIND}: {path!r} is a decoder (is_decoder / add_cross_attention); encoders only")
    if isinstance(encoder, TokenPruneEncoder):
        raise MethodError(f"{KIND}: {path!r} is already token-pruned")


def convert(model: nn.Module, path: str, fractions: list[float], score: str, reduce: str = "drop",
            min_keep: int = 0) -> TokenPruneEncoder:
    encoder = model.get_submodule(path)
    check_encoder(encoder, path)
    if len(fractions) != len(encoder.layer):
        raise MethodError(f"{KIND}: {len(fractions)} fractions for the {len(encoder.layer)} blocks of {path!r}")
    new = TokenPruneEncoder(encoder, fractions, score, find_qk(encoder.layer[0]), reduce, min_keep)
    swap_module(model, path, new)
    return new


@register_method(TokenPruneAttention)
def token_prune(model: nn.Module, config: TokenPruneAttention, targets: Targets, ctx: Context) -> Record:
    lists = find_block_lists(model, targets, KIND)
    if len(lists) != 1 or lists[0].rpartition(".")[2] != "layer" or "." not in lists[0]:
        raise MethodError(f"{KIND}: expected one HF encoder block list named '<encoder>.layer' (BERT family), "
                          f"found {lists}; models that loop their blocks inline (e.g. ViT in transformers 5, "
                          "'layers' on the model itself) and EViT-style token fusion are not supported")
    path = lists[0].rpartition(".")[0]
    n = len(model.get_submodule(lists[0]))
    fractions = tm.schedule(n, config.keep, config.start, config.ratio)
    convert(model, path, fractions, config.score, config.reduce, config.min_keep)
    batch = ctx.example_inputs if ctx.example_inputs is not None else next(iter(ctx.calib_data or []), None)
    if batch is not None:
        try:
            forward_batches(model, [batch])
        except MethodError:
            raise
        except Exception as exc:  # the model's own forward raises many types on a form it cannot take
            raise MethodError(f"{KIND}: the model no longer runs with a token-pruned {path!r}: "
                              f"{type(exc).__name__}: {exc}") from exc
    return Record(kind=config.kind, data={"path": path, "n_blocks": n, "fractions": fractions, "score": config.score,
                                          "reduce": config.reduce, "min_keep": config.min_keep},
                  summary={"blocks": n, "pruned_blocks": sum(f < 1.0 for f in fractions),
                           "mean_token_share": round(tm.kept_share(fractions), 4)})


@register_replay(TokenPruneAttention)
def replay_token_prune(model: nn.Module, record: Record) -> None:
    """Swap the encoder again from the record's data alone (checked: it is untrusted)."""
    d = record.data
    path, n, fractions, score = d.get("path"), d.get("n_blocks"), d.get("fractions"), d.get("score")
    if not isinstance(path, str) or not path or not isinstance(n, int) or isinstance(n, bool):
        raise MethodError(f"{KIND} replay: bad path / n_blocks in the record ({path!r}, {n!r})")
    if (not isinstance(fractions, list) or len(fractions) != n
            or not all(isinstance(f, (int, float)) and not isinstance(f, bool) and 0 < f <= 1 for f in fractions)
            or any(a < b for a, b in zip(fractions, fractions[1:]))):
        raise MethodError(f"{KIND} replay: fractions must be {n} non-increasing numbers in (0, 1], got {fractions!r}")
    if score not in ("cls", "mean", "key_norm"):
        raise MethodError(f"{KIND} replay: unknown score {score!r}")
    reduce, min_keep = d.get("reduce", "drop"), d.get("min_keep", 0)  # absent in records made before merging
    if reduce not in ("drop", "merge"):
        raise MethodError(f"{KIND} replay: unknown reduce {reduce!r}")
    if not isinstance(min_keep, int) or isinstance(min_keep, bool) or min_keep < 0:
        raise MethodError(f"{KIND} replay: min_keep must be an int >= 0, got {min_keep!r}")
    try:
        encoder = model.get_submodule(path)
    except AttributeError as exc:
        raise MethodError(f"{KIND} replay: the model has no module {path!r}") from exc
    if len(getattr(encoder, "layer", ())) != n:
        raise MethodError(f"{KIND} replay: {path!r} does not hold {n} blocks")
    convert(model, path, [float(f) for f in fractions], score, reduce, min_keep)


__all__ = ["TokenPruneAttention", "TokenPruneEncoder", "find_qk"]
