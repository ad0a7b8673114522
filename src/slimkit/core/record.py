"""Records say what a method did; a manifest is the ordered list of them for one model.

A record is plain JSON data (kept channel indices, ranks, bit-widths, sparsity reached).
``restore`` rebuilds the dense model from ``model_spec`` and replays the records in
order, so structure is recreated before the weights are loaded.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

MANIFEST_ATTR = "_slimkit_manifest"
FORMAT_VERSION = 1


@dataclasses.dataclass
class Record:
    """What one method application did.

    ``kind``, ``config`` and ``targets`` repeat the request; ``data`` is the method's own
    JSON-able account (e.g. ``{"layers": {"fc1": {"kept": [0, 3, 5]}}}``); ``summary`` holds
    a few headline numbers for reports.
    """

    kind: str
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    targets: dict[str, Any] = dataclasses.field(default_factory=dict)
    data: dict[str, Any] = dataclasses.field(default_factory=dict)
    summary: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Record":
        return cls(
            kind=d["kind"], config=dict(d.get("config", {})), targets=dict(d.get("targets", {})),
            data=dict(d.get("data", {})), summary=dict(d.get("summary", {})),
        )


@dataclasses.dataclass
class Manifest:
    """The model's origin (``model_spec``, e.g. ``"zoo:digits-cnn"``) and its records, in order."""

    model_spec: str | None = None
    records: list[Record] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        import torch

        from .. import __version__

        return {
            "format_version": FORMAT_VERSION,
            "slimkit_version": __version__,
            "torch_version": torch.__version__,
            "model_spec": self.model_spec,
            "records": [r.to_dict() for r in self.records],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Manifest":
        return cls(model_spec=d.get("model_spec"), records=[Record.from_dict(r) for r in d.get("records", [])])


def manifest_of(model: nn.Module) -> Manifest:
    """The manifest attached to ``model`` (created empty if it has none)."""
    m = model.__dict__.get(MANIFEST_ATTR)
    if m is None:
        m = Manifest()
        model.__dict__[MANIFEST_ATTR] = m
    return m


def set_model_spec(model: nn.Module, spec: str) -> nn.Module:
    """Remember how to rebuild ``model`` densely (used by the zoo loaders and ``restore``)."""
    manifest_of(model).model_spec = spec
    return model


def records(model: nn.Module) -> list[Record]:
    """The records of every method applied to ``model`` so far."""
    return list(manifest_of(model).records)
