"""Must-show 2: every int8 path of slimkit keeps zoo:minilm-l6 within 0.5 STS-B point of fp32,
with the settings slimkit picks for this CPU (slimkit.core.cpu: 8-bit weight codes with a VNNI
int8 dot product; 7-bit codes / ORT ``session.x64quantprecision`` without).

Usage::

    SLIMKIT_DATA=/work/shared/data HF_HUB_OFFLINE=1 python benchmarks/int8_paths.py [--out FILE]
    # the no-VNNI leg on a VNNI machine (fbgemm and oneDNN forced; ORT's MLAS cannot be):
    FBGEMM_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 \\
        python benchmarks/int8_paths.py --out benchmarks/results/int8_paths_avx2.json

Measures STS-B *test* Spearman (1,500 pairs, ``zoo`` task ``stsb``, the figure ``slimkit
eval`` prints) of fp32 PyTorch and of dynamic int8 through

- ``torch dynamic``: ``quantize.dynamic`` (Int8Linear on fbgemm);
- ``ORT dynamic``: ``export.onnx`` with ``int8: dynamic`` (per-channel, MLAS);
- ``PT2E dynamic`` / ``PT2E static``: ``export.pt2e`` (oneDNN through Inductor; static
  calibrated on 8 batches of STS-B *train* sentences);

plus the relative error of a single Int8Linear against float, layer by layer on real MiniLM
activations (median, worst, and ``layer.0.attention.output.dense``, the layer that took most of
the loss on AVX2) and on a Gaussian input, and against exact integer math. Writes a JSON with the CPU model, ISA decision and runtime versions.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import slimkit
from slimkit import zoo
from slimkit.core import Targets
from slimkit.core.cpu import FORCING_ENVS, int8_isa
from slimkit.quantize.int8_modules import Int8Linear
from slimkit.quantize.ptq import DynamicQuant

PATHS = ("torch_dynamic", "ort_dynamic", "pt2e_dynamic", "pt2e_static")
LAYER = "layer.0.attention.output.dense"


def _int8_errors(lin: torch.nn.Linear, x: torch.Tensor) -> tuple[float, float, int]:
    """Dynamic Int8Linear on ``x`` ``[N, I]``: (rel. error vs float, rel. error vs exact integer math, qmax)."""
    q = Int8Linear.from_float(lin, "dynamic")
    with torch.no_grad():
        y, yq = lin(x), q(x)
        scale, zp = torch._choose_qparams_per_tensor(x, False)
        codes = torch.quantize_per_tensor(x, scale, zp, torch.quint8).int_repr().double() - zp
        exact = (codes @ q.weight_int8.double().T) * scale * q.weight_scale.double() + q.bias.double()
    return (float((yq - y).norm() / y.norm()), float((yq.double() - exact).norm() / exact.norm()),
            int(q.weight_int8.abs().max()))


def single_layer(zm: zoo.ZooModel) -> dict[str, object]:
    """Int8Linear (dynamic) against float, one layer at a time, on real MiniLM activations (one
    STS-B batch of 32 sentences): every Linear's error, the median, the worst and ``LAYER``;
    and on a Gaussian input to a freshly initialised Linear(384, 1536)."""
    lins = {n: m for n, m in zm.model.named_modules() if isinstance(m, torch.nn.Linear)}
    seen: dict[str, torch.Tensor] = {}
    def keep(name: str) -> Any:
        def hook(_m: torch.nn.Module, args: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
            seen.setdefault(name, args[0].detach())  # returns None: the output is left alone
        return hook

    hooks = [m.register_forward_hook(keep(n)) for n, m in lins.items()]
    batch = zoo.get_task("stsb").calibration_batches(zm, 1, 32)[0]
    with torch.no_grad():
        zm.model(**batch)
    for h in hooks:
        h.remove()
    errs = {n: _int8_errors(m, seen[n].reshape(-1, m.in_features)) for n, m in lins.items() if n in seen}
    vs_float = sorted(e[0] for e in errs.values())
    worst = max(errs, key=lambda n: errs[n][0])
    named = next(n for n in errs if n.endswith(LAYER))
    torch.manual_seed(0)
    rnd = _int8_errors(torch.nn.Linear(384, 1536), torch.randn(256, 384))
    return {"layers": len(errs), "weight_qmax": errs[named][2],
            "median_rel_err_vs_float": vs_float[len(vs_float) // 2], "worst_layer": worst,
            "worst_rel_err_vs_float": errs[worst][0], "layer": named, "layer_rel_err_vs_float": errs[named][0],
            "max_rel_err_vs_exact_int": max(e[1] for e in errs.values()),
            "gaussian_linear_384x1536_rel_err_vs_float": rnd[0], "per_layer_rel_err_vs_float":
                {n: round(e[0], 5) for n, e in errs.items()}}


def build(path: str, zm: zoo.ZooModel, work: Path) -> torch.nn.Module:
    from slimkit.export.onnx import OrtModel, write_onnx
    from slimkit.export.pt2e import Pt2eModel, write_pt2e

    example = zm.example_inputs(2, 16)
    if path == "torch_dynamic":
        return slimkit.apply(zm.model, DynamicQuant(), Targets(types=("Linear",)))
    if path == "ort_dynamic":
        write_onnx(zm.model, zm.example_inputs(1, 128), work / "q.onnx", int8="dynamic")
        return OrtModel(work / "q.onnx")
    static = path == "pt2e_static"
    calib = zoo.get_task("stsb").calibration_batches(zm, 8, 32) if static else None
    write_pt2e(zm.model, example, work / f"{path}.pt2", static=static, calib=calib, check=False)
    return Pt2eModel(work / f"{path}.pt2")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--paths", nargs="*", default=list(PATHS), choices=PATHS)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "int8_paths.json")
    ap.add_argument("--limit", type=int, default=None, help="STS-B test pairs (default: all 1,500)")
    args = ap.parse_args()
    torch.manual_seed(0)
    isa = int8_isa()
    print(isa.line(), file=sys.stderr)
    zm = zoo.load("zoo:minilm-l6")
    task = zoo.get_task("stsb")
    doc: dict = {"model": "zoo:minilm-l6", "task": "stsb test", "cpu": isa.cpu_model, "machine": platform.machine(),
                 "int8_isa": isa.to_dict(), "date": datetime.date.today().isoformat(), "threads": torch.get_num_threads(),
                 "forcing": {k: os.environ[k] for k in (*FORCING_ENVS, "ATEN_CPU_CAPABILITY", "SLIMKIT_INT8_ISA")
                             if os.environ.get(k)}}
    doc["single_int8_linear"] = single_layer(zm)
    print(json.dumps({k: v for k, v in doc["single_int8_linear"].items() if k != "per_layer_rel_err_vs_float"}),
          file=sys.stderr)
    fp32 = task.evaluate(zm.model, zm, limit=args.limit)["spearman_x100"]
    doc["fp32_spearman_x100"] = fp32
    print(f"fp32: {fp32:.2f}", file=sys.stderr)
    doc["paths"] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for path in args.paths:
            t0 = time.perf_counter()
            model = build(path, zm, Path(tmp))
            res = task.evaluate(model, zm, reference=zm.model, limit=args.limit)
            row = {"spearman_x100": res["spearman_x100"], "delta_points": res["spearman_x100"] - fp32,
                   "embedding_cosine": res.get("embedding_cosine"), "seconds": round(time.perf_counter() - t0, 1)}
            row["within_half_point"] = abs(row["delta_points"]) <= 0.5
            doc["paths"][path] = row
            print(f"{path}: {json.dumps(row)}", file=sys.stderr)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(doc, indent=2) + "\n")  # partial results survive a long run
    doc["all_within_half_point"] = all(r["within_half_point"] for r in doc["paths"].values())
    one = doc["single_int8_linear"]
    doc["single_int8_linear_under_3pct"] = {"gaussian": one["gaussian_linear_384x1536_rel_err_vs_float"] < 0.03,
                                            "median_minilm_layer": one["median_rel_err_vs_float"] < 0.03}
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc, indent=2))
    return 0 if doc["all_within_half_point"] and doc["single_int8_linear_under_3pct"]["gaussian"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
