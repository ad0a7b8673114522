"""Which runtime serves a saved folder, and loading it for timing.

A folder whose recipe ended in an export step ships ``model.pt2`` (PT2E int8, served by
:class:`slimkit.export.pt2e.Pt2eModel`) or ``model.onnx`` (served by ONNX Runtime through
:class:`slimkit.export.onnx.OrtModel`); the restored eager PyTorch model is not what
runs in production then, so ``slimkit bench`` and ``compress``'s report time the shipped
file (``runtime="auto"``) unless asked for another runtime.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Literal

from torch import nn

from ..core.errors import ArtifactError, ConfigError
from ..core.record import Manifest
from ..core.safety import require_trust_for_pt2, verify_files

Runtime = Literal["auto", "eager", "onnx", "pt2e"]
RUNTIMES: tuple[str, ...] = ("auto", "eager", "onnx", "pt2e")
_EXPORT_KIND = {"onnx": "export.onnx", "pt2e": "export.pt2e"}
_DEFAULT_FILE = {"onnx": "model.onnx", "pt2e": "model.pt2"}


def _plain_name(name: object) -> bool:
    return isinstance(name, str) and bool(name) and "/" not in name and "\\" not in name and name not in (".", "..")


def _exported(manifest: Manifest) -> list[tuple[str, str]]:
    """``(runtime, file)`` for each export record, in recipe order."""
    out = []
    for rec in manifest.records:
        for runtime, kind in _EXPORT_KIND.items():
            name = rec.data.get("file", _DEFAULT_FILE[runtime])
            if rec.kind == kind and _plain_name(name):
                out.append((runtime, str(name)))
    return out


def shipped(path: Path, manifest: Manifest, runtime: str = "auto") -> tuple[str, str | None]:
    """``(runtime, file name)`` to time for folder ``path``; ``("eager", None)`` is the restored model.

    ``auto``: the file of the last export step that is in the folder; else ``model.pt2``,
    else ``model.onnx`` (written by ``slimkit export``); else eager. An explicit ``onnx``
    / ``pt2e`` needs such a file.
    """
    if runtime not in RUNTIMES:
        raise ConfigError(f"unknown runtime {runtime!r}; expected one of {', '.join(RUNTIMES)}", key="runtime")
    if runtime == "eager":
        return "eager", None
    wanted = ("pt2e", "onnx") if runtime == "auto" else (runtime,)
    candidates = [c for c in reversed(_exported(manifest)) if c[0] in wanted]
    candidates += [(rt, _DEFAULT_FILE[rt]) for rt in wanted]
    for rt, name in candidates:
        if (path / name).is_file():
            return rt, name
    if runtime == "auto":
        return "eager", None
    fmt = runtime
    raise ArtifactError(f"{path} has no {_DEFAULT_FILE[runtime]} to time with --runtime {runtime} "
                        f"(write one with: slimkit export {path} --format {fmt})")


def load_runtime(path: Path, manifest: Manifest, runtime: str, name: str, *, threads: int | None = None,
                 trust_code: bool = False) -> nn.Module:
    """The shipped file behind an ``nn.Module`` interface, after checking its SHA-256.

    ONNX Runtime is timed without spinning worker threads (interleaved against PyTorch,
    spinning threads would steal the cores from the other side). A ``.pt2`` program is
    only loaded with ``trust_code`` (``torch.export.load`` unpickles).
    """
    file = path / name
    if manifest.format_version >= 2:
        verify_files(path, manifest.files, (name,))
    else:
        warnings.warn(f"{path}: format_version {manifest.format_version} lists no file hashes; {name} is not "
                      "checked", stacklevel=2)
    if runtime == "pt2e":
        require_trust_for_pt2(file, trust_code)
        from ..export.pt2e import Pt2eModel

        return Pt2eModel(file)
    from ..export.onnx import OrtModel

    try:
        return OrtModel(file, threads=threads, spin=False)
    except ArtifactError:
        raise
    except Exception as exc:  # onnxruntime raises its own types on a file it cannot read
        raise ArtifactError(f"{file} cannot be loaded by ONNX Runtime: {exc}") from exc


def baseline_for(base: nn.Module, manifest: Manifest, name: str | None, inputs: object) -> nn.Module:
    """The eager baseline to pair with the served file: the same part of the model it exports.

    An encoder-decoder's export holds only its encoder (``export.onnx`` / ``export.pt2e``
    ``part``); timing the whole dense model against it would credit the file with the
    decoder it does not run. Other exports hold the whole model and the baseline is unchanged.
    """
    if name is None:
        return base
    for rec in manifest.records:
        if rec.kind in _EXPORT_KIND.values() and rec.data.get("file") == name and rec.data.get("part"):
            from ..export.view import export_view

            return export_view(base, inputs, part="encoder")[0]  # type: ignore[arg-type]
    return base
