"""MiniLM-L6 int8 on ONNX Runtime through slimkit vs fp32 PyTorch, torch.ao dynamic int8 and
ORT's own ``quantize_dynamic`` (default and per-channel), in one run.

Usage::

    SLIMKIT_DATA=/work/shared/data HF_HUB_OFFLINE=1 python benchmarks/minilm_int8.py [--rounds 10] [--no-eval]

Prints Markdown tables: STS-B test Spearman (and embedding cosine to fp32) per variant,
and, at batch 1 and batch 32 (x 128 tokens), each variant's paired speed-up over fp32
PyTorch plus slimkit's paired speed-up over each baseline (``measure.compare``:
interleaved rounds, median ratio with the 25-75 % spread of per-round ratios).

slimkit's int8: export with eager attention, ORT transformer fusions (Attention,
SkipLayerNorm, BiasGelu, EmbedLayerNorm), dynamic int8 with per-channel weights for
every MatMul and the fused Attention except the ``exclude`` patterns below (kept float
by measured sensitivity; see ``--sensitivity``).

Measured (2 shared cores, see benchmarks/results/minilm_int8.md): the fused graph is *not*
faster than ORT's own ``quantize_dynamic`` on the plain export (0.87-0.97x at batch 32,
0.91-0.93x at batch 1): ORT's session-level optimizer already fuses the plain graph, so the
int8 kernels are the same. Per-channel weights are what buy accuracy (-0.13 Spearman points
vs -0.26 for the default, embedding cosine 0.993 vs 0.965).
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
from slimkit.export.onnx import OrtModel, check_onnx, export_onnx
from slimkit.export.ort_quant import (
    describe_ops,
    layer_sensitivity,
    optimize_transformer,
    quantizable_nodes,
    quantize_dynamic_onnx,
)
from slimkit.quantize.ptq import DynamicInt8

# The FFN output projections of the last layers: GELU outputs with large outliers (measured).
EXCLUDE: tuple[str, ...] = ()


def build_variants(work: Path, zm: zoo.ZooModel, exclude: tuple[str, ...]) -> dict[str, torch.nn.Module]:
    plain = export_onnx(zm.model, zm.example_inputs(1, 128), work / "plain.onnx")
    fused = work / "fused.onnx"
    stats = optimize_transformer(plain, fused, model_type="bert", num_heads=12, hidden_size=384)
    print(f"fusions: {stats}", file=sys.stderr)
    check_onnx(fused, zm.model, [zm.example_inputs(2, 64)], atol=1e-4)
    quantize_dynamic_onnx(plain, work / "ort_default.onnx")  # ORT defaults (per-tensor)
    quantize_dynamic_onnx(plain, work / "ort_pc.onnx", per_channel=True)
    q = quantize_dynamic_onnx(fused, work / "slimkit.onnx", per_channel=True, exclude=exclude)
    print(f"slimkit int8: {len(q)}/{len(quantizable_nodes(fused))} nodes int8; ops {describe_ops(work / 'slimkit.onnx')}",
          file=sys.stderr)
    ao = torch.ao.quantization.quantize_dynamic(copy.deepcopy(zm.model), {torch.nn.Linear}, dtype=torch.qint8)
    ours_torch = slimkit.apply(zm.model, DynamicInt8(per_channel=True), Targets(types=("Linear",)))
    return {
        "fp32 PyTorch": zm.model,
        "torch.ao quantize_dynamic": ao,
        "slimkit quantize.dynamic (torch)": ours_torch,
        "ORT fp32 (fused)": OrtModel(fused),
        "ORT quantize_dynamic default": OrtModel(work / "ort_default.onnx"),
        "ORT quantize_dynamic per-channel": OrtModel(work / "ort_pc.onnx"),
        "slimkit int8 (ORT)": OrtModel(work / "slimkit.onnx"),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--threads", type=int, help="torch and ORT intra-op threads (1 resists a shared, oversubscribed CPU)")
    ap.add_argument("--no-eval", action="store_true")
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
        ours = variants["slimkit int8 (ORT)"]
        for bs in (1, 32):
            x = zm.example_inputs(bs, 128)
            rounds = args.rounds if bs == 1 else max(4, args.rounds // 2)
            iters = 5 if bs == 1 else 2
            print(f"\n**batch {bs} x 128 tokens** ({rounds} rounds x {iters} calls, {torch.get_num_threads()} threads)\n")
            print("| A (baseline) | B | median A ms | median B ms | speed-up A/B | p25-p75 |")
            print("|---|---|---|---|---|---|")
            pairs = [("fp32 PyTorch", n) for n in variants if n != "fp32 PyTorch"]
            pairs += [(n, "slimkit int8 (ORT)") for n in ("torch.ao quantize_dynamic", "ORT quantize_dynamic default",
                                                           "ORT quantize_dynamic per-channel")]
            for a, b in pairs:
                c = measure.compare(variants[a], variants[b] if b != "slimkit int8 (ORT)" else ours, x,
                                    rounds=rounds, iters_per_round=iters, warmup=2)
                print(f"| {a} | {b} | {c.median_a_ms:.1f} | {c.median_b_ms:.1f} | {c.speedup:.2f}x | "
                      f"{c.speedup_p25:.2f}-{c.speedup_p75:.2f} |", flush=True)


if __name__ == "__main__":
    main()
