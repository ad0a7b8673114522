"""Cheap accuracy recovery after structured pruning: re-estimate batch-norm statistics.

Removing channels changes the distribution every later BatchNorm sees, but its running
mean/variance still describe the unpruned network. Re-estimating them on a few
calibration batches (no gradient, no labels) recovers much of the lost accuracy for
free (Li et al., EagleEye 2020, "adaptive BN").
"""
from __future__ import annotations

import torch
from torch import nn

from ..core import Context, MethodConfig, MethodError, Record, Targets, method_config, register_method
from ..core.context import call_model


@method_config
class BnRecalibrateTrain(MethodConfig):
    """Re-estimate BatchNorm running statistics on calibration batches (adaptive BN)."""

    kind = "train.bn_recalibrate"
    stage = "train"

    batches: int = 16

    def validate(self) -> None:
        self._require(self.batches >= 1, "batches", "an int >= 1", self.batches)


@register_method(BnRecalibrateTrain)
def bn_recalibrate(model: nn.Module, config: BnRecalibrateTrain, targets: Targets, ctx: Context) -> Record:
    norms = [(n, m) for n, m in targets.iter(model) if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        raise MethodError(f"{config.kind}: the targets select no BatchNorm layer")
    data = ctx.need("calib_data", config.kind)
    was_training = model.training
    saved = {n: m.momentum for n, m in norms}
    model.eval()
    for _, m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over all batches seen
        m.train()
    seen = 0
    try:
        with torch.no_grad():
            for i, batch in enumerate(data):
                if i >= config.batches:
                    break
                call_model(model, batch)
                seen += 1
    finally:
        for n, m in norms:
            m.momentum = saved[n]
        model.train(was_training)
    if seen == 0:
        raise MethodError(f"{config.kind}: Context.calib_data yielded no batch")
    return Record(kind=config.kind, data={"layers": [n for n, _ in norms]}, summary={"batches": seen, "layers": len(norms)})
