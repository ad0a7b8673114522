"""MiniLM-L6 int8 through slimkit (ONNX Runtime and PyTorch PT2E backends) vs fp32 PyTorch,
torch.ao dynamic int8 and ORT's own ``quantize_dynamic`` (default and per-channel), in one run.

Usage::

    SLIMKIT_DATA=/work/shared/data HF_HUB_OFFLINE=1 python benchmarks/minilm_int8.py [--rounds 10] [--no-eval]

Prints Markdown tables: STS-B test Spearman (and embedding cosine to fp32) per variant,
and, at batch 1 and batch 32 (x 128 tokens), each variant's paired speed-up over fp32
PyTorch plus slimkit's paired speed-up over each baseline (``measure.compare``:
interleaved rounds, median ratio with the 25-75 % spread of per-round ratios).

slimkit's int8, two backends:

- ``slimkit int8 (PT2E, PyTorch)``: :func:`slimkit.export.pt2e.quantize_pt2e`, static int8
  (per-channel int8 weights, uint8 activation ranges from 8 calibration batches of STS-B
  *train* sentences), compiled by Inductor with freezing: oneDNN int8 kernels with the
  bias/GELU/residual/LayerNorm work fused around them;
- ``slimkit int8 (ORT)``: ``export.onnx`` with ``int8: dynamic`` = per-channel dynamic int8
  on the plain export; ORT's session fuses it (the offline transformer fusions measured
  slower for int8, see ``slimkit.export.ort_quant``). It is the same graph as ORT's
  per-channel row, so it can only tie that row.
"""
from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import torch

import slimkit
from slimkit import measure, zoo
from slimkit.core import Targets
from slimkit.export.onnx import OrtModel, check_onnx, export_onnx, write_onnx
from slimkit.export.ort_quant import (
    layer_sensitivity,
    optimize_transformer,
    quantize_dynamic_onnx,
)
from slimkit.export.pt2e import Pt2eModel, quantize_pt2e
from slimkit.quantize.ptq import DynamicQuant

# The FFN output projections of the last layers: GELU outputs with large outliers (measured).
EXCLUDE: tuple[str, ...] = ()


OURS = ("slimkit int8 (PT2E, PyTorch)", "slimkit int8 (ORT)")
BASELINES = ("torch.ao quantize_dynamic", "ORT quantize_dynamic default", "ORT quantize_dynamic per-channel")


