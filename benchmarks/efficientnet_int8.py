"""EfficientNet-Lite0 static int8 (ONNX Runtime, QDQ, per-channel weights) vs fp32, in one run.

Usage::

    SLIMKIT_DATA=/work/shared/data HF_HUB_OFFLINE=1 python benchmarks/efficientnet_int8.py [--rounds 10]

Calibration: the first 500 ImageNet-sample images (the task's calibration split, 10 x 50);
evaluation: top-1 accuracy and top-1 agreement with fp32 PyTorch on the other 500.
Latency at batch 1: each row's paired speed-up over fp32 PyTorch, and int8 over ORT fp32
(``measure.compare``: interleaved rounds, median ratio, 25-75 % spread of per-round ratios).
With ``--torch-int8`` also a row for slimkit's torch backend (``quantize.static``: Conv/Linear on torch's x86
int8 kernels, float between layers) for accuracy.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

import slimkit
from slimkit import measure, zoo
from slimkit.core import Context, Targets
from slimkit.export.onnx import OrtModel, write_onnx
from slimkit.quantize.ptq import StaticQuant


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--threads", type=int, help="torch and ORT intra-op threads (1 resists a shared, oversubscribed CPU)")
    ap.add_argument("--calibration", default="minmax", choices=["minmax", "entropy", "percentile"])
    ap.add_argument("--no-eval", action="store_true")
    ap.add_argument("--torch-int8", action="store_true",
                    help="also the torch-backend row (slow: torch fp32 calibration of this model is slow here)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)  # OrtModel sessions take torch's count when created
    zm = zoo.load("zoo:efficientnet-lite0")
    task = zoo.get_task("imagenet-sample")
    calib = task.calibration_batches(zm, 10, 50)  # all 500 calibration images
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        f32 = write_onnx(zm.model, zm.example_inputs(1), Path(tmp) / "fp32.onnx")
        i8 = write_onnx(zm.model, zm.example_inputs(1), Path(tmp) / "int8.onnx", int8="static", calib=calib,
                        calibration=args.calibration, per_channel=True)
        print(f"export + calibration {time.perf_counter() - t0:.0f}s; int8 ops {i8['ops']}", file=sys.stderr)
        variants: dict[str, torch.nn.Module] = {
            "fp32 PyTorch": zm.model,
            "ORT fp32": OrtModel(Path(tmp) / "fp32.onnx"),
            "ORT int8 static QDQ per-channel (slimkit)": OrtModel(Path(tmp) / "int8.onnx"),
        }
        if args.torch_int8:
            variants["torch int8 static (slimkit quantize.static)"] = slimkit.apply(
                zm.model, StaticQuant(per_channel=True, calib_batches=10), Targets(types=("Conv2d", "Linear")),
                Context(calib_data=calib))
        print("| variant | file MB | top-1 (last 500) | top-1 agreement with fp32 |\n|---|---|---|---|", flush=True)
        sizes = {"ORT fp32": f32["bytes"], "ORT int8 static QDQ per-channel (slimkit)": i8["bytes"]}
        for name, m in ([] if args.no_eval else variants.items()):
            r = task.evaluate(m, zm, reference=zm.model)
            mb = f"{sizes[name] / 1e6:.1f}" if name in sizes else "-"
            print(f"| {name} | {mb} | {r['accuracy']:.3f} | {r['agreement']:.3f} |", flush=True)
        x = zm.example_inputs(1)
        print(f"\n**batch 1** ({args.rounds} rounds x 5 calls, {torch.get_num_threads()} threads)\n")
        print("| A (baseline) | B | median A ms | median B ms | speed-up A/B | p25-p75 |\n|---|---|---|---|---|---|")
        pairs = [("fp32 PyTorch", n) for n in variants if n != "fp32 PyTorch"]
        pairs.append(("ORT fp32", "ORT int8 static QDQ per-channel (slimkit)"))
        for a, b in pairs:
            c = measure.compare(variants[a], variants[b], x, rounds=args.rounds)
            print(f"| {a} | {b} | {c.median_a_ms:.1f} | {c.median_b_ms:.1f} | {c.speedup:.2f}x | "
                  f"{c.speedup_p25:.2f}-{c.speedup_p75:.2f} |", flush=True)


if __name__ == "__main__":
    main()
