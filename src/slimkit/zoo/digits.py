"""``zoo:digits-cnn``: a small CNN for scikit-learn's 8x8 digits, trained here in seconds.

It is the toolkit's fast, data-free test bed: every layer kind structured pruning must
handle (conv -> BN -> ReLU chains, pooling, and a flatten into a Linear whose input
features are grouped by channel) in a model that trains deterministically on CPU.
Weights are cached under :func:`~slimkit.zoo.data.cache_dir`, keyed by a hash of the
architecture and the training settings, so a changed recipe never reuses stale weights.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import nn

from .data import atomic_write, cache_dir

N_CLASSES = 10
# "init": the initial weights are drawn under the seed too (before, the caller's RNG state drew
# them, so each fresh process trained a different reference model: 443-449 of 450 correct)
TRAIN_SETTINGS: dict[str, float | int | str] = {"seed": 0, "init": "seeded", "epochs": 12, "batch_size": 128, "lr": 5e-3, "weight_decay": 1e-4,
                  "split": "train_test_split(test_size=0.25, random_state=0, stratify=y)", "scale": "x/16"}

TRAIN_COUNT = 0  # how many times this process trained the CNN (tests check the cache with it)


class DigitsCNN(nn.Module):
    """Conv(1->16)+BN+ReLU, Conv(16->32)+BN+ReLU, pool, Conv(32->64)+BN+ReLU, pool, flatten, FC 256->64->10.

    Input ``[B, 1, 8, 8]`` with pixel values in [0, 1]; output logits ``[B, 10]``.
    """

    def __init__(self, widths: tuple[int, int, int] = (16, 32, 64), hidden: int = 64) -> None:
        super().__init__()
        c1, c2, c3 = widths
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), nn.BatchNorm2d(c1), nn.ReLU(),
            nn.Conv2d(c1, c2, 3, padding=1), nn.BatchNorm2d(c2), nn.ReLU(),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
            nn.Conv2d(c2, c3, 3, padding=1), nn.BatchNorm2d(c3), nn.ReLU(),
            nn.MaxPool2d(2),  # 4x4 -> 2x2
        )
        self.flatten = nn.Flatten()  # [B, c3, 2, 2] -> [B, c3*4], channel-major
        self.classifier = nn.Sequential(nn.Linear(c3 * 2 * 2, hidden), nn.ReLU(), nn.Linear(hidden, N_CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, 1, 8, 8]
        return self.classifier(self.flatten(self.features(x)))  # [B, 10]


def digits_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fixed split every digits user shares: ``(x_train, y_train, x_test, y_test)``.

    x: float32 ``[N, 1, 8, 8]`` in [0, 1] (pixels / 16); y: int64 ``[N]``. 1347 train, 450 test.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0  # [1797, 1, 8, 8]
    y = torch.tensor(d.target, dtype=torch.long)
    idx = torch.arange(len(y)).numpy()
    tr, te = train_test_split(idx, test_size=0.25, random_state=0, stratify=d.target)
    tr_t, te_t = torch.as_tensor(tr), torch.as_tensor(te)
    return x[tr_t], y[tr_t], x[te_t], y[te_t]


def cache_key(model: nn.Module | None = None) -> str:
    """Hash of the architecture and training settings; the weights' cache file is named by it."""
    model = model if model is not None else DigitsCNN()
    text = repr(model) + json.dumps(TRAIN_SETTINGS, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_file() -> Path:
    return cache_dir() / f"digits-cnn-{cache_key()}.safetensors"


def train_digits_cnn(model: DigitsCNN | None = None) -> DigitsCNN:
    """Train a fresh :class:`DigitsCNN` deterministically (Adam, one-cycle LR); a few seconds on CPU.

    Runs single-threaded inside a forked RNG, so the caller's random state and thread count are
    untouched. With ``model=None`` the network is also *built* under the seed, so every process
    trains the same reference model; a given ``model`` keeps the initial weights it came with.
    """
    global TRAIN_COUNT
    s = TRAIN_SETTINGS
    x_tr, y_tr, _, _ = digits_split()
    threads = torch.get_num_threads()
    # One thread: the layers are too small to gain from more, it is several times faster when
    # other jobs share the cores, and the result does not depend on the machine's core count.
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(s["seed"]))
            net = model if model is not None else DigitsCNN()
            _fit(net, x_tr, y_tr, s)
    finally:
        torch.set_num_threads(threads)
    TRAIN_COUNT += 1
    net.eval()
    return net


def _fit(net: nn.Module, x: torch.Tensor, y: torch.Tensor, s: dict[str, float | int | str]) -> None:
    """Adam with a one-cycle schedule over shuffled mini-batches (x: [N, 1, 8, 8], y: [N])."""
    opt = torch.optim.Adam(net.parameters(), lr=float(s["lr"]), weight_decay=float(s["weight_decay"]))
    epochs, bs = int(s["epochs"]), int(s["batch_size"])
    steps = epochs * ((len(y) + bs - 1) // bs)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=float(s["lr"]), total_steps=steps)
    gen = torch.Generator().manual_seed(int(s["seed"]))
    net.train()
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=gen)
        for i in range(0, len(perm), bs):
            b = perm[i:i + bs]
            loss = nn.functional.cross_entropy(net(x[b]), y[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()


def pretrained_digits_cnn() -> DigitsCNN:
    """The trained CNN, from the cache when present (else trained now and cached atomically)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, save_file

    file = cache_file()
    if file.is_file():
        try:
            net = DigitsCNN()
            net.load_state_dict(load_file(str(file)), strict=True)
            return net.eval()
        except (SafetensorError, OSError, RuntimeError, ValueError):  # torn or stale file: retrain
            pass
    net = train_digits_cnn()  # built and trained under the seed: the same model in every process
    state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    atomic_write(file, lambda p: save_file(state, str(p)))
    return net
