"""``distill.intermediate``: the student's layers learn what the teacher's layers compute.

TinyBERT, MiniLM and FitNets as one recipe step::

    - kind: distill.intermediate
      with:
        layer_map: last_k          # uniform | last_k | explicit | learned
        k: 3
        matches:
          - {what: attention_relation, weight: 1.0}
          - {what: hidden, loss: mse}
        logits: cosine             # none | kd | mse | cosine, on the models' outputs
        steps: 600

Layers are the transformer blocks (default targets) or the modules the step's ``targets``
select in the student (``teacher_layers`` patterns select the teacher's; default: the same
targets). ``layer_map`` pairs them (:func:`~.mapping.layer_pairs`): ``uniform`` (TinyBERT's
skip), ``last_k`` (the last ``k`` student layers <- the last ``k`` teacher layers), ``explicit``
(``pairs: [[0, 1], [2, 5]]``) or ``learned`` (every pair, weighted by a trained
:class:`~.mapping.LearnedLayerMap`, BERT-EMD style). Each pair contributes every match
(:mod:`.matches`), times its weight; projections (student width -> teacher width) and the
learned map are trained with the student and dropped afterwards, so the model keeps its
shape and only its weights change (stage ``train``, no replay needed).

The teacher runs every step (its features are too large to cache). Training goes through
``distill.methods._run``, so every loop option (``steps``, ``lr``, ``freeze``, ``keep_best``,
...) behaves as in the other distillation kinds.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Literal

import torch
from torch import nn

from ..core import ConfigError, Context, MethodError, Record, Targets, method_config, register_method
from ..core.context import call_model, to_device
from ..train.options import TrainOptions
from .engine import split_batch
from .features import Features, LayerFeatures, find_layers
from .mapping import LearnedLayerMap, layer_pairs
from .matches import NEEDS_QKV, Match, fsp_chain, make_projection, match_loss, parse_matches
from .methods import _record, _run
from .objectives import DataChoice, compare_outputs, output_tensor, step_data


@method_config
class IntermediateDistill(TrainOptions):
    """Match intermediate layers: hidden states, attention maps, MiniLM relations, FitNets hints, AT, FSP."""

    kind = "distill.intermediate"

    layer_map: Literal["uniform", "last_k", "explicit", "learned"] = "uniform"
    k: int | None = None  # last_k: how many of the last layers to pair (None: every student layer)
    pairs: tuple[tuple[int, int], ...] = ()  # explicit: [[student_layer, teacher_layer], ...]
    teacher_layers: tuple[str, ...] = ()  # patterns of the teacher's layers (default: the step's targets)
    matches: tuple[dict[str, Any], ...] = ({"what": "hidden"},)
    logits: Literal["none", "kd", "mse", "cosine"] = "none"  # a term on the models' outputs as well
    logits_weight: float = 1.0
    temperature: float = 1.0  # logits: kd
    data: DataChoice = "auto"  # auto: the unlabelled corpus, else train_data, else calib_data

    def validate(self) -> None:
        super().validate()
        parsed = parse_matches(self.matches)
        self._require(bool(parsed) or self.logits != "none", "matches", "at least one match (or logits)",
                      self.matches)
        self._require(self.k is None or self.layer_map == "last_k", "k", "null unless layer_map is last_k", self.k)
        self._require(self.k is None or self.k >= 1, "k", "a positive int or null", self.k)
        self._require(bool(self.pairs) == (self.layer_map == "explicit"), "pairs",
                      "a non-empty list of [student_layer, teacher_layer] exactly when layer_map is explicit",
                      self.pairs)
        self._require(all(s >= 0 and t >= 0 for s, t in self.pairs), "pairs", "layer indices >= 0", self.pairs)
        for i, m in enumerate(parsed):
            if m.what == "fsp" and self.layer_map == "learned":
                raise ConfigError("fsp compares consecutive matched layers, which a learned map does not have; "
                                  "use uniform, last_k or explicit", key=f"matches[{i}].what")
        self._require(self.logits_weight > 0, "logits_weight", "a positive float", self.logits_weight)
        self._require(self.temperature > 0, "temperature", "a positive float", self.temperature)
        try:
            Targets(include=self.teacher_layers)
        except ConfigError as exc:
            raise ConfigError(exc.bare, key="teacher_layers") from exc


class _Trainee(nn.Module):
    """What the engine trains: the student (with its layer taps), the projections and a learned map."""

    def __init__(self, student: LayerFeatures, projs: dict[str, nn.Module], maps: dict[str, LearnedLayerMap]) -> None:
        super().__init__()
        self.student, self.projs, self.maps = student, nn.ModuleDict(projs), nn.ModuleDict(maps)

    def forward(self, *args: Any, **kwargs: Any) -> tuple[Any, list[Features]]:
        return self.student(*args, **kwargs)


def _mask(batch: Any) -> torch.Tensor | None:
    inputs, _ = split_batch(batch)
    return inputs.get("attention_mask") if isinstance(inputs, dict) else None


def _probe(student: LayerFeatures, teacher: LayerFeatures, data: Any, device: Any) -> tuple[list[Features], list[Features]]:
    """Features of both sides on the first batch (no grad, eval mode): widths for the projections."""
    batch = next(iter(data), None)
    if batch is None:
        raise MethodError("distill.intermediate: the training data has no batches")
    inputs, _ = split_batch(to_device(batch, torch.device(device)))
    out = []
    for side in (student, teacher):
        was = side.training
        side.to(device).eval()
        try:
            with torch.no_grad():
                out.append(call_model(side, inputs))
        finally:
            side.train(was)
    return out[0][1], out[1][1]


def _projections(matches: list[Match], pairs: list[tuple[int, int]], s_f: list[Features],
                 t_f: list[Features]) -> dict[str, nn.Module]:
    """One trained projection per (match, student layer) where the match needs one."""
    projs: dict[str, nn.Module] = {}
    for mi, m in enumerate(matches):
        for s, t in pairs:
            key = f"{mi}_{s}"
            if key not in projs:
                p = make_projection(m, s_f[s]["hidden"], t_f[t]["hidden"])
                if p is not None:
                    projs[key] = p
    return projs


def _layer_names(model: nn.Module, teacher: nn.Module, config: IntermediateDistill,
                 targets: Targets) -> tuple[list[str], list[str]]:
    s_layers = find_layers(model, targets, config.kind)
    t_targets = Targets(include=config.teacher_layers) if config.teacher_layers else targets
    return s_layers, find_layers(teacher, t_targets, config.kind)


@register_method(IntermediateDistill)
def distill_intermediate(model: nn.Module, config: IntermediateDistill, targets: Targets, ctx: Context) -> Record:
    teacher = ctx.teacher
    if teacher is None:
        raise MethodError(f"{config.kind} needs Context.teacher (e.g. the uncompressed model), which is not set")
    matches = parse_matches(config.matches)
    data = step_data(config.data, ctx, config.kind, labels_first=False)
    s_layers, t_layers = _layer_names(model, teacher, config, targets)
    pairs = layer_pairs(config.layer_map, len(s_layers), len(t_layers), k=config.k,
                        pairs=[tuple(p) for p in config.pairs])  # type: ignore[misc]
    qkv = any(m.what in NEEDS_QKV for m in matches)
    s_tap = LayerFeatures(model, s_layers, qkv=qkv, kind=config.kind)
    t_tap = LayerFeatures(teacher, t_layers, qkv=qkv, kind=config.kind)
    s_f, t_f = _probe(s_tap, t_tap, data, ctx.device)
    learned = config.layer_map == "learned"
    maps = {str(mi): LearnedLayerMap(len(s_layers), len(t_layers)) for mi, m in enumerate(matches)} if learned else {}
    trainee = _Trainee(s_tap, _projections(matches, pairs, s_f, t_f), maps)
    used = sorted({s for s, _ in pairs})

    projs = dict(trainee.projs.items())  # the same modules, looked up as a plain dict

    def proj(mi: int, s: int) -> nn.Module | None:
        return projs.get(f"{mi}_{s}")

    def loss(s_out: Any, t_out: Any, batch: Any) -> torch.Tensor:
        mask = _mask(batch)
        (s_o, s_feats), (t_o, t_feats) = s_out, t_out
        total = s_feats[0]["hidden"].new_zeros(())
        for mi, m in enumerate(matches):
            if m.what == "fsp":
                term = fsp_chain(s_feats, t_feats, pairs, mask)
            elif learned:
                def cost(sp: Any, t: Features, m: Match = m) -> torch.Tensor:
                    return match_loss(m, sp[0], t, sp[1], mask)
                sides = [(f, proj(mi, s)) for s, f in enumerate(s_feats)]
                term = trainee.maps[str(mi)](sides, t_feats, cost) / len(s_feats)
            else:
                term = torch.stack([match_loss(m, s_feats[s], t_feats[t], proj(mi, s), mask)
                                    for s, t in pairs]).mean()
            total = total + m.weight * term
        if config.logits != "none":
            total = total + config.logits_weight * compare_outputs(
                output_tensor(s_o, config.kind), output_tensor(t_o, config.kind), config.logits, batch,
                temperature=config.temperature, alpha=1.0, kind=config.kind)
        return total

    def checked(s_out: Any, t_out: Any, batch: Any) -> torch.Tensor:
        try:
            return loss(s_out, t_out, batch)
        except ValueError as exc:  # a pure loss refusing the shapes it was given
            raise MethodError(f"{config.kind}: {exc}") from exc

    # the engine evaluates what it trains: hand eval_fn the bare student, not the wrapper
    eval_fn = None if ctx.eval_fn is None else (lambda _trainee: ctx.eval_fn(model))
    run_ctx = dataclasses.replace(ctx, teacher=t_tap, eval_fn=eval_fn)
    result = _run(trainee, config, run_ctx, data, checked, names_of=model)
    rec = _record(config.kind, result)
    rec.data.update({
        "student_layers": [s_layers[s] for s in used], "teacher_layers": t_layers,
        "pairs": [[s_layers[s], t_layers[t]] for s, t in pairs] if not learned else [],
        "matches": [{"what": m.what, "weight": m.weight, **m.options} for m in matches],
        "projections": sorted(trainee.projs),
    })
    if learned:
        rec.data["learned_map"] = {str(mi): [[round(float(w), 4) for w in row] for row in mp.weights().detach()]
                                   for mi, mp in trainee.maps.items()}
    rec.summary["pairs"] = len(pairs)
    return rec


__all__ = ["IntermediateDistill", "distill_intermediate"]
