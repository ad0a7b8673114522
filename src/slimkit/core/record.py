"""Records say what a method did; a manifest is the ordered list of them for one model.

A record is plain JSON data (kept channel indices, ranks, bit-widths, sparsity reached).
``restore`` rebuilds the dense model from ``model_spec`` and replays the records in
order, so structure is recreated before the weights are loaded.

A manifest read from disk is untrusted input: :meth:`Manifest.from_dict` checks the
types it relies on and the format version (raising ``ValueError`` / ``TypeError``, which
``read_manifest`` turns into an ``ArtifactError``), and replay functions check the values
they index with through :func:`index_list` and :func:`dtype_named`.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

MANIFEST_ATTR = "_slimkit_manifest"
# 1: records only (format_version absent in the earliest files); 2: adds ``files``, the
# SHA-256 of every file of the artifact, checked on restore.
FORMAT_VERSION = 2
KNOWN_VERSIONS = (1, 2)


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
    # the config class's ``version`` when the record was written (1 for records that predate it)
    config_version: int = 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Record":
        if not isinstance(d, dict):
            raise TypeError(f"a record must be an object, got {type(d).__name__}")
        if not isinstance(d.get("kind"), str):
            raise TypeError(f"a record's 'kind' must be a string, got {d.get('kind')!r}")
        parts = {k: d.get(k, {}) for k in ("config", "targets", "data", "summary")}
        for k, v in parts.items():
            if not isinstance(v, dict):
                raise TypeError(f"record {d['kind']!r}: {k!r} must be an object, got {type(v).__name__}")
        version = d.get("config_version", 1)
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise TypeError(f"record {d['kind']!r}: 'config_version' must be a positive int, got {version!r}")
        return cls(kind=d["kind"], config_version=version, **{k: dict(v) for k, v in parts.items()})


@dataclasses.dataclass
class Manifest:
    """The model's origin (``model_spec``, e.g. ``"zoo:digits-cnn"``) and its records, in order."""

    model_spec: str | None = None
    records: list[Record] = dataclasses.field(default_factory=list)
    # file name -> SHA-256 hex digest of every file of the saved folder but manifest.json
    # (empty for a model in memory and for format-1 artifacts, which predate it)
    files: dict[str, str] = dataclasses.field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        import torch

        from .._version import __version__

        return {
            "format_version": FORMAT_VERSION,
            "slimkit_version": __version__,
            "torch_version": torch.__version__,
            "model_spec": self.model_spec,
            "records": [r.to_dict() for r in self.records],
            "files": dict(sorted(self.files.items())),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Manifest":
        """Parse a manifest document; an unknown ``format_version`` or a wrong type raises ValueError/TypeError."""
        if not isinstance(d, dict):
            raise TypeError("not a slimkit manifest (expected a JSON object)")
        version = d.get("format_version", 1)  # the first manifests carried no version
        if type(version) is not int or version not in KNOWN_VERSIONS:
            raise ValueError(f"format_version {version!r} is not one this slimkit reads "
                             f"({', '.join(map(str, KNOWN_VERSIONS))}); a newer slimkit may have written it")
        spec = d.get("model_spec")
        if spec is not None and not isinstance(spec, str):
            raise TypeError(f"'model_spec' must be a string, got {type(spec).__name__}")
        recs = d.get("records", [])
        if not isinstance(recs, list):
            raise TypeError(f"'records' must be a list, got {type(recs).__name__}")
        files = d.get("files", {})
        if version >= 2 and "files" not in d:
            raise ValueError(f"format_version {version} needs 'files' (the SHA-256 of every file)")
        if not isinstance(files, dict) or not all(_hash_entry(k, v) for k, v in files.items()):
            raise ValueError("'files' must map plain file names to SHA-256 hex digests")
        return cls(model_spec=spec, records=[Record.from_dict(r) for r in recs], files=dict(files),
                   format_version=version)


def _hash_entry(name: Any, digest: Any) -> bool:
    """A ``files`` entry: a plain name inside the folder (no path parts) and a 64-digit hex digest."""
    return (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name
            and isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest))


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


def index_list(value: Any, size: int, where: str) -> list[int]:
    """``value`` as kept indices into ``size`` units: a list of distinct ints in ``[0, size)``.

    Replay functions index tensors with these; Python and torch accept negative indices,
    so without this check a tampered record would load silently with the wrong rows.
    Raises ``ValueError`` naming ``where`` (restore reports it as an ArtifactError).
    """
    if not isinstance(value, list) or not all(type(i) is int for i in value):
        raise ValueError(f"{where}: kept indices must be a list of integers, got {_short(value)}")
    bad = [i for i in value if not 0 <= i < size]
    if bad:
        raise ValueError(f"{where}: kept index {bad[0]} is outside [0, {size})")
    if len(set(value)) != len(value):
        raise ValueError(f"{where}: kept indices repeat")
    return list(value)


def dtype_named(name: Any, where: str) -> Any:
    """The ``torch.dtype`` called ``name`` (e.g. ``"float16"``); anything else raises ``ValueError``.

    Records name dtypes as strings; ``getattr(torch, name)`` alone would hand back any torch
    attribute a tampered manifest names.
    """
    import torch

    value = getattr(torch, name, None) if isinstance(name, str) and not name.startswith("_") else None
    if not isinstance(value, torch.dtype):
        raise ValueError(f"{where}: {_short(name)} is not a torch dtype")
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
