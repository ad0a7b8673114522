"""Low-bit digits CNN: QAT at 4/3/2 bits, ternary (TWN, TTQ), binary (BWN, XNOR, BinaryConnect), Deep Compression.

Every row is trained from the same pretrained ``zoo:digits-cnn`` on its train split and
saved with ``slimkit.save``; accuracy is measured on the *restored* model (450 test
images), and "file" is the real ``model.safetensors`` size (packed codes as uint8
buffers, header included). "account" is ``measure.profile(...).bytes_on_disk`` (tensor
bytes only), so ``file - account`` is the safetensors header. CPU, one thread, ~2 min::

    .venv/bin/python benchmarks/digits_lowbit.py [--steps 300] [--threads 1]
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
from slimkit.core import Context, MethodConfig, Recipe, Targets
from slimkit.quantize.lowbit_methods import BinaryQuant, TernaryQuant
from slimkit.quantize.qat import QatQuant
from slimkit.zoo.digits import DigitsCNN, digits_split, pretrained_digits_cnn


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model.eval()(x).argmax(1) == y).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    x_tr, y_tr, x_te, y_te = digits_split()
    dense = pretrained_digits_cnn()
    perm = torch.randperm(len(y_tr), generator=torch.Generator().manual_seed(0))
    batches = [(x_tr[perm[i:i + 64]], y_tr[perm[i:i + 64]]) for i in range(0, len(perm), 64)]
    ctx = Context(train_data=batches, loss_fn=lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]),
                  progress=False)
    inner = Targets(types=("Conv2d", "Linear"), exclude=("features.0", "classifier.2"))
    s = args.steps
    runs: list[tuple[str, MethodConfig | str, Targets | None]] = [
        ("QAT 4-bit w / 8-bit PACT act (LSQ)", QatQuant(bits=4, act_bits=8, steps=s), None),
        ("QAT 3-bit w / 8-bit PACT act (LSQ)", QatQuant(bits=3, act_bits=8, steps=s), None),
        ("QAT 2-bit w / 8-bit PACT act (LSQ)", QatQuant(bits=2, act_bits=8, steps=s), None),
        ("QAT 4-bit w / 4-bit PACT act (LSQ)", QatQuant(bits=4, act_bits=4, steps=s), None),
        ("ternary TWN", TernaryQuant(mode="twn", steps=s), None),
        ("ternary TTQ", TernaryQuant(mode="ttq", steps=s), None),
        ("binary BWN", BinaryQuant(mode="bwn", steps=s), None),
        ("binary BinaryConnect", BinaryQuant(mode="binaryconnect", steps=s), None),
        ("binary XNOR (1-bit weights and inputs, first/last layer float)", BinaryQuant(mode="xnor", steps=s), inner),
        ("Deep Compression (recipe digits-deep-compression)", "digits-deep-compression", None),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        slimkit.save(dense, Path(tmp) / "dense")
        d_file = (Path(tmp) / "dense" / "model.safetensors").stat().st_size
        d_acc = accuracy(dense, x_te, y_te)
        rows = [("fp32 (dense)", d_acc, 0.0, d_file, measure.profile(dense, x_te[:1]).bytes_on_disk, 1.0, 0.0)]
        for i, (name, cfg, targets) in enumerate(runs):
            t0 = time.perf_counter()
            if isinstance(cfg, str):
                out = Recipe.load(cfg).run(dense, ctx)
            else:
                out = slimkit.apply(dense, cfg, targets, ctx)
            secs = time.perf_counter() - t0
            folder = Path(tmp) / f"run{i}"
            slimkit.save(out, folder)
            restored = slimkit.restore(folder, model=DigitsCNN)
            acc = accuracy(restored, x_te, y_te)
            file = (folder / "model.safetensors").stat().st_size
            account = measure.profile(restored, x_te[:1]).bytes_on_disk
            rows.append((name, acc, acc - d_acc, file, account, d_file / file, secs))
    print(f"digits CNN, {len(y_te)} test images, {args.steps} training steps per method, "
          f"{args.threads} thread(s); accuracy of the restored model\n")
    print("| method | test acc | vs fp32 (pts) | file bytes | account bytes | fp32 file / file | train s |")
    print("|---|---|---|---|---|---|---|")
    for name, acc, delta, file, account, ratio, secs in rows:
        print(f"| {name} | {acc:.4f} | {100 * delta:+.2f} | {file} | {account} | {ratio:.1f}x | {secs:.1f} |")


if __name__ == "__main__":
    main()
