"""Quantisation-aware training: fake-quant layers trained with any loop, then converted to packed codes.

``quantize.qat`` swaps every targeted Linear / Conv2d for a :class:`QATLinear` /
:class:`QATConv2d` that fake-quantises

* its **weight** per output channel, with a learned step size (LSQ, Esser et al. 2020:
  ``w_q = round(clamp(w / s, -Qn, Qp)) * s``, the step's gradient scaled by
  ``1 / sqrt(N * Qp)``, ``N`` = weights per step) or a min-max scale recomputed every step;
* its **input** with PACT (Choi et al. 2018: a learned clip ``alpha``, ``y = clamp(x, 0,
  alpha)`` on the grid ``alpha / (2**b - 1)``; symmetric ``[-alpha, alpha]`` when the
  calibration saw negative inputs) or with an LSQ step, or not at all.

The layers are plain modules: the one training engine (:func:`slimkit.train.engine.train`)
trains them, on the task loss or against a teacher. Scales are initialised from data first: weights
with the per-channel MSE-optimal range, activations from a few calibration batches.

After training each layer is *converted* (:meth:`QATLayer.convert`) to a
:class:`~slimkit.quantize.packed.PackedLayer` holding the bit-packed integer codes, the
per-channel steps and the input step: the converted model computes exactly what the
trained fake-quant model computed in eval mode. Below 8 bits it dequantises on the fly
(a size win, not a speed win: there are no CPU kernels for 2-4 bit codes); 8-bit codes
with the same per-channel scales are what an int8 execution path consumes.
"""
from __future__ import annotations

import functools
import itertools
import math
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from ..core import (
    Context,
    Record,
    Targets,
    method_config,
    register_method,
    register_replay,
)
from ..core.context import forward_batches
from ..core.modules import swap_module
from ..train.options import LrSchedule, Optimizer, TrainOptions
from ..train.run import tail_mean
from .affine import check_bits, fake_quant
from .granularity import per_channel
from .observers import MSEObserver
from .packed import PackedLayer, Storage, layers_of, op_of, packed_record, replay_packed, run_op

WeightQuant = Literal["lsq", "minmax"]
ActQuant = Literal["pact", "lsq", "none"]
DEFAULT_TARGETS = Targets(types=("Conv2d", "Linear"))


# ---------------------------------------------------------------- pure quantiser math


def grad_scale(x: torch.Tensor, g: float) -> torch.Tensor:
    """Forward ``x``, backward ``g * grad`` (LSQ's step-size gradient scaling)."""
    return (x - x * g).detach() + x * g


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """``round(x)`` with an identity gradient."""
    return (x.round() - x).detach() + x


def lsq_quant(x: torch.Tensor, step: torch.Tensor, qn: int, qp: int, g: float) -> torch.Tensor:
    """LSQ fake quantisation ``round(clamp(x / s, -qn, qp)) * s``; ``step`` broadcasts against ``x``.

    Autograd through this expression gives LSQ's gradients: ``x`` gets 1 inside the range
    and 0 outside; ``s`` gets ``(round(v) - v)`` inside and ``-qn`` / ``qp`` outside, times ``g``.
    """
    s = grad_scale(step, g)
    return round_ste(torch.clamp(x / s, -qn, qp)) * s


def pact_quant(x: torch.Tensor, alpha: torch.Tensor, bits: int, signed: bool = False) -> torch.Tensor:
    """PACT: clip to ``[0, alpha]`` (``[-alpha, alpha]`` when signed), quantise on ``alpha / n``.

    ``alpha`` gets gradient from the clipped elements (1 above ``alpha``, -1 below
    ``-alpha``) plus the rounding residual, as in Choi et al.; ``x`` gets 1 inside.
    """
    n = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
    lo = -alpha if signed else torch.zeros_like(alpha)
    y = torch.minimum(torch.maximum(x, lo), alpha)
    s = alpha / n
    return round_ste(y / s) * s


