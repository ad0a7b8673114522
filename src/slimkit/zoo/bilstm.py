"""``zoo:sst2-bilstm``: a BiLSTM sentence classifier for SST-2, trained here on first use (one epoch over 32 k phrases).

The recurrent test bed: the first model class of the text survey, small enough to train on
two CPU cores. Tokens come from the MiniLM WordPiece tokenizer (no separate vocabulary to
build or ship); embedding 128, one bidirectional LSTM layer of 256 units per direction,
masked mean and max pooling over time (concatenated, ``[B, 4*256]``), dropout and a Linear
head to 2 logits. The forward takes the same ``{"input_ids", "attention_mask"}`` batch as
the other text models, so tokenizer, tasks and tracing are shared.

Weights are cached under :func:`~slimkit.zoo.data.cache_dir`, keyed by a hash of the
architecture, the training settings and :data:`VERSION`, so a changed recipe never reuses
stale weights. Training is seeded before the model is built (the initial weights are part
of what the key promises) and runs in a forked RNG.
"""
from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import torch
from torch import nn

from ..core.progress import Progress
from .data import atomic_write, cache_dir
from .task_base import fixed_subset

VERSION = "sst2-bilstm-v1"
TRAIN_SETTINGS: dict[str, float | int | str] = {
    "seed": 0, "epochs": 1, "batch_size": 64, "lr": 3e-3, "max_length": 64, "train_sentences": 32000,
    "split": "sst2 train, fixed random subset (seed 0)",
    "threads": 2,
}
TRAIN_COUNT = 0  # trainings in this process (tests check the cache with it)


class BiLSTMClassifier(nn.Module):
    """Embedding -> BiLSTM -> [masked mean ; masked max] over time -> dropout -> Linear(4H, classes)."""

    def __init__(self, vocab_size: int = 30522, embed_dim: int = 128, hidden: int = 256, classes: int = 2,
                 dropout: float = 0.3) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.lstm = nn.LSTM(embed_dim, hidden, batch_first=True, bidirectional=True)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(4 * hidden, classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.embed(input_ids)  # [B, T, E]
        out, _ = self.lstm(x)  # [B, T, 2H]
        if attention_mask is None:
            mean, top = out.mean(dim=1), out.amax(dim=1)  # [B, 2H] each
        else:
            m = attention_mask.unsqueeze(-1).to(out.dtype)  # [B, T, 1]
            mean = (out * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)  # [B, 2H]
            top = torch.where(m > 0, out, torch.full_like(out, -1e4)).amax(dim=1)  # [B, 2H]
        return self.head(self.dropout(torch.cat([mean, top], dim=-1)))  # [B, classes]


def cache_key(model: nn.Module | None = None) -> str:
    model = model if model is not None else BiLSTMClassifier()
    text = VERSION + repr(model) + json.dumps(TRAIN_SETTINGS, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_file() -> Path:
    return cache_dir() / f"sst2-bilstm-{cache_key()}.safetensors"


def _batches(tokenizer, texts: list[str], labels: list[int], batch_size: int, max_length: int,
             seed: int) -> list[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    """Length-bucketed batches (little padding) in a seeded random order."""
    lengths = tokenizer.lengths(texts, max_length)
    order = sorted(range(len(texts)), key=lambda i: (lengths[i], i))
    out = []
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        out.append((tokenizer.encode([texts[i] for i in idx], max_length), torch.tensor([labels[i] for i in idx])))
    random.Random(seed).shuffle(out)
    return out


def train_bilstm(tokenizer) -> BiLSTMClassifier:
    """Seed, build and train the classifier (Adam, linear decay): one epoch over 32 k of the 60 k train phrases."""
    global TRAIN_COUNT
    from .data import read_sst2

    s = TRAIN_SETTINGS
    texts, labels = read_sst2("train")
    pick = fixed_subset(len(texts), int(s["train_sentences"]), int(s["seed"])).tolist()
    texts, labels = [texts[i] for i in pick], [labels[i] for i in pick]
    threads = torch.get_num_threads()
    torch.set_num_threads(int(s["threads"]))
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(s["seed"]))  # before building: the initial weights are seeded too
            net = BiLSTMClassifier(vocab_size=tokenizer.vocab_size)
            batches = _batches(tokenizer, texts, labels, int(s["batch_size"]), int(s["max_length"]), int(s["seed"]))
            opt = torch.optim.Adam(net.parameters(), lr=float(s["lr"]))
            total = int(s["epochs"]) * len(batches)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: max(0.0, 1.0 - step / total))
            net.train()
            with Progress(total, "zoo:sst2-bilstm: training on first use (then cached)") as bar:
                for epoch in range(int(s["epochs"])):
                    order = list(range(len(batches)))
                    random.Random(int(s["seed"]) + 1 + epoch).shuffle(order)
                    for i in order:
                        inputs, y = batches[i]
                        loss = nn.functional.cross_entropy(net(**inputs), y)
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        nn.utils.clip_grad_norm_(net.parameters(), 5.0)
                        opt.step()
                        sched.step()
                        bar.update(1)
    finally:
        torch.set_num_threads(threads)
    TRAIN_COUNT += 1
    return net.eval()


def pretrained_bilstm(tokenizer) -> BiLSTMClassifier:
    """The trained classifier, from the cache when present (else trained now and cached atomically)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, save_file

    file = cache_file()
    if file.is_file():
        net = BiLSTMClassifier(vocab_size=tokenizer.vocab_size)
        try:
            net.load_state_dict(load_file(str(file)), strict=True)
            return net.eval()
        except (SafetensorError, OSError, RuntimeError, ValueError):  # torn or stale file: retrain
            pass
    net = train_bilstm(tokenizer)
    state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    atomic_write(file, lambda p: save_file(state, str(p)))
    return net


__all__ = ["BiLSTMClassifier", "VERSION", "cache_file", "pretrained_bilstm", "train_bilstm"]
