"""``lowrank.tucker`` and ``lowrank.cp``: replace a Conv2d by a chain of smaller Conv2d layers.

The replacement is a plain ``nn.Sequential`` of ``nn.Conv2d`` (1x1, core or depthwise, 1x1),
so it exports to ONNX / PT2 unchanged and :func:`slimkit.measure.profile` counts it at the
ATen level like any conv. The math is in :mod:`.conv_math`; this module picks the ranks,
builds the layers, gates each one (:mod:`.gate`) and swaps the kept ones in.

Layers that are not factorized, with the reason in the Record's ``data["skipped"]``:
grouped / depthwise convs (their kernel has no channel mixing to factor), 1x1 convs (a
matrix: ``lowrank.svd``'s job), subclasses of Conv2d (fake-quant and other wrappers carry
state a plain chain would drop), and layers whose factors would not hold fewer weights than
the kernel. Naming one of the first three explicitly in ``targets.include`` is an error.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..core import Context, MethodError, Record, Targets, method_config, register_method, register_replay
from ..core.modules import swap_module
from . import conv_math as cm
from .gate import GateOptions, capture_inputs, decide, n_params, summarize


@method_config
class _RankOptions(GateOptions):
    """Rank selection shared by both kinds: at most one of ``rank``, ``ratio``, ``energy``; none means VBMF."""

    rank: int | None = None
    ratio: float | None = None
    energy: float | None = None

    def validate(self) -> None:
        super().validate()
        given = [k for k in ("rank", "ratio", "energy") if getattr(self, k) is not None]
        self._require(len(given) <= 1, given[-1] if given else "rank",
                      "at most one of rank, ratio, energy (none: VBMF)", given)
        self._require(self.rank is None or self.rank >= 1, "rank", "an int >= 1", self.rank)
        self._require(self.ratio is None or 0 < self.ratio <= 1, "ratio", "a float in (0, 1]", self.ratio)
        self._require(self.energy is None or 0 < self.energy <= 1, "energy", "a float in (0, 1]", self.energy)

    def rank_by(self) -> str:
        return "rank" if self.rank is not None else "ratio" if self.ratio is not None else \
            "energy" if self.energy is not None else "vbmf"


@method_config
class TuckerLowrank(_RankOptions):
    """Tucker-2 of each Conv2d: 1x1 (C_in->R_in), kxk core (R_in->R_out), 1x1 (R_out->C_out); rank by VBMF, energy, rank or ratio.

    ``rank``: both channel ranks (capped at C_out / C_in); ``ratio``: ranks proportional to the
    channel counts whose factors hold at most this fraction of the kernel's weights;
    ``energy``: per mode, the fraction of the unfolding's squared singular values kept; none of
    them: each mode's rank by analytic VBMF (Kim et al. 2016). ``iters`` HOOI sweeps refine the
    HOSVD. A mode whose rank equals its channel count gets no 1x1 (Tucker-1).
    """

    kind = "lowrank.tucker"
    stage = "shrink"
    iters: int = 10

    def validate(self) -> None:
        super().validate()
        self._require(self.iters >= 0, "iters", "an int >= 0", self.iters)


@method_config
class CpLowrank(_RankOptions):
    """CP of each Conv2d (Lebedev et al. 2015): 1x1 (C_in->R), depthwise kx1, depthwise 1xk, 1x1 (R->C_out).

    ``rank``: the CP rank; ``ratio``: the largest rank whose factors hold at most this fraction
    of the kernel's weights; ``energy`` / none (VBMF): the larger of the two channel modes'
    ranks chosen that way (a lower bound of the CP rank). ``iters``: ALS sweeps at most.
    """

    kind = "lowrank.cp"
    stage = "shrink"
    iters: int = 200

    def validate(self) -> None:
        super().validate()
        self._require(self.iters >= 1, "iters", "an int >= 1", self.iters)


# -- which convs --------------------------------------------------------------------------------
def unsupported(conv: nn.Module) -> str | None:
    """Why ``conv`` cannot be factorized by these kinds (None when it can)."""
    if type(conv) is not nn.Conv2d:
        return f"{type(conv).__name__} is not a plain nn.Conv2d"
    if conv.groups != 1:
        return f"grouped conv (groups={conv.groups}): no channel mixing to factorize"
    if tuple(conv.kernel_size) == (1, 1):
        return "1x1 conv: a matrix, factorize it with lowrank.svd"
    return None


def _named_explicitly(targets: Targets, name: str) -> bool:
    return any(p == name for p in targets.include if not p.startswith("re:") and not set(p) & set("*?["))


def _params(conv: nn.Conv2d) -> int:
    return conv.weight.numel()


# -- building the chains (zero weights when no factors are given: replay loads them) ------------------
def _conv(cin: int, cout: int, kernel: tuple[int, int], like: nn.Conv2d, *, stride: Any = 1, padding: Any = 0,
          dilation: Any = 1, groups: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, dilation=dilation, groups=groups, bias=bias,
                     padding_mode=like.padding_mode, device=like.weight.device, dtype=like.weight.dtype)


def tucker_chain(conv: nn.Conv2d, r_out: int, r_in: int,
                 factors: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> nn.Sequential:
    """The Tucker-2 chain of ``conv`` at ranks ``(r_out, r_in)``; a full-rank mode has no 1x1 (its
    orthogonal factor is folded into the core). ``factors`` = :func:`conv_math.tucker2`'s output."""
    c_out, c_in, kh, kw = conv.weight.shape
    if not (1 <= r_out <= c_out and 1 <= r_in <= c_in):
        raise ValueError(f"ranks ({r_out}, {r_in}) outside [1, {c_out}] x [1, {c_in}]")
    has_in, has_out = r_in < c_in, r_out < c_out
    mid_in, mid_out = (r_in if has_in else c_in), (r_out if has_out else c_out)
    layers: list[nn.Conv2d] = []
    if has_in:
        layers.append(_conv(c_in, r_in, (1, 1), conv))
    layers.append(_conv(mid_in, mid_out, (kh, kw), conv, stride=conv.stride, padding=conv.padding,
                        dilation=conv.dilation, bias=conv.bias is not None and not has_out))
    if has_out:
        layers.append(_conv(r_out, c_out, (1, 1), conv, bias=conv.bias is not None))
    seq = nn.Sequential(*layers)
    if factors is not None:
        core, u_out, u_in = factors  # [R_out, R_in, kh, kw], [C_out, R_out], [C_in, R_in]
        if not has_in:
            core = torch.einsum("rsyx,is->riyx", core, u_in)  # [R_out, C_in, kh, kw]
        if not has_out:
            core = torch.einsum("riyx,or->oiyx", core, u_out)  # [C_out, *, kh, kw]
        with torch.no_grad():
            if has_in:
                seq[0].weight.copy_(u_in.T[:, :, None, None])  # [R_in, C_in, 1, 1]
            seq[1 if has_in else 0].weight.copy_(core)
            if has_out:
                seq[-1].weight.copy_(u_out[:, :, None, None])  # [C_out, R_out, 1, 1]
            if conv.bias is not None:
                seq[-1].bias.copy_(conv.bias)
    return seq