def act_grid(bits: int, signed: bool) -> tuple[int, int]:
    """Integer input range ``(qmin, qmax)`` of PACT / LSQ input codes: unsigned, or narrow symmetric."""
    if signed:
        q = 2 ** (bits - 1) - 1
        return -q, q
    return 0, 2**bits - 1


# ---------------------------------------------------------------- the trainable layers


class QATLayer(nn.Module):
    """Fake-quant Linear / Conv2d: latent float weight + learned quantiser parameters."""

    def __init__(self, module: nn.Linear | nn.Conv2d, bits: int, act_bits: int, weight_quant: WeightQuant,
                 act_quant: ActQuant) -> None:
        super().__init__()
        self.op = op_of(module)
        self.bits, self.act_bits = bits, act_bits
        self.weight_quant, self.act_quant = weight_quant, act_quant
        self.weight = nn.Parameter(module.weight.detach().clone())
        self.bias = nn.Parameter(module.bias.detach().clone()) if module.bias is not None else None
        self.qp = 2 ** (bits - 1) - 1  # narrow symmetric grid: 2 bits = {-1, 0, 1}
        w = self.weight.detach()
        init = per_channel(w, axis=0, bits=bits, observer=functools.partial(MSEObserver, grid=40)).scale
        self.step = nn.Parameter(init.reshape(-1).clone())  # [C_out]
        self.step.requires_grad_(weight_quant == "lsq")
        self.alpha = nn.Parameter(torch.ones(()))  # PACT clip or LSQ input step
        self.alpha.requires_grad_(act_quant != "none")
        self.act_signed = False
        self._observed: list[torch.Tensor] = []  # calibration statistics, see observe()
        self.observing = False

    # -- quantisers -----------------------------------------------------------------------
    def _step_shape(self) -> list[int]:
        return [-1] + [1] * (self.weight.dim() - 1)

    def quant_weight(self) -> torch.Tensor:
        w = self.weight
        if self.weight_quant == "lsq":
            g = 1.0 / math.sqrt(w[0].numel() * self.qp)
            return lsq_quant(w, self.step.abs().clamp(min=1e-8).reshape(self._step_shape()), self.qp, self.qp, g)
        scale = (w.detach().abs().reshape(w.shape[0], -1).amax(dim=1) / self.qp).clamp(min=1e-8)  # [C]
        with torch.no_grad():
            self.step.copy_(scale)
        return fake_quant(w, scale.reshape(self._step_shape()), 0, -self.qp, self.qp)

    def quant_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.act_quant == "none":
            return x
        a = self.alpha.abs().clamp(min=1e-8)
        if self.act_quant == "pact":
            return pact_quant(x, a, self.act_bits, self.act_signed)
        qmin, qmax = act_grid(self.act_bits, self.act_signed)
        g = 1.0 / math.sqrt(x[0].numel() * qmax)
        return lsq_quant(x, a, -qmin, qmax, g)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            self._observed.append(x.detach().float().reshape(-1)[:65536])
            return run_op(self.op, x, self.weight, self.bias)
        return run_op(self.op, self.quant_input(x), self.quant_weight(), self.bias)

    def finish_observing(self) -> None:
        """Set the input quantiser from the calibration inputs seen while ``observing``.

        PACT: ``alpha`` = the 99.9th percentile of ``|x|``; LSQ: step ``2 mean|x| / sqrt(Qp)``
        (Esser et al.). Inputs with negative values get a symmetric grid.
        """
        self.observing = False
        if not self._observed:
            return
        x = torch.cat(self._observed)
        self._observed = []
        self.act_signed = bool((x < 0).any())
        a = x.abs()
        if self.act_quant == "pact":
            k = max(1, int(0.999 * a.numel()))
            value = float(a.kthvalue(k).values)
        else:
            _, qmax = act_grid(self.act_bits, self.act_signed)
            value = 2.0 * float(a.mean()) / math.sqrt(qmax)
        with torch.no_grad():
            self.alpha.fill_(max(value, 1e-6))

    # -- conversion -----------------------------------------------------------------------
    def weight_codes(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Unsigned codes (``signed + Qp``) and the per-channel step, as the trained forward uses them."""
        with torch.no_grad():
            if self.weight_quant == "lsq":
                s = self.step.abs().clamp(min=1e-8)
            else:
                self.quant_weight()
                s = self.step.clone()
            q = torch.clamp(torch.round(self.weight / s.reshape(self._step_shape())), -self.qp, self.qp)
        return (q + self.qp).to(torch.int64), s.detach().clone()

    def act_spec(self) -> tuple[dict[str, Any], torch.Tensor | None]:
        if self.act_quant == "none":
            return {"kind": "none"}, None
        a = float(self.alpha.detach().abs().clamp(min=1e-8))
        qmin, qmax = act_grid(self.act_bits, self.act_signed)
        scale = a / (qmax if self.act_quant == "pact" else 1.0)
        return {"kind": "affine", "qmin": qmin, "qmax": qmax}, torch.tensor(scale)

    def convert(self, storage: Storage = "packed") -> PackedLayer:
        codes, step = self.weight_codes()
        act, act_scale = self.act_spec()
        return PackedLayer.from_codes(self.op, codes, self.bits, bias=self.bias.detach() if self.bias is not None else None,
                                      scale=step, qmin=-self.qp, storage=storage, zero_code=self.qp,
                                      act=act, act_scale=act_scale)

    def extra_repr(self) -> str:
        return (f"{self.op['type']}, weight={tuple(self.weight.shape)}, bits={self.bits}/{self.weight_quant}, "
                f"act_bits={self.act_bits}/{self.act_quant}")


class QATLinear(QATLayer):
    """:class:`QATLayer` standing in for an ``nn.Linear``."""


class QATConv2d(QATLayer):
    """:class:`QATLayer` standing in for an ``nn.Conv2d``."""


def qat_layer(module: nn.Module, bits: int, act_bits: int, weight_quant: WeightQuant, act_quant: ActQuant) -> QATLayer:
    cls = QATLinear if isinstance(module, nn.Linear) else QATConv2d
    return cls(module, bits, act_bits, weight_quant, act_quant)  # type: ignore[arg-type]


def calibrate(model: nn.Module, layers: list[QATLayer], ctx: Context, n_batches: int, what: str) -> None:
    """Run up to ``n_batches`` calibration (or training) batches so the input quantisers get ranges."""
    if all(layer.act_quant == "none" for layer in layers):
        return
    for layer in layers:
        layer.observing = True
    try:
        if ctx.calib_data is not None:
            forward_batches(model, itertools.islice(ctx.calib_data, n_batches))
        else:  # training batches go through the task's loss_fn, which knows their (inputs, labels) layout
            loss_fn = ctx.need("loss_fn", what)
            forward_batches(model, itertools.islice(ctx.need("train_data", what), n_batches), run=loss_fn)
    finally:
        for layer in layers:
            layer.finish_observing()


# ---------------------------------------------------------------- the registered method


@method_config
class QatQuant(TrainOptions):
    """Quantisation-aware training: LSQ weights (per channel) and PACT / LSQ inputs, then packed codes.

    Trains ``steps`` steps of the training engine (Adam at a constant rate by default; every
    loop option of :class:`~slimkit.train.options.TrainOptions` applies) on ``ctx.train_data``
    with ``ctx.loss_fn`` (``steps: 0`` converts the calibrated quantisers without training).
    ``storage`` picks how the codes are written (``packed`` fixed width; ``huffman`` /
    ``auto`` entropy-coded).
    """

    kind = "quantize.qat"
    stage = "quantize"
    min_steps: ClassVar[int] = 0

    optimizer: Optimizer = "adam"
    schedule: LrSchedule = "constant"
    bits: int = 4
    act_bits: int = 8
    weight_quant: WeightQuant = "lsq"
    act_quant: ActQuant = "pact"
    calib_batches: int = 4
    storage: Literal["packed", "huffman", "auto"] = "packed"
    # None: train on ctx.loss_fn. A value: train against ctx.teacher (Hinton KD, this alpha on
    # the soft targets, 1 - alpha on the labels)
    kd_alpha: float | None = None
    kd_temperature: float = 4.0

    def validate(self) -> None:
        super().validate()
        self._require(isinstance(self.bits, int) and 2 <= self.bits <= 8, "bits", "an int in [2, 8]", self.bits)
        self._require(self.kd_alpha is None or 0.0 <= self.kd_alpha <= 1.0, "kd_alpha", "None or a float in [0, 1]",
                      self.kd_alpha)
        self._require(self.kd_temperature > 0, "kd_temperature", "a positive float", self.kd_temperature)
        self._require(2 <= self.act_bits <= 16, "act_bits", "an int in [2, 16]", self.act_bits)
        self._require(self.calib_batches >= 1, "calib_batches", "a positive int", self.calib_batches)


def train_and_convert(model: nn.Module, layers: dict[str, Any], ctx: Context, steps: int, lr: float,
                      what: str, storage: Storage, kd: tuple[float, float] | None = None, *,
                      options: TrainOptions | None = None) -> tuple[dict[str, PackedLayer], float | None]:
    """Fine-tune a model whose layers were swapped for trainable low-bit ones, then convert them.

    Training is the one engine (:func:`slimkit.train.engine.train`) with ``options`` (a
    config's loop options), or without them Adam at ``lr``, constant, for ``steps``. ``kd =
    (alpha, temperature)`` trains against ``ctx.teacher`` (Hinton KD, labels weighted
    ``1 - alpha``) instead of on ``ctx.loss_fn``: the fake-quant layers are plain modules,
    so the engine trains them like any student.
    """
    from ..distill.losses import kd_loss
    from ..train.engine import outputs_loss, task_loss
    from ..train.parts import split_batch
    from ..train.run import run_kind

    final_loss = None
    if steps:
        opts = options if options is not None else TrainOptions(steps=steps, lr=lr, optimizer="adam",
                                                                schedule="constant")
        opts = opts.loop(steps=steps)
        teacher = None
        if kd is not None:
            alpha, temperature = kd
            teacher = ctx.need("teacher", what)
            objective = outputs_loss(lambda s, t, b: kd_loss(s, t, split_batch(b)[1], temperature=temperature,
                                                             alpha=alpha))
        else:
            objective = task_loss(ctx.need("loss_fn", what))
        result = run_kind(model, opts, ctx, objective, ctx.need("train_data", what), what=what, teacher=teacher)
        final_loss = tail_mean(result.losses)
    packed = {}
    for name, layer in layers.items():
        packed[name] = layer.convert(storage)
        swap_module(model, name, packed[name])
    return packed, final_loss


@register_method(QatQuant)
def qat(model: nn.Module, config: QatQuant, targets: Targets, ctx: Context) -> Record:
    check_bits(config.bits, 2, 8)
    targets = targets if targets.types else Targets(include=targets.include, exclude=targets.exclude,
                                                    types=DEFAULT_TARGETS.types)
    layers: dict[str, QATLayer] = {}
    for name, module in layers_of(model, targets):
        layers[name] = qat_layer(module, config.bits, config.act_bits, config.weight_quant, config.act_quant)
        swap_module(model, name, layers[name])
    calibrate(model, list(layers.values()), ctx, config.calib_batches, config.kind)
    kd = None if config.kd_alpha is None else (config.kd_alpha, config.kd_temperature)
    packed, final_loss = train_and_convert(model, layers, ctx, config.steps, config.lr, config.kind, config.storage,
                                           kd=kd, options=config)
    return packed_record(packed, bits=config.bits, act_bits=config.act_bits if config.act_quant != "none" else None,
                         final_loss=final_loss)


register_replay(QatQuant)(replay_packed)

__all__ = ["QatQuant", "QATConv2d", "QATLayer", "QATLinear", "act_grid", "calibrate", "grad_scale", "lsq_quant",
           "pact_quant", "qat_layer", "round_ste", "train_and_convert"]
