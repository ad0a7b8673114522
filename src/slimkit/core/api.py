"""The one verb (``apply``) and the artifact round trip (``save`` / ``restore``)."""
from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .config import MethodConfig
from .context import Context
from .encoding import decode_state, encode_state, layout_json
from .errors import ArtifactError, ModelSpecError, SlimkitError
from .plugins import build_spec
from .record import Manifest, Record, manifest_of
from .registry import entry_for, entry_for_kind
from .safety import file_hashes, require_trust, verify_files
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
    record.config_version = type(config).version
    record.config = config.to_dict()
    record.targets = targets.to_dict()
    manifest_of(model).records.append(record)
    return model


def save(model: nn.Module, path: str | os.PathLike[str], *, spec: str | None = None) -> Path:
    """Write ``model.safetensors`` (in slimkit's storage format) and ``manifest.json`` into ``path``.

    ``spec`` (e.g. ``"zoo:digits-cnn"``) says how ``restore`` rebuilds the dense model;
    models from :mod:`slimkit.zoo` carry it already. Files are written under temporary
    names and renamed into place, so an interrupted save leaves no torn file. The manifest
    lists the SHA-256 of every file in ``path`` (weights and whatever export steps wrote
    there); a caller that adds files later re-lists them with :func:`slimkit.core.safety.seal`.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    manifest = copy.copy(manifest_of(model))
    if spec is not None:
        manifest.model_spec = spec
    from safetensors.torch import save_file

    tensors, layout = encode_state(model.state_dict())
    atomic_write(path / WEIGHTS_FILE, lambda p: save_file(tensors, str(p), metadata={_LAYOUT_KEY: layout_json(layout)}))
    manifest.files = file_hashes(path)
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
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise ArtifactError(f"{file} is corrupt or truncated: {exc}") from exc
    try:
        return Manifest.from_dict(doc)
    except (ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"{file} is not a manifest this slimkit can read: {exc}") from exc


def restore(
    path: str | os.PathLike[str],
    *,
    model: nn.Module | Callable[[], nn.Module] | None = None,
    trust_code: bool = False,
) -> nn.Module:
    """Rebuild a saved model: check file hashes, build it densely, replay the records, load weights strictly.

    The dense model comes from the manifest's ``model_spec`` through :mod:`slimkit.zoo`,
    or from ``model`` (a fresh dense module or a factory) for models outside the zoo.
    An artifact is untrusted: a ``py:module:factory`` spec (code) is only imported and
    called with ``trust_code=True``. Anything wrong with the folder (hashes, unknown
    format version, records that do not replay, weights that do not fit) raises
    :class:`ArtifactError`.
    """
    path = Path(path)
    manifest = read_manifest(path)
    check_files(path, manifest)
    if model is None:
        dense = build_dense(path, manifest, trust_code=trust_code)
    elif isinstance(model, nn.Module):
        dense = copy.deepcopy(model)
    else:
        dense = model()
    for i, record in enumerate(manifest.records, 1):
        replay_record(dense, record, f"{path / MANIFEST_FILE}: record {i} ({record.kind})")
    state = load_weights(path)
    try:
        dense.load_state_dict(state, strict=True)
    except Exception as exc:  # RuntimeError for shapes; custom modules may raise others on bad metadata
        raise ArtifactError(f"weights in {path / WEIGHTS_FILE} do not fit the rebuilt model: {exc}") from exc
    dense.__dict__["_slimkit_manifest"] = manifest
    return dense.eval()


def check_files(path: Path, manifest: Manifest) -> None:
    """Check every file the manifest lists against its SHA-256 (format 1 has no hashes: warn)."""
    if manifest.format_version < 2:
        warnings.warn(f"{path / MANIFEST_FILE} is format_version {manifest.format_version} (no file hashes): "
                      "file integrity is not checked; save it again to add them", stacklevel=3)
        return
    verify_files(path, manifest.files, (WEIGHTS_FILE, *(n for n in manifest.files if n != WEIGHTS_FILE)))


def build_dense(path: Path, manifest: Manifest, *, trust_code: bool = False) -> nn.Module:
    """The dense model the manifest's ``model_spec`` names (code-running specs need ``trust_code``)."""
    where = path / MANIFEST_FILE
    if not manifest.model_spec:
        raise ArtifactError(f"{where} names no model_spec; pass model= to restore()")
    require_trust(manifest.model_spec, trust_code, where)
    try:
        return build_spec(manifest.model_spec)
    except ModelSpecError as exc:
        raise ArtifactError(f"{where}: model_spec cannot be built: {exc}") from exc


def replay_record(model: nn.Module, record: Record, where: str) -> None:
    """Recreate one record's structural change; a record that does not fit is an :class:`ArtifactError`.

    Records come from a file: whatever a replay function raises on data it cannot use
    (a missing key, a wrong type, an index out of range, an unknown kind) is reported as
    a broken artifact naming the record, never as a raw exception.
    """
    try:
        entry = entry_for_kind(record.kind)
        known = entry.config_cls.version
        if record.config_version > known:
            raise ArtifactError(f"{where} was written with {record.kind} config version {record.config_version}; "
                                f"this slimkit knows up to version {known}: upgrade slimkit to restore it")
        if entry.replay is not None:
            entry.replay(model, record)
    except ArtifactError:
        raise
    except SlimkitError as exc:
        raise ArtifactError(f"{where} cannot be replayed: {exc}") from exc
    except Exception as exc:
        raise ArtifactError(f"{where} cannot be replayed: {type(exc).__name__}: {exc}") from exc


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