def cp_chain(conv: nn.Conv2d, rank: int,
             factors: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> nn.Sequential:
    """The CP chain of ``conv`` at ``rank``: 1x1, depthwise kx1 (vertical stride/padding/dilation),
    depthwise 1xk (horizontal), 1x1 with the bias. ``factors`` = :func:`conv_math.cp_als`'s output."""
    c_out, c_in, kh, kw = conv.weight.shape
    if rank < 1:
        raise ValueError(f"CP rank must be >= 1, got {rank}")
    pad = conv.padding
    pad_y, pad_x = (pad, pad) if isinstance(pad, str) else (pad[0], pad[1])
    vertical = _conv(rank, rank, (kh, 1), conv, stride=(conv.stride[0], 1), groups=rank,
                     padding=pad_y if isinstance(pad_y, str) else (pad_y, 0), dilation=(conv.dilation[0], 1))
    horizontal = _conv(rank, rank, (1, kw), conv, stride=(1, conv.stride[1]), groups=rank,
                       padding=pad_x if isinstance(pad_x, str) else (0, pad_x), dilation=(1, conv.dilation[1]))
    seq = nn.Sequential(_conv(c_in, rank, (1, 1), conv), vertical, horizontal,
                        _conv(rank, c_out, (1, 1), conv, bias=conv.bias is not None))
    if factors is not None:
        a, b, y, x = factors  # [C_out, R], [C_in, R], [kh, R], [kw, R]
        with torch.no_grad():
            seq[0].weight.copy_(b.T[:, :, None, None])  # [R, C_in, 1, 1]
            seq[1].weight.copy_(y.T[:, None, :, None])  # [R, 1, kh, 1]
            seq[2].weight.copy_(x.T[:, None, None, :])  # [R, 1, 1, kw]
            seq[3].weight.copy_(a[:, :, None, None])  # [C_out, R, 1, 1]
            if conv.bias is not None:
                seq[3].bias.copy_(conv.bias)
    return seq


def _weights(seq: nn.Sequential) -> int:
    return sum(m.weight.numel() for m in seq)


# -- rank choice ----------------------------------------------------------------------------------
def mode_ranks(w: torch.Tensor, config: _RankOptions) -> tuple[int, int]:
    """``(R_out, R_in)`` by energy or VBMF on the mode-0 / mode-1 unfoldings of ``w``."""
    if config.energy is not None:
        return cm.energy_rank(cm.singular_values(w, 0), config.energy), \
            cm.energy_rank(cm.singular_values(w, 1), config.energy)
    return cm.vbmf_rank(cm.unfold(w, 0)), cm.vbmf_rank(cm.unfold(w, 1))


def _plan_tucker(conv: nn.Conv2d, config: TuckerLowrank) -> dict[str, Any]:
    c_out, c_in, kh, kw = conv.weight.shape
    if config.rank is not None:
        r_out, r_in = min(config.rank, c_out), min(config.rank, c_in)
    elif config.ratio is not None:
        r_out, r_in = cm.tucker_ranks_for_ratio(c_out, c_in, kh, kw, config.ratio)
    else:
        r_out, r_in = mode_ranks(conv.weight.detach(), config)
    return {"ranks": [r_out, r_in]}


def _build_tucker(conv: nn.Conv2d, plan: dict[str, Any], config: TuckerLowrank) -> tuple[nn.Sequential, float]:
    r_out, r_in = plan["ranks"]
    factors = cm.tucker2(conv.weight.detach(), r_out, r_in, iters=config.iters)
    return tucker_chain(conv, r_out, r_in, factors), cm.relative_error(conv.weight, cm.tucker2_full(*factors))


def _plan_cp(conv: nn.Conv2d, config: CpLowrank) -> dict[str, Any]:
    c_out, c_in, kh, kw = conv.weight.shape
    if config.rank is not None:
        return {"rank": config.rank}
    if config.ratio is not None:
        return {"rank": cm.cp_rank_for_ratio(c_out, c_in, kh, kw, config.ratio)}
    return {"rank": max(mode_ranks(conv.weight.detach(), config))}


def _build_cp(conv: nn.Conv2d, plan: dict[str, Any], config: CpLowrank, seed: int) -> tuple[nn.Sequential, float]:
    factors = cm.cp_als(conv.weight.detach(), plan["rank"], iters=config.iters, seed=seed)
    return cp_chain(conv, plan["rank"], factors), cm.relative_error(conv.weight, cm.cp_full(*factors))


# -- the shared handler ---------------------------------------------------------------------------
Plan = Callable[[nn.Conv2d], dict[str, Any]]
Chain = Callable[[nn.Conv2d, dict[str, Any]], nn.Sequential]
Build = Callable[[nn.Conv2d, dict[str, Any]], tuple[nn.Sequential, float]]


def factorize_convs(model: nn.Module, config: _RankOptions, targets: Targets, ctx: Context,
                    plan: Plan, chain: Chain, build: Build) -> Record:
    """Plan, build, gate and swap every targeted Conv2d; the Record lists the kept layers' plans
    (``layers``: what replay rebuilds), the plans the gate declined, skipped layers with reasons
    and the gate's decisions."""
    candidates: list[tuple[str, nn.Conv2d]] = []
    skipped: dict[str, str] = {}
    for name, module in targets.select(model):
        if not isinstance(module, nn.Conv2d):
            continue
        reason = unsupported(module)
        if reason is not None:
            if _named_explicitly(targets, name):
                raise MethodError(f"{config.kind} cannot factorize {name!r}: {reason}")
            skipped[name] = reason
            continue
        candidates.append((name, module))
    if not candidates and not skipped:
        raise MethodError(f"{config.kind}: the targets select no Conv2d")
    inputs = capture_inputs(model, [n for n, _ in candidates], ctx, config.kind) \
        if config.gate == "latency" and candidates else {}
    before = n_params(model)
    layers: dict[str, dict[str, Any]] = {}
    declined: dict[str, dict[str, Any]] = {}  # what the gate turned down (for reports; replay ignores it)
    decisions = []
    for name, conv in candidates:
        p = plan(conv)
        n_factor = _weights(chain(conv, p))  # the structure alone: no decomposition for a layer that would not shrink
        if n_factor >= _params(conv):
            skipped[name] = f"factors would hold {n_factor} weights, not fewer than the kernel's {_params(conv)}"
            continue
        seq, err = build(conv, p)
        seq.train(conv.training)
        d = decide(name, conv, seq, inputs.get(name), config)
        decisions.append(d)
        if d.kept == "factorized":
            swap_module(model, name, seq)
            layers[name] = {**p, "error": round(err, 6)}
        else:
            declined[name] = {**p, "error": round(err, 6)}
    return Record(kind="", data={"rank_by": config.rank_by(), "layers": layers, "declined": declined,
                                 "skipped": skipped, "gate": [d.to_dict() for d in decisions]},
                  summary={"params_before": before, "params_after": n_params(model), **summarize(decisions),
                           "layers_skipped": len(skipped)})


@register_method(TuckerLowrank)
def tucker_lowrank(model: nn.Module, config: TuckerLowrank, targets: Targets, ctx: Context) -> Record:
    return factorize_convs(model, config, targets, ctx, lambda c: _plan_tucker(c, config),
                           lambda c, p: tucker_chain(c, *p["ranks"]), lambda c, p: _build_tucker(c, p, config))


@register_method(CpLowrank)
def cp_lowrank(model: nn.Module, config: CpLowrank, targets: Targets, ctx: Context) -> Record:
    return factorize_convs(model, config, targets, ctx, lambda c: _plan_cp(c, config),
                           lambda c, p: cp_chain(c, p["rank"]), lambda c, p: _build_cp(c, p, config, ctx.seed))


def _recorded_conv(model: nn.Module, name: Any, kind: str) -> nn.Conv2d:
    if not isinstance(name, str):
        raise MethodError(f"{kind} replay: layer name must be a string, got {name!r}")
    conv = model.get_submodule(name)
    reason = unsupported(conv)
    if reason is not None:
        raise MethodError(f"{kind} replay: {name!r} cannot be rebuilt: {reason}")
    return conv  # type: ignore[return-value]


def _int(value: Any, what: str) -> int:
    if type(value) is not int:
        raise MethodError(f"{what} must be an integer, got {value!r}")
    return value


@register_replay(TuckerLowrank)
def replay_tucker(model: nn.Module, record: Record) -> None:
    """Swap in empty Tucker chains of the recorded ranks (weights load afterwards)."""
    for name, meta in record.data["layers"].items():
        conv = _recorded_conv(model, name, record.kind)
        ranks = meta["ranks"]
        if not isinstance(ranks, list) or len(ranks) != 2:
            raise MethodError(f"{record.kind} replay: {name!r} ranks must be [R_out, R_in], got {ranks!r}")
        r_out, r_in = (_int(r, f"{record.kind} replay: {name!r} rank") for r in ranks)
        swap_module(model, name, tucker_chain(conv, r_out, r_in))


@register_replay(CpLowrank)
def replay_cp(model: nn.Module, record: Record) -> None:
    """Swap in empty CP chains of the recorded ranks (weights load afterwards)."""
    for name, meta in record.data["layers"].items():
        conv = _recorded_conv(model, name, record.kind)
        rank = _int(meta["rank"], f"{record.kind} replay: {name!r} rank")
        c_out, c_in, kh, kw = conv.weight.shape
        if not 1 <= rank * (c_in + kh + kw + c_out) < conv.weight.numel():  # the handler never records more
            raise MethodError(f"{record.kind} replay: {name!r} rank {rank} does not shrink the layer")
        swap_module(model, name, cp_chain(conv, rank))


__all__ = ["CpLowrank", "TuckerLowrank", "cp_chain", "factorize_convs", "mode_ranks", "tucker_chain", "unsupported"]