def build_variants(work: Path, zm: zoo.ZooModel, exclude: tuple[str, ...]) -> dict[str, torch.nn.Module]:
    plain = export_onnx(zm.model, zm.example_inputs(1, 128), work / "plain.onnx")
    fused = work / "fused.onnx"
    stats = optimize_transformer(plain, fused, model_type="bert", num_heads=12, hidden_size=384)
    print(f"fusions: {stats}", file=sys.stderr)
    check_onnx(fused, zm.model, [zm.example_inputs(2, 64)], atol=1e-4)
    quantize_dynamic_onnx(plain, work / "ort_default.onnx")  # ORT defaults (per-tensor)
    quantize_dynamic_onnx(plain, work / "ort_pc.onnx", per_channel=True)
    info = write_onnx(zm.model, zm.example_inputs(1, 128), work / "slimkit.onnx", int8="dynamic", exclude=exclude)
    print(f"slimkit int8 (ORT): {info['int8_nodes']} nodes int8; ops {info['ops']}", file=sys.stderr)
    calib = zoo.get_task("stsb").calibration_batches(zm, 8, 32)
    t0 = time.perf_counter()
    pt2e = Pt2eModel(quantize_pt2e(zm.model, zm.example_inputs(2, 16), calib, static=True))
    print(f"slimkit int8 (PT2E): quantized in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    ao = torch.ao.quantization.quantize_dynamic(copy.deepcopy(zm.model), {torch.nn.Linear}, dtype=torch.qint8)
    ours_torch = slimkit.apply(zm.model, DynamicQuant(per_channel=True), Targets(types=("Linear",)))
    return {
        "fp32 PyTorch": zm.model,
        "torch.ao quantize_dynamic": ao,
        "slimkit quantize.dynamic (torch)": ours_torch,
        "ORT fp32 (fused)": OrtModel(fused),
        "ORT quantize_dynamic default": OrtModel(work / "ort_default.onnx"),
        "ORT quantize_dynamic per-channel": OrtModel(work / "ort_pc.onnx"),
        "slimkit int8 (ORT)": OrtModel(work / "slimkit.onnx"),
        "slimkit int8 (PT2E, PyTorch)": pt2e,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--threads", type=int, help="torch and ORT intra-op threads (1 resists a shared, oversubscribed CPU)")
    ap.add_argument("--no-eval", action="store_true")
    ap.add_argument("--batch-sizes", type=int, nargs="*", default=[1, 32])
    ap.add_argument("--settle", type=int, default=2, help="untimed calls opening each timed block")
    ap.add_argument("--pause", type=float, default=0.05, help="seconds of idle before each timed block")
    ap.add_argument("--sensitivity", action="store_true", help="print per-node int8 sensitivity and exit")
    ap.add_argument("--exclude", nargs="*", default=list(EXCLUDE))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)  # OrtModel sessions take torch's count when created
    zm = zoo.load("zoo:minilm-l6")
    task = zoo.get_task("stsb")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.sensitivity:
            fused = work / "fused.onnx"
            optimize_transformer(export_onnx(zm.model, zm.example_inputs(1, 128), work / "p.onnx"), fused)
            batches = task.calibration_batches(zm, 4, 32)
            def run(path: str, b: dict) -> torch.Tensor:
                return OrtModel(path)(**b)

            sens = layer_sensitivity(fused, batches, run, per_channel=True)
            print("| node | 1 - cosine |\n|---|---|")
            for n, v in sorted(sens.items(), key=lambda kv: -kv[1]):
                print(f"| {n} | {v:.2e} |")
            return
        variants = build_variants(work, zm, tuple(args.exclude))
        if not args.no_eval:
            print("| variant | STS-B Spearman | delta vs fp32 (points) | embedding cosine to fp32 | eval s |")
            print("|---|---|---|---|---|")
            base = None
            for name, m in variants.items():
                t0 = time.perf_counter()
                r = task.evaluate(m, zm, reference=zm.model)
                base = r["spearman"] if base is None else base
                print(f"| {name} | {r['spearman']:.4f} | {100 * (r['spearman'] - base):+.2f} | "
                      f"{r['embedding_cosine']:.4f} | {time.perf_counter() - t0:.0f} |", flush=True)
            print()
        for bs in args.batch_sizes:
            x = zm.example_inputs(bs, 128)
            rounds = args.rounds if bs == 1 else max(4, args.rounds // 2)
            iters = 5 if bs == 1 else 2
            print(f"\n**batch {bs} x 128 tokens** ({rounds} rounds x {iters} calls, {torch.get_num_threads()} threads)\n")
            print("| A (baseline) | B | median A ms | median B ms | speed-up A/B | p25-p75 |")
            print("|---|---|---|---|---|---|")
            pairs = [("fp32 PyTorch", n) for n in variants if n != "fp32 PyTorch"]
            pairs += [(a, b) for b in OURS for a in BASELINES]
            for a, b in pairs:
                c = measure.compare(variants[a], variants[b], x, rounds=rounds, iters_per_round=iters, warmup=2,
                                    settle=args.settle, pause_s=args.pause)
                print(f"| {a} | {b} | {c.median_a_ms:.1f} | {c.median_b_ms:.1f} | {c.speedup:.2f}x | "
                      f"{c.speedup_p25:.2f}-{c.speedup_p75:.2f} |", flush=True)


if __name__ == "__main__":
    main()
