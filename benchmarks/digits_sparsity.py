"""Digits CNN at 90 % unstructured sparsity: cubic (AGP) schedule with fine-tuning vs dense.

Prints test accuracy, the sparsity reached in the pruned weights and the bytes of the
files ``slimkit.save`` writes (sparse tensors as relative-index CSR) for: the dense
model, one-shot 90 % global magnitude pruning without fine-tuning (for contrast), and
``prune.gradual`` with global and per-layer scope. Everything runs on CPU in well
under a minute::

    .venv/bin/python benchmarks/digits_sparsity.py [--steps 600] [--threads 1]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import slimkit
from slimkit import measure
from slimkit.core import Context, Targets
from slimkit.prune import GradualPrune, MagnitudePrune
from slimkit.zoo.digits import DigitsCNN, digits_split, pretrained_digits_cnn

TARGETS = Targets(types=("Conv2d", "Linear"))


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def train_context(x: torch.Tensor, y: torch.Tensor, batch: int = 64, seed: int = 0) -> Context:
    """Fixed shuffled mini-batches of the training split, cross-entropy loss."""
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    batches = [(x[perm[i:i + batch]], y[perm[i:i + batch]]) for i in range(0, len(perm), batch)]
    return Context(train_data=batches, loss_fn=lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]),
                   progress=False, seed=seed)


def targeted_sparsity(model: nn.Module) -> float:
    ws = [m.weight for _, m in TARGETS.iter(model)]
    return sum(int((w == 0).sum()) for w in ws) / sum(w.numel() for w in ws)


def saved_bytes(model: nn.Module, folder: Path) -> int:
    slimkit.save(model, folder)
    return (folder / "model.safetensors").stat().st_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    x_tr, y_tr, x_te, y_te = digits_split()
    dense = pretrained_digits_cnn()
    ctx = train_context(x_tr, y_tr)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        d_bytes = saved_bytes(dense, Path(tmp) / "dense")
        d_acc = accuracy(dense, x_te, y_te)
        d_prof = measure.profile(dense, x_te[:1]).bytes_on_disk
        rows.append(("dense", d_acc, 0.0, d_bytes, d_prof, 0.0))
        runs = [
            ("one-shot magnitude, no fine-tune", MagnitudePrune(sparsity=args.sparsity, scope="global")),
            ("prune.gradual (cubic), global", GradualPrune(sparsity=args.sparsity, steps=args.steps, scope="global")),
            ("prune.gradual (cubic), per layer", GradualPrune(sparsity=args.sparsity, steps=args.steps)),
        ]
        for i, (name, cfg) in enumerate(runs):
            t0 = time.perf_counter()
            out = slimkit.apply(dense, cfg, TARGETS, ctx)
            secs = time.perf_counter() - t0
            folder = Path(tmp) / f"run{i}"
            nbytes = saved_bytes(out, folder)
            again = slimkit.restore(folder, model=DigitsCNN)
            acc = accuracy(again, x_te, y_te)  # measured on the restored artifact, not the live model
            prof = measure.profile(again, x_te[:1]).bytes_on_disk  # the size account reports use
            rows.append((name, acc, targeted_sparsity(again), nbytes, prof, secs))
    print(f"digits CNN, test split n={len(y_te)}, target sparsity {args.sparsity:.0%} of Conv2d+Linear weights, "
          f"{args.steps} fine-tuning steps, {torch.get_num_threads()} thread(s)")
    print(f"{'model':36s} {'test acc':>9s} {'drop (pt)':>9s} {'sparsity':>9s} {'file bytes':>11s} {'x dense':>8s} "
          f"{'profile bytes':>13s} {'time s':>7s}")
    for name, acc, sp, nbytes, prof, secs in rows:
        print(f"{name:36s} {acc:9.4f} {100 * (d_acc - acc):9.2f} {sp:9.4f} {nbytes:11d} {nbytes / d_bytes:8.3f} "
              f"{prof:13d} {secs:7.1f}")
    print("file bytes: size of model.safetensors written by slimkit.save (sparse tensors as CSR);"
          " profile bytes: measure.profile(...).bytes_on_disk (tensor bytes without the file header)")


if __name__ == "__main__":
    main()
