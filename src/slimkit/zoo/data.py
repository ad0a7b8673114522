"""Where the data lives and how to read it: SST-2, STS-B and the 1000-image ImageNet sample.

The folder comes from the ``SLIMKIT_DATA`` environment variable (never a guessed path),
so a run on the wrong machine fails loudly instead of quietly evaluating on nothing.
Decoded ImageNet crops are cached as a uint8 tensor file under :func:`cache_dir`,
so only the first run pays for JPEG decoding.
"""
from __future__ import annotations

import csv
import hashlib
import os
import pickle
from pathlib import Path
from typing import Literal

import torch
from PIL import Image

from ..core.api import atomic_write
from ..core.errors import DataError

SPLITS = ("train", "dev", "test")
IMAGE_SIZE = 224
RESIZE_SHORTER = 256
IMAGENET_CALIB = 500  # the first 500 images by label calibrate; the last 500 evaluate
_IMAGE_CACHE_VERSION = "v1-shorter256-center224-bilinear"


def data_dir() -> Path:
    """The data folder named by ``SLIMKIT_DATA`` (raises :class:`DataError` if unset or missing)."""
    value = os.environ.get("SLIMKIT_DATA")
    if not value:
        raise DataError("SLIMKIT_DATA is not set; export SLIMKIT_DATA=/path/to/shared/data or run via the Makefile")
    path = Path(value).expanduser()
    if not path.is_dir():
        raise DataError(f"SLIMKIT_DATA={value} is not a folder; point it at the shared data folder "
                        "(or run via the Makefile)")
    return path


def cache_dir() -> Path:
    """Where trained zoo weights and decoded images are cached (``SLIMKIT_CACHE`` or ``~/.cache/slimkit``)."""
    path = Path(os.environ.get("SLIMKIT_CACHE") or Path.home() / ".cache" / "slimkit").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path




def read_tsv(path: Path) -> list[dict[str, str]]:
    """Rows of a header-first, tab-separated, unquoted file (the GLUE layout)."""
    if not path.is_file():
        raise DataError(f"{path} not found (is SLIMKIT_DATA the shared data folder?)")
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def _split_file(dataset: str, split: str) -> Path:
    if split not in SPLITS:
        raise DataError(f"unknown {dataset} split {split!r}; expected one of {', '.join(SPLITS)}")
    return data_dir() / dataset / f"{split}.tsv"


def read_sst2(split: str) -> tuple[list[str], list[int]]:
    """SST-2 ``(sentences, labels)`` with labels 0 (negative) / 1 (positive)."""
    path = _split_file("sst2", split)
    rows = read_tsv(path)
    try:
        return [r["sentence"].strip() for r in rows], [int(r["label"]) for r in rows]
    except (KeyError, ValueError, TypeError) as exc:
        raise DataError(f"{path}: expected columns sentence, label (0/1): {exc}") from exc


def read_stsb(split: str) -> tuple[list[str], list[str], list[float]]:
    """STS-B ``(sentence1, sentence2, score)`` with gold scores in [0, 5]."""
    path = _split_file("stsb", split)
    rows = read_tsv(path)
    try:
        return ([r["sentence1"] for r in rows], [r["sentence2"] for r in rows], [float(r["score"]) for r in rows])
    except (KeyError, ValueError, TypeError) as exc:
        raise DataError(f"{path}: expected columns sentence1, sentence2, score: {exc}") from exc


def imagenet_labels() -> list[tuple[str, int]]:
    """``(file, label)`` for the ImageNet sample, sorted by label (the order the halves are cut in)."""
    path = data_dir() / "imagenet-sample" / "labels.tsv"
    try:
        rows = [(r["file"], int(r["label"])) for r in read_tsv(path)]
    except (KeyError, ValueError, TypeError) as exc:
        raise DataError(f"{path}: expected columns file, label: {exc}") from exc
    return sorted(rows, key=lambda r: r[1])


def center_crop(img: Image.Image, shorter: int = RESIZE_SHORTER, size: int = IMAGE_SIZE) -> torch.Tensor:
    """Resize the shorter side to ``shorter`` (bilinear) and cut the central ``size`` square; uint8 [3, S, S]."""
    img = img.convert("RGB")
    w, h = img.size
    scale = shorter / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.Resampling.BILINEAR)
    left, top = (nw - size) // 2, (nh - size) // 2
    img = img.crop((left, top, left + size, top + size))
    data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
    return data.view(size, size, 3).permute(2, 0, 1).contiguous()  # [3, S, S]


def imagenet_sample(part: Literal["calib", "eval", "all"] = "eval") -> tuple[torch.Tensor, torch.Tensor]:
    """Decoded, centre-cropped ImageNet sample: ``(images uint8 [N, 3, 224, 224], labels int64 [N])``.

    ``calib`` is the first 500 images by label, ``eval`` the last 500. The decoded tensor is
    cached, keyed by the label file's content and the preprocessing version.
    """
    if part not in ("calib", "eval", "all"):
        raise DataError(f"unknown ImageNet sample part {part!r}; expected calib, eval or all")
    rows = imagenet_labels()
    root = data_dir() / "imagenet-sample"
    key = hashlib.sha256((_IMAGE_CACHE_VERSION + repr(rows)).encode()).hexdigest()[:16]
    file = cache_dir() / f"imagenet-sample-{key}.pt"
    images: torch.Tensor | None = None
    if file.is_file():
        try:
            images = torch.load(file, weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError):  # torn file: decode again
            images = None
        if images is not None and tuple(images.shape) != (len(rows), 3, IMAGE_SIZE, IMAGE_SIZE):
            images = None
    if images is None:
        crops = []
        for name, _ in rows:
            try:
                with Image.open(root / name) as img:
                    crops.append(center_crop(img))
            except OSError as exc:
                raise DataError(f"cannot read ImageNet sample image {root / name}: {exc}") from exc
        images = torch.stack(crops)  # [N, 3, 224, 224] uint8
        atomic_write(file, lambda p: torch.save(images, p))
    labels = torch.tensor([lab for _, lab in rows], dtype=torch.long)
    if part == "calib":
        return images[:IMAGENET_CALIB], labels[:IMAGENET_CALIB]
    if part == "eval":
        return images[IMAGENET_CALIB:], labels[IMAGENET_CALIB:]
    return images, labels
