"""MiniLM-L6 weight-only quantisation: STS-B Spearman, bytes on disk and latency vs fp32.

Rows: fp32; int8 RTN (per channel, int8 kernel); int4 RTN with groups of 32 and 64;
int4 GPTQ and AWQ (groups of 64, calibrated on 256 STS-B training sentences from
``get_task("stsb").calibration_batches``). All ``Linear`` layers are quantised (the
word-embedding table stays fp32, and it is about half of the file). "bytes" is the size
of ``model.safetensors`` written by ``slimkit.save``. Latency is ``measure.compare`` of
fp32 (A) against the quantised model (B) at batch 1 x 128 tokens, interleaved in one run;
``speedup`` = median A / median B (>1: quantised is faster), with the p25-p75 spread of
the per-round ratios.

Spearman is computed with every packed layer on its dequantise path (``use_kernel =
False``; the same weights, outputs equal to ~1e-5): on this CPU build the int8 / int4
weight-only kernels are tuned for few rows (LLM decoding) and were ~20x slower than the
fp32 GEMM on the evaluation's 64-sentence batches, which made a kernel-path evaluation
take minutes. Latency is measured on the default (kernel) path. Run (a few minutes on
2 shared cores)::

    SLIMKIT_DATA=/work/shared/data HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/minilm_weight_only.py
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

import slimkit
from slimkit import measure, zoo
from slimkit.core import Context, Targets
from slimkit.quantize import WeightOnlyQuant
from slimkit.quantize.wo_modules import PackedWeight
from slimkit.zoo import get_task

ROWS: list[tuple[str, WeightOnlyQuant | None]] = [
    ("fp32", None),
    ("int8 RTN (per channel)", WeightOnlyQuant(bits=8)),
    ("int4 RTN g32", WeightOnlyQuant(bits=4, group_size=32)),
    ("int4 RTN g64", WeightOnlyQuant(bits=4, group_size=64)),
    ("int4 GPTQ g64", WeightOnlyQuant(bits=4, group_size=64, algorithm="gptq")),
    ("int4 AWQ g64", WeightOnlyQuant(bits=4, group_size=64, algorithm="awq")),
]


def saved_bytes(model: torch.nn.Module) -> int:
    with tempfile.TemporaryDirectory() as d:
        slimkit.save(model, d)
        return (Path(d) / "model.safetensors").stat().st_size


def use_kernels(model: torch.nn.Module, on: bool) -> None:
    for m in model.modules():
        if isinstance(m, PackedWeight):
            m.use_kernel = on


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--only", nargs="*", help="row labels to run (fp32 always runs)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    zm = zoo.load("zoo:minilm-l6")
    task = get_task("stsb")
    calib = task.calibration_batches(zm, n_batches=8, batch_size=32)  # 256 sentences
    ctx = Context(calib_data=calib, progress=False)
    targets = Targets(types=("Linear",))
    example = zm.example_inputs(batch_size=1, seq_len=128)
    fp32 = zm.model.eval()
    header = ("| model | STS-B test Spearman | bytes on disk | vs fp32 | Linear kernels | speedup vs fp32 (p25-p75) "
              "| fp32 / quant ms | build s |")
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    base_bytes = saved_bytes(fp32)
    for label, cfg in ROWS:
        if cfg is not None and args.only and label not in args.only:
            continue
        t0 = time.perf_counter()
        model = fp32 if cfg is None else slimkit.apply(fp32, cfg, targets, ctx).eval()
        build = time.perf_counter() - t0
        use_kernels(model, False)
        with torch.no_grad():
            rho = task.evaluate(model, zm)["spearman"]
        use_kernels(model, True)
        nbytes = saved_bytes(model)
        if cfg is None:
            lines.append(f"| {label} | {rho:.4f} | {nbytes:,} | 1.00x | - | - | - | - |")
        else:
            kernels = slimkit.records(model)[-1].summary["kernels"]
            with torch.no_grad():
                cmp = measure.compare(fp32, model, example, rounds=args.rounds, iters_per_round=5,
                                      threads=args.threads)
            lines.append(f"| {label} | {rho:.4f} | {nbytes:,} | {base_bytes / nbytes:.2f}x smaller | {kernels} | "
                         f"{cmp.speedup:.2f} ({cmp.speedup_p25:.2f}-{cmp.speedup_p75:.2f}) | "
                         f"{cmp.median_a_ms:.1f} / {cmp.median_b_ms:.1f} | {build:.0f} |")
        print(lines[-1], flush=True)
    print()
    print(f"threads={args.threads}, batch 1 x 128 tokens, {args.rounds} rounds x 5 iterations, torch {torch.__version__}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
