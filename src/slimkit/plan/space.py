"""The planner's search space: planning units and, per unit, candidate actions (recipe steps).

A *unit* is a part of the model the planner decides about as a whole:

- each block of the model's block list (:func:`slimkit.core.modules.find_block_lists`),
  with actions: drop the block (``prune.layers``), prune a share of its attention heads
  (``prune.heads``), prune a share of its FFN's hidden neurons (``prune.channel`` on the
  block's expanding Linear), factorize its Linears (``lowrank.svd``);
- each Conv2d / Linear outside the blocks, with ``prune.channel`` (its own output channels)
  and, for a Linear, ``lowrank.svd``;
- the whole model's int8 switch (``quantize.dynamic`` on every Linear).

An action is an ordinary recipe step dict ``{kind, targets, with}`` restricted to its unit by
name, so a plan is an ordinary recipe (:func:`compose`). The space proposes; an action the
method refuses on this model (e.g. pruning the classifier's output classes) is found out by
the sensitivity pass and left out. :class:`SpaceConfig` is strict like a method config: an
unknown key or a wrong type is a :class:`ConfigError` naming it.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from ..core import ConfigError, MethodError, Recipe, Targets
from ..core.modules import find_block_lists

INT8_UNIT = "int8"


@dataclasses.dataclass(frozen=True, kw_only=True)
class SpaceConfig:
    """Which units and actions the planner considers (``include`` / ``exclude`` filter unit names)."""

    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    channel_ratios: tuple[float, ...] = (0.25, 0.5)
    head_ratios: tuple[float, ...] = (0.25, 0.5)
    svd_ratios: tuple[float, ...] = (0.5,)
    drop_blocks: bool = True
    quantize_dynamic: bool = True

    def __post_init__(self) -> None:
        for key in ("channel_ratios", "head_ratios", "svd_ratios"):
            value = getattr(self, key)
            if not isinstance(value, (list, tuple)) or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1 for v in value):
                raise ConfigError(f"expected a list of ratios in (0, 1), got {value!r}", key=key)
            object.__setattr__(self, key, tuple(float(v) for v in value))
        for key in ("drop_blocks", "quantize_dynamic"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"expected true or false, got {getattr(self, key)!r}", key=key)
        Targets(include=self.include, exclude=self.exclude)  # checks the patterns (ConfigError)
        object.__setattr__(self, "include", tuple(self.include))
        object.__setattr__(self, "exclude", tuple(self.exclude))

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any] | None) -> "SpaceConfig":
        if doc is None:
            return cls()
        if not isinstance(doc, Mapping):
            raise ConfigError(f"expected a mapping of space options, got {doc!r}", key="space")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(map(str, set(doc) - known))
        if unknown:
            raise ConfigError(f"unknown space option; expected one of {', '.join(sorted(known))}", key=unknown[0])
        return cls(**dict(doc))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "SpaceConfig":
        """Read a YAML file of space options."""
        try:
            doc = yaml.safe_load(Path(path).read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read space file {path}: {exc}", key="space") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"invalid YAML in {path}: {exc}".replace("\n", " "), key="space") from exc
        return cls.from_dict(doc)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in dataclasses.fields(self)}


@dataclasses.dataclass(frozen=True)
class Action:
    """One candidate change of one unit: a label and the recipe step(s) that make it."""

    label: str
    steps: tuple[dict[str, Any], ...]

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "steps": [dict(s) for s in self.steps]}


@dataclasses.dataclass(frozen=True)
class Unit:
    """A planning unit: ``name`` (a module name, or ``int8`` for the model-wide switch), its
    ``kind`` (``block`` / ``layer`` / ``model``) and its candidate actions ("keep" is implicit)."""

    name: str
    kind: str
    actions: tuple[Action, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "actions": [a.to_dict() for a in self.actions]}


def _step(kind: str, include: Sequence[str], with_: Mapping[str, Any] | None = None,
          types: Sequence[str] = ()) -> dict[str, Any]:
    targets: dict[str, Any] = {"include": list(include)}
    if types:
        targets["types"] = list(types)
    return {"kind": kind, "targets": targets, "with": dict(with_ or {})}


def _pct(r: float) -> str:
    return f"{round(100 * r)}%"


def block_lists(model: nn.Module) -> list[str]:
    """The model's block list(s) (empty for a model without one, e.g. a plain CNN)."""
    try:
        return find_block_lists(model, Targets(), kind="plan")
    except MethodError:
        return []


