"""Data-free non-uniform quantisers on the digits CNN: balanced, power-of-two, residual binary, k-means.

Every row quantises every Conv2d / Linear of the same pretrained ``zoo:digits-cnn`` once,
from its weights alone (no data, no fine-tuning: ``quantize.kmeans`` with ``steps: 0`` as
the reference), saves it with ``slimkit.save`` and measures accuracy on the *restored*
model (450 test images). "file" is the real ``model.safetensors`` size; "weight err" the
record's ``weight_rel_error`` (``||W - Q(W)||^2 / ||W||^2``; k-means does not report it).
CPU, one thread, a few seconds::

    .venv/bin/python benchmarks/digits_nonuniform.py
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from torch import nn

import slimkit
from slimkit.core import Context, MethodConfig
from slimkit.quantize.kmeans_method import KMeansQuant
from slimkit.quantize.nonuniform_methods import BalancedQuant, Pow2Quant, ResidualBinaryQuant
from slimkit.zoo.digits import DigitsCNN, digits_split, pretrained_digits_cnn


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model.eval()(x).argmax(1) == y).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    _, _, x_te, y_te = digits_split()
    dense = pretrained_digits_cnn()
    runs: list[tuple[str, MethodConfig]] = []
    for bits in (4, 3, 2):
        runs += [(f"quantize.kmeans {bits}-bit (steps 0)", KMeansQuant(bits=bits, steps=0, huffman=False)),
                 (f"quantize.balanced {bits}-bit", BalancedQuant(bits=bits))]
    runs += [(f"quantize.pow2 {bits}-bit", Pow2Quant(bits=bits)) for bits in (5, 4, 3)]
    runs += [(f"quantize.residual_binary {bits}-bit ({mode})", ResidualBinaryQuant(bits=bits, mode=mode))
             for bits in (3, 2, 1) for mode in ("alternating", "greedy") if not (bits == 1 and mode == "greedy")]
    ctx = Context(progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        slimkit.save(dense, Path(tmp) / "dense")
        d_file = (Path(tmp) / "dense" / "model.safetensors").stat().st_size
        d_acc = accuracy(dense, x_te, y_te)
        rows = [("fp32 (dense)", d_acc, d_file, None)]
        for i, (name, cfg) in enumerate(runs):
            out = slimkit.apply(dense, cfg, None, ctx)
            folder = Path(tmp) / f"run{i}"
            slimkit.save(out, folder)
            restored = slimkit.restore(folder, model=DigitsCNN)
            err = slimkit.records(out)[-1].summary.get("weight_rel_error")
            rows.append((name, accuracy(restored, x_te, y_te), (folder / "model.safetensors").stat().st_size, err))
    print(f"digits CNN, {len(y_te)} test images, data-free (no fine-tuning), {args.threads} thread(s); "
          "accuracy of the restored model\n")
    print("| method | test acc | vs fp32 (pts) | file bytes | fp32 file / file | weight err |")
    print("|---|---|---|---|---|---|")
    for name, acc, file, err in rows:
        e = "" if err is None else f"{err:.4f}"
        print(f"| {name} | {acc:.4f} | {100 * (acc - d_acc):+.2f} | {file} | {d_file / file:.1f}x | {e} |")


if __name__ == "__main__":
    main()
