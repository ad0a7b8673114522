"""Artifacts are untrusted input: file hashes, and no code runs unless the caller opts in.

A saved folder's ``manifest.json`` lists the SHA-256 of every other file in it
(``files``). ``restore`` and the CLI check them before using a file, so an edited weight
value or a swapped ``model.onnx`` fails with the file's name instead of loading silently.
The hashes guard against corruption and tampering with single files, not against
someone who rewrites the manifest too: that is what the trust rule below is for.

Trust rule (the convention of Hugging Face's ``trust_remote_code``): restoring never
imports or calls code an artifact names unless the caller passes ``trust_code=True``
(CLI ``--trust-code``). Two things in an artifact are code:

- a ``py:module:factory`` model spec (importing the module runs it; the factory is called);
- a ``.pt2`` program: ``torch.export.load`` unpickles parts of the archive (weights saved
  with ``use_pickle``, opaque constants) with ``weights_only=False``, and unpickling can
  run arbitrary code. :func:`require_trust_for_pt2` guards every CLI path that loads one.

``zoo:`` specs and ``hf:`` folders (config + safetensors, ``trust_remote_code=False``) are
data; ONNX files are data for ONNX Runtime.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from .errors import ArtifactError

MANIFEST_FILE = "manifest.json"
CODE_SCHEMES = ("py",)  # model-spec schemes whose loading imports and runs code
OPT_IN = "pass trust_code=True (CLI: --trust-code) only if you trust where this artifact came from"


def sha256_file(file: Path) -> str:
    """Hex SHA-256 of ``file``, read in 1 MiB chunks (weights files reach hundreds of MB)."""
    h = hashlib.sha256()
    with open(file, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def artifact_files(path: Path) -> list[Path]:
    """The files of the artifact in folder ``path``: every regular top-level file but the
    manifest and hidden files (``.name.xxxx`` temporaries of an unfinished atomic write)."""
    return sorted(p for p in Path(path).iterdir()
                  if p.is_file() and not p.is_symlink() and p.name != MANIFEST_FILE and not p.name.startswith("."))


def file_hashes(path: Path) -> dict[str, str]:
    """``{file name: SHA-256}`` for :func:`artifact_files`."""
    return {p.name: sha256_file(p) for p in artifact_files(path)}


def seal(path: str | os.PathLike[str]) -> dict[str, str]:
    """Recompute ``files`` in ``path/manifest.json`` from the folder's contents (after a
    step added a file, e.g. ``report.json`` or an exported ``model.onnx``).

    Only ``files`` and ``format_version`` change; every other manifest field is kept as written.
    """
    from .api import atomic_write
    from .record import FORMAT_VERSION

    path = Path(path)
    file = path / MANIFEST_FILE
    doc: dict[str, Any] = json.loads(file.read_text())
    doc["format_version"] = FORMAT_VERSION
    doc["files"] = file_hashes(path)
    text = json.dumps(doc, indent=2, sort_keys=False)
    atomic_write(file, lambda p: Path(p).write_text(text + "\n"))
    return doc["files"]


def verify_files(path: str | os.PathLike[str], files: dict[str, str], names: tuple[str, ...] | None = None) -> None:
    """Check ``names`` (default: every listed file) against the manifest's hashes.

    A named file the manifest does not list is refused too: a file dropped into the
    folder after it was saved has nothing to be checked against.
    """
    path = Path(path)
    for name in names if names is not None else tuple(files):
        file = path / name
        if name not in files:
            raise ArtifactError(f"{file} is not listed in {path / MANIFEST_FILE}'s file hashes (it was added after "
                                "the artifact was saved); re-create it with slimkit so it is sealed")
        if not file.is_file():
            raise ArtifactError(f"{file} not found (listed in {path / MANIFEST_FILE})")
        if sha256_file(file) != files[name]:
            raise ArtifactError(f"{file} is corrupt or was modified: its SHA-256 does not match {MANIFEST_FILE}")


def runs_code(spec: str) -> bool:
    """Whether building ``spec`` imports and runs code (``py:module:factory``)."""
    return isinstance(spec, str) and spec.partition(":")[0] in CODE_SCHEMES


def require_trust(spec: str, trust_code: bool, where: str | os.PathLike[str]) -> None:
    """Refuse to build a code-running spec read from an artifact unless the caller trusts it."""
    if runs_code(spec) and not trust_code:
        module = spec.partition(":")[2].rpartition(":")[0] or spec
        raise ArtifactError(f"{where} names model_spec {spec!r}: rebuilding it would import and run Python code "
                            f"(module {module!r}); {OPT_IN}, or pass model= to restore() to build the model yourself")


def require_trust_for_pt2(file: Path, trust_code: bool) -> None:
    """Refuse to load a ``.pt2`` program (``torch.export.load`` unpickles) without trust."""
    if not trust_code:
        raise ArtifactError(f"{file}: loading a .pt2 program unpickles parts of it (torch.export.load), which can "
                            f"run code; {OPT_IN}, or time another runtime (--runtime eager/onnx)")
