"""The one verb (``apply``) and the artifact round trip (``save`` / ``restore``)."""
from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .config import MethodConfig
from .context import Context
from .encoding import decode_state, encode_state, layout_json
from .errors import ArtifactError, SlimkitError
from .record import Manifest, Record, manifest_of
from .registry import entry_for, entry_for_kind
from .targets import Targets

WEIGHTS_FILE = "model.safetensors"
MANIFEST_FILE = "manifest.json"
_LAYOUT_KEY = "slimkit.layout"


def apply(
    model: nn.Module,
    config: MethodConfig,
    targets: Targets | None = None,
    ctx: Context | None = None,
    *,
    inplace: bool = False,
) -> nn.Module:
    """Apply one compression method and return the compressed model.

    The caller's model is left untouched unless ``inplace=True`` (methods rebuild
    modules, so silently editing a model someone still holds is a trap). The method's
    :class:`Record` is appended to the model's manifest (``slimkit.records(model)``).
    Randomness inside the method is seeded from ``ctx.seed`` without touching the
    global RNG state.
    """
    if not isinstance(config, MethodConfig):
        raise TypeError(f"config must be a MethodConfig, got {type(config).__name__}")
    targets = targets or Targets()
    ctx = ctx or Context()
    entry = entry_for(config)
    if not inplace:
        model = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ctx.seed)
        record = entry.handler(model, config, targets, ctx)
    if not isinstance(record, Record):
        raise TypeError(f"handler for {config.kind} returned {type(record).__name__}, not a Record")
    record.kind = config.kind
    record.config = config.to_dict()
    record.targets = targets.to_dict()
    manifest_of(model).records.append(record)
    return model


def save(model: nn.Module, path: str | os.PathLike[str], *, spec: str | None = None) -> Path:
    """Write ``model.safetensors`` (in slimkit's storage format) and ``manifest.json`` into ``path``.

    ``spec`` (e.g. ``"zoo:digits-cnn"``) says how ``restore`` rebuilds the dense model;
    models from :mod:`slimkit.zoo` carry it already. Files are written under temporary
    names and renamed into place, so an interrupted save leaves no torn file.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    manifest = copy.copy(manifest_of(model))
    if spec is not None:
        manifest.model_spec = spec
    from safetensors.torch import save_file

    tensors, layout = encode_state(model.state_dict())
    atomic_write(path / WEIGHTS_FILE, lambda p: save_file(tensors, str(p), metadata={_LAYOUT_KEY: layout_json(layout)}))
    text = json.dumps(manifest.to_dict(), indent=2, sort_keys=False)
    atomic_write(path / MANIFEST_FILE, lambda p: Path(p).write_text(text + "\n"))
    return path


def atomic_write(dest: Path, write: Callable[[Path], object]) -> None:
    """Write through a temporary sibling and rename, so readers never see a torn file."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_manifest(path: str | os.PathLike[str]) -> Manifest:
    """Parse ``path/manifest.json``; a missing, truncated or malformed file raises :class:`ArtifactError`."""
    file = Path(path) / MANIFEST_FILE
    if not file.is_file():
        raise ArtifactError(f"{file} not found (is {path} a folder written by slimkit.save?)")
    try:
        doc = json.loads(file.read_text())
        if not isinstance(doc, dict) or not isinstance(doc.get("records", []), list):
            raise ValueError("not a slimkit manifest")
        return Manifest.from_dict(doc)
    except (ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"{file} is corrupt or truncated: {exc}") from exc


def restore(
    path: str | os.PathLike[str],
    *,
    model: nn.Module | Callable[[], nn.Module] | None = None,
) -> nn.Module:
    """Rebuild a saved model: build it densely, replay the records, load weights strictly.

    The dense model comes from the manifest's ``model_spec`` through :mod:`slimkit.zoo`,
    or from ``model`` (a fresh dense module or a factory) for models outside the zoo.
    """
    path = Path(path)
    manifest = read_manifest(path)
    if model is None:
        if not manifest.model_spec:
            raise ArtifactError(f"{path / MANIFEST_FILE} names no model_spec; pass model= to restore()")
        from ..zoo import build

        dense = build(manifest.model_spec)
    elif isinstance(model, nn.Module):
        dense = copy.deepcopy(model)
    else:
        dense = model()
    for record in manifest.records:
        entry = entry_for_kind(record.kind)
        if entry.replay is not None:
            entry.replay(dense, record)
    state = load_weights(path)
    try:
        dense.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ArtifactError(f"weights in {path / WEIGHTS_FILE} do not fit the rebuilt model: {exc}") from exc
    dense.__dict__["_slimkit_manifest"] = manifest
    return dense.eval()


def load_weights(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Decode ``path/model.safetensors`` into a plain state dict."""
    file = Path(path) / WEIGHTS_FILE
    if not file.is_file():
        raise ArtifactError(f"{file} not found")
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        layout = json.loads(meta[_LAYOUT_KEY]) if _LAYOUT_KEY in meta else {k: {"dense": k} for k in tensors}
        return decode_state(tensors, layout)
    except SlimkitError:
        raise
    except Exception as exc:  # safetensors raises several types on a torn header/body
        raise ArtifactError(f"{file} is corrupt or truncated: {exc}") from exc


def replace_dir(tmp: Path, dest: Path, *, overwrite: bool) -> None:
    """Move a finished temporary folder into place (used by ``compress``)."""
    if dest.exists():
        if not overwrite and any(dest.iterdir()):
            raise ArtifactError(f"{dest} exists and is not empty (use --overwrite)")
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, dest)