def _block_actions(model: nn.Module, list_name: str, index: int, name: str, cfg: SpaceConfig) -> list[Action]:
    block = model.get_submodule(name)
    linears = [(f"{name}.{n}", m) for n, m in block.named_modules() if isinstance(m, nn.Linear)]
    acts: list[Action] = []
    if cfg.drop_blocks:
        acts.append(Action("drop", (_step("prune.layers", [list_name], {"drop": [index]}),)))
    if any("attention" in n.lower() or "attn" in n.lower() for n, _ in block.named_modules()):
        acts += [Action(f"heads {_pct(r)}", (_step("prune.heads", [f"{name}.*"], {"ratio": r}),))
                 for r in cfg.head_ratios]
    expanding = [n for n, m in linears if m.out_features > m.in_features]  # the FFN's up-projection
    if expanding:
        acts += [Action(f"ffn {_pct(r)}", (_step("prune.channel", expanding, {"ratio": r}),))
                 for r in cfg.channel_ratios]
    if linears:
        acts += [Action(f"svd {_pct(r)}", (_step("lowrank.svd", [f"{name}.*"], {"ratio": r}, types=["Linear"]),))
                 for r in cfg.svd_ratios]
    return acts


def _layer_actions(name: str, module: nn.Module, cfg: SpaceConfig) -> list[Action]:
    acts = [Action(f"channels {_pct(r)}", (_step("prune.channel", [name], {"ratio": r}),)) for r in cfg.channel_ratios]
    if isinstance(module, nn.Linear):
        acts += [Action(f"svd {_pct(r)}", (_step("lowrank.svd", [name], {"ratio": r}),)) for r in cfg.svd_ratios]
    return acts


def build_space(model: nn.Module, config: SpaceConfig | None = None) -> list[Unit]:
    """The planning units of ``model`` with their candidate actions, in module order."""
    cfg = config or SpaceConfig()
    wanted = Targets(include=cfg.include, exclude=cfg.exclude)
    units: list[Unit] = []
    lists = block_lists(model)
    blocks = {f"{ln}.{i}": (ln, i) for ln in lists for i in range(len(model.get_submodule(ln)))}
    inside = tuple(f"{b}." for b in blocks)
    for name, module in model.named_modules():
        if name in blocks:
            kind, acts = "block", _block_actions(model, *blocks[name], name, cfg)
        elif isinstance(module, (nn.Conv2d, nn.Linear)) and not name.startswith(inside):
            kind, acts = "layer", _layer_actions(name, module, cfg)
        else:
            continue
        if acts and wanted.matches(name, module):
            units.append(Unit(name, kind, tuple(acts)))
    if cfg.quantize_dynamic and any(isinstance(m, nn.Linear) for m in model.modules()) \
            and wanted.matches(INT8_UNIT, model):
        units.append(Unit(INT8_UNIT, "model", (Action("int8 dynamic", (_step("quantize.dynamic", ["*"]),)),)))
    return units


def compose(chosen: Sequence[Action], *, name: str = "plan", description: str = "") -> dict[str, Any]:
    """The recipe document of a set of chosen actions (one per unit at most).

    Order: per-layer shrinking steps first (they keep module names), then one
    ``prune.layers`` step per block list with every dropped index (dropping renumbers the
    blocks, so drops are merged, never chained), then quantization. The document is checked
    by :meth:`Recipe.from_dict` before it is returned.
    """
    shrink: list[dict[str, Any]] = []
    drops: dict[str, set[int]] = {}
    quant: list[dict[str, Any]] = []
    for action in chosen:
        for step in action.steps:
            if step["kind"] == "prune.layers":
                drops.setdefault(step["targets"]["include"][0], set()).update(step["with"]["drop"])
            elif step["kind"].startswith("quantize."):
                quant.append(step)
            else:
                shrink.append(step)
    layers = [_step("prune.layers", [ln], {"drop": sorted(d)}) for ln, d in sorted(drops.items())]
    doc = {"name": name, "description": description, "steps": [*shrink, *layers, *quant]}
    if doc["steps"]:
        Recipe.from_dict(doc)
    return doc


__all__ = ["INT8_UNIT", "Action", "SpaceConfig", "Unit", "block_lists", "build_space", "compose"]
