"""Recipes: YAML lists of steps ``{kind, targets, with}`` run in order.

Everything is validated when the recipe is loaded, before any weight changes: unknown
kinds and keys, wrong types, out-of-range values and impossible orders (structural
pruning after quantization, anything after export) fail with a message naming the step.

.. code-block:: yaml

    name: digits-default
    steps:
      - kind: prune.magnitude
        targets: {types: [Conv2d, Linear]}
        with: {sparsity: 0.8, scope: global}
"""
from __future__ import annotations

import dataclasses
import os
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import yaml
from torch import nn

from .api import apply
from .config import STAGES, MethodConfig
from .context import Context
from .errors import ConfigError, OrderError
from .registry import config_class
from .targets import Targets

_STEP_KEYS = {"kind", "targets", "with", "name"}


@dataclasses.dataclass(frozen=True)
class Step:
    config: MethodConfig
    targets: Targets
    label: str  # "step 2 (prune.magnitude)" or the step's own name

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.config.kind, "targets": self.targets.to_dict(), "with": self.config.to_dict()}


@dataclasses.dataclass(frozen=True)
class Recipe:
    steps: tuple[Step, ...]
    name: str = "recipe"
    description: str = ""

    def __post_init__(self) -> None:
        check_order(self.steps)

    # -- loading ------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, doc: Any) -> "Recipe":
        """Build from a parsed document: a mapping with ``steps`` or a bare list of steps."""
        name, description = "recipe", ""
        if isinstance(doc, dict):
            unknown = set(doc) - {"steps", "name", "description"}
            if unknown:
                raise ConfigError("unknown recipe key; expected steps, name or description",
                                  key=str(sorted(map(str, unknown))[0]))
            name = doc.get("name", name)
            description = doc.get("description", description)
            if not isinstance(name, str) or not isinstance(description, str):
                raise ConfigError("expected strings for name and description", key="name")
            raw_steps = doc.get("steps")
        else:
            raw_steps = doc
        if not isinstance(raw_steps, list) or not raw_steps:
            raise ConfigError("a recipe needs a non-empty list of steps", key="steps")
        steps = tuple(_parse_step(i + 1, raw) for i, raw in enumerate(raw_steps))
        return cls(steps=steps, name=name, description=description)

    @classmethod
    def from_yaml(cls, text: str) -> "Recipe":
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"invalid YAML: {exc}".replace("\n", " ")) from exc
        return cls.from_dict(doc)

    @classmethod
    def load(cls, source: str | os.PathLike[str]) -> "Recipe":
        """Load a recipe file, or a preset shipped with slimkit by name (``"digits-default"``)."""
        path = Path(source)
        if path.is_file():
            return cls.from_yaml(path.read_text())
        preset = resources.files("slimkit.recipes").joinpath(f"{source}.yaml")
        if preset.is_file():
            return cls.from_yaml(preset.read_text())
        raise ConfigError(f"recipe {str(source)!r} is neither a file nor a preset; presets: {', '.join(presets())}")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "steps": [s.to_dict() for s in self.steps]}

    # -- running ------------------------------------------------------------------------
    def run(
        self,
        model: nn.Module,
        ctx: Context | None = None,
        *,
        inplace: bool = False,
        on_step: Callable[[int, Step, nn.Module], None] | None = None,
    ) -> nn.Module:
        """Apply every step in order; ``on_step(i, step, model)`` runs after each one."""
        ctx = ctx or Context()
        for i, step in enumerate(self.steps):
            model = apply(model, step.config, step.targets, ctx, inplace=inplace or i > 0)
            if on_step is not None:
                on_step(i, step, model)
        return model


def presets() -> list[str]:
    root = resources.files("slimkit.recipes")
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def _parse_step(index: int, raw: Any) -> Step:
    label = f"step {index}"
    if not isinstance(raw, dict):
        raise ConfigError(f"expected a mapping with kind/targets/with, got {raw!r}", step=label)
    unknown = set(raw) - _STEP_KEYS
    if unknown:
        raise ConfigError("unknown step key; expected kind, targets, with or name",
                          key=str(sorted(map(str, unknown))[0]), step=label)
    kind = raw.get("kind")
    if not isinstance(kind, str):
        raise ConfigError(f"expected a method kind string, got {kind!r}", key="kind", step=label)
    label = f"step {index} ({kind})"
    name = raw.get("name")
    if name is not None and not isinstance(name, str):
        raise ConfigError(f"expected a string, got {name!r}", key="name", step=label)
    try:
        cls = config_class(kind)
        config = cls.from_dict(raw.get("with"))
        targets = Targets.from_dict(raw.get("targets"))
    except ConfigError as exc:
        raise exc.in_step(label) from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc), step=label) from None
    return Step(config=config, targets=targets, label=name or label)


def check_order(steps: tuple[Step, ...]) -> None:
    """Shrinking and sparsifying need float weights: they must come before quantization;
    nothing may follow an export step."""
    quantized_at: str | None = None
    exported_at: str | None = None
    for step in steps:
        stage = step.config.stage
        if stage not in STAGES:  # pragma: no cover - a programming error in a config class
            raise OrderError(f"unknown stage {stage!r}", step=step.label)
        if exported_at is not None:
            raise OrderError(f"comes after the export step {exported_at}; export must be last", step=step.label)
        if stage in ("shrink", "sparsify") and quantized_at is not None:
            raise OrderError(
                f"a {stage} step must come before quantization ({quantized_at}): it needs float weights",
                step=step.label,
            )
        if stage == "quantize" and quantized_at is None:
            quantized_at = step.label
        if stage == "export":
            exported_at = step.label
    check_gate_runtime(steps)


# the runtime a ``gate: latency`` must time on when a recipe ends in this export kind
_SERVED_ON = {"export.onnx": "onnx", "export.pt2e": "pt2"}


def check_gate_runtime(steps: tuple[Step, ...]) -> None:
    """A layer gated by latency must be timed on the runtime the recipe ships: a recipe that ends
    in an ONNX export and gates on eager PyTorch would keep layers for a speed it never serves."""
    served = next((_SERVED_ON[s.config.kind] for s in steps if s.config.kind in _SERVED_ON), None)
    if served is None:
        return
    for step in steps:
        if getattr(step.config, "gate", None) == "latency" and getattr(step.config, "gate_runtime", served) != served:
            raise ConfigError(f"gate: latency times on {step.config.gate_runtime!r}, but the recipe exports to "
                              f"{served!r}; set gate_runtime: {served}", step=step.label)
