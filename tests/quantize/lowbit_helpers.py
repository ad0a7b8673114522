"""Tiny model, data and artifact checks shared by the QAT / binary / ternary / k-means tests."""
from __future__ import annotations

import struct
from pathlib import Path

import torch
from torch import nn

import slimkit
from slimkit import measure
from slimkit.core import Context


def tiny_model(seed: int = 0) -> nn.Module:
    """Conv -> BN -> ReLU -> Flatten -> Linear on [B, 2, 4, 4] inputs (every layer kind the methods touch)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8 * 16, 3))
    with torch.no_grad():  # non-trivial BN statistics, so folding them is a real test
        bn = model[1]
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.2, 0.2)
    return model.eval()


def tiny_factory() -> nn.Module:
    return tiny_model(0)


def tiny_ctx(n: int = 96, batch: int = 16, seed: int = 1) -> Context:
    """Labelled batches from a fixed random teacher, cross-entropy loss."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, 4, 4, generator=gen)
    teacher = torch.randn(2 * 16, 3, generator=gen)
    y = (x.reshape(n, -1) @ teacher).argmax(1)
    batches = [(x[i:i + batch], y[i:i + batch]) for i in range(0, n, batch)]
    return Context(train_data=batches, loss_fn=lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]),
                   progress=False)


def inputs(n: int = 8, seed: int = 2) -> torch.Tensor:
    return torch.randn(n, 2, 4, 4, generator=torch.Generator().manual_seed(seed))


def header_bytes(file: Path) -> int:
    """Length of a safetensors file's 8-byte prefix plus its JSON header."""
    with open(file, "rb") as f:
        return 8 + struct.unpack("<Q", f.read(8))[0]


def check_round_trip(model: nn.Module, folder: Path, x: torch.Tensor) -> nn.Module:
    """save -> restore gives the same outputs, and the file's tensor bytes equal the size account exactly."""
    slimkit.save(model, folder)
    restored = slimkit.restore(folder, model=tiny_factory)
    assert torch.allclose(restored(x), model.eval()(x), atol=1e-6)
    file = folder / "model.safetensors"
    account = measure.profile(restored, x[:1]).bytes_on_disk
    assert file.stat().st_size - header_bytes(file) == account
    return restored
