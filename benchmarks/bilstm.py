"""zoo:sst2-bilstm with the ``sst2-bilstm-fast`` preset against the fp32 model (must-show 5).

Runs the preset (hidden-unit pruning, KD recovery, dynamic int8 LSTM + head), saves the
artifact and restores it (what is timed is what ``slimkit.restore`` serves), then reports:

- SST-2 test accuracy (872 sentences) of fp32 and of the restored artifact;
- the same for two int8-LSTM variants (quantize.dynamic on the LSTM of the zoo model, and
  of the pruned + distilled model), which show why the preset leaves its LSTM fp32;
- paired, interleaved batch-1 latency (``slimkit.measure.compare``: per-round medians,
  median ratio with its 25-75 % spread) on real SST-2 test sentences at the 25th, 50th
  and 90th percentile of token length, plus the 128-token example input;
- the CPU model and ISA flags, thread count, torch version.

Usage::

    SLIMKIT_DATA=/work/shared/data HF_HUB_OFFLINE=1 python benchmarks/bilstm.py [--rounds 15] [--threads 1 2]

Writes ``benchmarks/results/bilstm.json``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import slimkit
from slimkit import measure, zoo
from slimkit.app.pipeline import context_for
from slimkit.core import Recipe, Targets
from slimkit.core.cpu import int8_isa
from slimkit.quantize.ptq import DynamicQuant
from slimkit.zoo.data import read_sst2

T0 = time.perf_counter()
RESULTS = Path(__file__).parent / "results" / "bilstm.json"


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def cpu_info() -> dict[str, Any]:
    """CPU model name and the SIMD flags that decide which int8 kernels run."""
    model, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        model = platform.processor()
    isa = [f for f in ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "avx512_bf16",
                       "amx_int8") if f in flags]
    return {"model": model, "isa": isa, "torch": torch.__version__,
            "quantized_engine": torch.backends.quantized.engine}


def length_batches(zm: zoo.ZooModel) -> dict[str, dict[str, torch.Tensor]]:
    """Batch-1 inputs: SST-2 test sentences at the 25/50/90th percentile of token length, and 128 tokens."""
    assert zm.tokenizer is not None
    texts, _ = read_sst2("test")
    lengths = zm.tokenizer.lengths(texts)
    order = sorted(range(len(texts)), key=lambda i: (lengths[i], i))
    out = {}
    for q in (25, 50, 90):
        i = order[min(len(order) - 1, len(order) * q // 100)]
        out[f"test sentence p{q} ({lengths[i]} tokens)"] = zm.tokenizer.encode([texts[i]])
    out["example input (128 tokens)"] = zm.example_inputs(1, 128)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--recipe", default="sst2-bilstm-fast")
    ap.add_argument("--out", default=str(RESULTS), help="where to write the JSON")
    args = ap.parse_args()

    zm = zoo.load("zoo:sst2-bilstm")
    task = zoo.get_task("sst2")
    recipe = Recipe.load(args.recipe)
    log(f"running {recipe.name}")
    t = time.perf_counter()
    ctx = context_for(zm, task, progress=False)
    stages: dict[int, torch.nn.Module] = {}
    out = recipe.run(zm.model, ctx, on_step=lambda i, s, m: stages.__setitem__(i, m))
    recipe_s = time.perf_counter() - t
    log(f"recipe done in {recipe_s:.0f}s; saving and restoring")
    with tempfile.TemporaryDirectory() as d:
        slimkit.save(zm.model, Path(d) / "dense", spec=zm.spec)
        slimkit.save(out, Path(d) / "fast", spec=zm.spec)
        sizes = {k: (Path(d) / k / "model.safetensors").stat().st_size for k in ("dense", "fast")}
        served = slimkit.restore(Path(d) / "fast")
    # why the preset keeps the LSTM fp32: the int8 LSTM (Int8RNN) on the dense and on the pruned model
    int8 = Targets(include=("lstm", "head"))
    trained = next(m for i, m in sorted(stages.items()) if recipe.steps[i].config.kind == "distill.logits")
    variants = {
        args.recipe + " (restored artifact)": served,
        "zoo model + quantize.dynamic (Int8RNN LSTM + int8 head)": slimkit.apply(zm.model, DynamicQuant(), int8),
        "pruned + KD + quantize.dynamic on the LSTM too": slimkit.apply(trained, DynamicQuant(), int8),
    }
    fp32_acc = task.evaluate(zm.model, zm)["accuracy"]
    accuracy: dict[str, Any] = {"fp32": fp32_acc, "n": 872, "split": "sst2 test"}
    for name, model in variants.items():
        res = task.evaluate(model, zm, reference=zm.model)
        accuracy[name] = {"accuracy": res["accuracy"], "agreement": res["agreement"],
                          "delta_points": 100 * (res["accuracy"] - fp32_acc)}
        log(f"accuracy fp32 {fp32_acc:.4f}, {name} {res['accuracy']:.4f} (agreement {res['agreement']:.4f})")

    latency: dict[str, Any] = {}
    with torch.no_grad():
        for threads in args.threads:
            for bname, batch in length_batches(zm).items():
                for name, model in variants.items():
                    r = measure.compare(zm.model, model, batch, rounds=args.rounds, iters_per_round=10, warmup=5,
                                        threads=threads)
                    latency.setdefault(f"{threads} threads", {}).setdefault(name, {})[bname] = {
                        "speedup": r.speedup, "speedup_p25": r.speedup_p25, "speedup_p75": r.speedup_p75,
                        "fp32_ms": r.median_a_ms, "candidate_ms": r.median_b_ms}
                    log(f"{threads} threads | {bname} | {name}: fp32 {r.median_a_ms:.3f} ms, {r.median_b_ms:.3f} ms,"
                        f" speedup {r.speedup:.2f}x [{r.speedup_p25:.2f}, {r.speedup_p75:.2f}]")
    lstm = served.get_submodule("lstm")
    doc = {
        "model": zm.spec, "recipe": recipe.name, "recipe_steps": [s.to_dict() for s in recipe.steps],
        "recipe_seconds": round(recipe_s, 1),
        "hidden_units": {"fp32": zm.model.lstm.hidden_size, "fast": int(lstm.hidden_size)},
        "served_lstm": type(lstm).__name__,
        "accuracy": accuracy,
        "file_bytes": sizes,
        "batch1_latency": latency,
        "timing": {"method": "slimkit.measure.compare (paired, interleaved rounds, per-round medians)",
                   "rounds": args.rounds, "iters_per_round": 10, "threads": args.threads,
                   "runtime": "PyTorch eager (what slimkit.restore serves)"},
        "cpu": cpu_info(),
        "int8_isa": int8_isa().to_dict(),
        "date": datetime.date.today().isoformat(),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
