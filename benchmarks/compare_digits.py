"""zoo:digits-cnn: slimkit's digits presets against other toolkits, all in one run.

Rows (same test inputs, same threads, interleaved timing via ``suite.time_rows``):
fp32 PyTorch; torch.ao dynamic int8; ONNX Runtime fp32 and dynamic int8 (default and
per-channel); torchao int8 dynamic + torch.compile; Torch-Pruning at the preset's channel
ratio + ORT static int8; slimkit ``digits-deep-compression`` and ``digits-fast``.

Usage::

    SLIMKIT_DATA=../shared/data HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/compare_digits.py [--rounds 10] [--threads N]

Training (the recipes, Torch-Pruning's fine-tuning) runs on one thread (deterministic and
fastest for this tiny model on a shared machine); timing uses ``--threads`` (default 1).
Writes ``benchmarks/results/compare_digits.{md,json,png}``.
"""
from __future__ import annotations

import argparse
import copy
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
import suite  # noqa: E402
from suite import Row  # noqa: E402

import slimkit  # noqa: E402
from slimkit import zoo  # noqa: E402
from slimkit.app.pipeline import context_for  # noqa: E402
from slimkit.core import Recipe  # noqa: E402
from slimkit.export.onnx import (
    OrtModel,  # noqa: E402
    write_onnx,  # noqa: E402
)
from slimkit.export.ort_quant import quantize_dynamic_onnx  # noqa: E402
from slimkit.measure.latency import fixed_threads  # noqa: E402
from slimkit.zoo.digits import digits_split  # noqa: E402

PRESETS = ("digits-deep-compression", "digits-fast")
METRICS = [("accuracy", "accuracy (450 test)", ".4f"), ("agreement", "agreement with fp32", ".4f")]
BATCHES = [1, 32]
T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def safetensors_bytes(model: nn.Module, spec: str) -> int:
    with tempfile.TemporaryDirectory() as d:
        slimkit.save(model, d, spec=spec)
        return (Path(d) / "model.safetensors").stat().st_size


def preset_channel_ratio(name: str) -> float:
    """The ``ratio`` of the preset's prune.channel step."""
    for s in Recipe.load(name).steps:
        if s.config.kind == "prune.channel":
            return float(s.config.ratio)
    raise SystemExit(f"{name} has no prune.channel step")


def preset_train_steps(name: str) -> int:
    """Optimizer steps the preset trains for (every step kind with a ``steps`` option)."""
    return sum(int(getattr(s.config, "steps", 0) or 0) for s in Recipe.load(name).steps)


def build(rows: list[Row], name: str, who: str, fn: Callable[[], Row]) -> None:
    """Append ``fn()``'s row; if it fails, a row without a model whose note says why."""
    log(f"building {name}")
    try:
        rows.append(fn())
    except Exception as exc:  # keep the row, say why
        traceback.print_exc(file=sys.stderr)
        rows.append(Row(name, None, who=who, note=f"not built: {type(exc).__name__}: {str(exc)[:160]}"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch and ORT intra-op threads for timing (default 1: on the shared 2-core machine two "
                         "OpenMP threads made fp32 PyTorch at batch 1 take ~60 ms instead of ~0.1 ms)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)  # OrtModel sessions take torch's count when created
    threads = torch.get_num_threads()
    tmp = Path(tempfile.mkdtemp(prefix="compare_digits."))
    zm = zoo.load("zoo:digits-cnn")
    task = zoo.get_task("digits")
    fp32 = zm.model.eval()
    _, _, x_te, _ = digits_split()
    inputs = {b: x_te[:b].contiguous() for b in BATCHES}
    rows: list[Row] = [Row("fp32 PyTorch", fp32, source=fp32, file_bytes=suite.state_dict_bytes(fp32),
                           who="reference", note="zoo:digits-cnn, eval mode")]

    def tao_dynamic() -> Row:
        m = torch.ao.quantization.quantize_dynamic(copy.deepcopy(fp32), {nn.Linear}, dtype=torch.qint8)
        return Row("torch.ao quantize_dynamic", m, source=fp32, file_bytes=suite.state_dict_bytes(m),
                   note="{nn.Linear} qint8; convs stay fp32")

    build(rows, "torch.ao quantize_dynamic", "baseline", tao_dynamic)

    f32_onnx = tmp / "fp32.onnx"

    def ort_fp32() -> Row:
        write_onnx(fp32, zm.example_inputs(1), f32_onnx)  # dynamic batch axis (export_onnx default)
        return Row("ORT fp32", OrtModel(f32_onnx, threads, spin=False), source=fp32,
                   file_bytes=f32_onnx.stat().st_size, note="dynamic batch axis, one file for b=1 and b=32")

    build(rows, "ORT fp32", "baseline", ort_fp32)

    def ort_dyn(per_channel: bool) -> Callable[[], Row]:
        def make() -> Row:
            dst = tmp / f"dyn_{'pc' if per_channel else 'pt'}.onnx"
            nodes = quantize_dynamic_onnx(f32_onnx, dst, per_channel=per_channel)
            return Row(f"ORT quantize_dynamic {'per-channel' if per_channel else 'default'}",
                       OrtModel(dst, threads, spin=False), source=fp32, file_bytes=dst.stat().st_size,
                       note=f"int8 {len(nodes)} Gemm/MatMul node(s); Conv stays fp32")
        return make

    build(rows, "ORT quantize_dynamic default", "baseline", ort_dyn(False))
    build(rows, "ORT quantize_dynamic per-channel", "baseline", ort_dyn(True))

    def torchao_compile() -> Row:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

        m = copy.deepcopy(fp32)
        quantize_(m, Int8DynamicActivationInt8WeightConfig())
        size = suite.state_dict_bytes(m)
        cm = torch.compile(m)
        t = time.perf_counter()
        with torch.no_grad():
            for b in BATCHES:  # compile every batch size now, not inside the timing
                cm(inputs[b])
        return Row("torchao int8 dyn + torch.compile", cm, source=fp32, file_bytes=size,
                   note=f"Linear layers int8 (dyn act.); convs fp32; compile {time.perf_counter() - t:.0f}s")

    build(rows, "torchao int8 dyn + torch.compile", "baseline", torchao_compile)

    ratio = preset_channel_ratio("digits-fast")
    ft_steps = preset_train_steps("digits-fast")

    def tp_ort() -> Row:
        import torch_pruning as tp

        m = copy.deepcopy(fp32)
        example = zm.example_inputs(1)
        pruner = tp.pruner.MetaPruner(m, example, importance=tp.importance.MagnitudeImportance(p=1),
                                      pruning_ratio=ratio, ignored_layers=[m.classifier[-1]])
        pruner.step()
        with fixed_threads(1):
            ctx = context_for(zm, task, progress=False)
            ft = Recipe.from_dict({"name": "tp-finetune", "steps": [
                {"kind": "distill.logits", "with": {"steps": ft_steps, "lr": 0.001}}]})
            m = ft.run(m, ctx).eval()
        dst = tmp / "tp_int8.onnx"
        calib = task.calibration_batches(zm, 8, 32)
        write_onnx(m, example, dst, int8="static", calib=calib, per_channel=True)
        return Row("Torch-Pruning + ORT int8", OrtModel(dst, threads, spin=False), source=m,
                   file_bytes=dst.stat().st_size,
                   note=(f"torch_pruning {tp.__version__} MetaPruner, L1 magnitude, ratio {ratio} (classifier "
                         f"output kept); fine-tuned {ft_steps} steps (batch 32, = digits-fast's total training "
                         "steps) with slimkit distill.logits; ORT static int8 QDQ per-channel, 8x32 calib images"))

    build(rows, "Torch-Pruning + ORT int8", "baseline", tp_ort)

    def preset(name: str) -> Callable[[], Row]:
        def make() -> Row:
            shrunk: list[nn.Module] = []
            recipe = Recipe.load(name)

            def on_step(i: int, step: Any, model: nn.Module) -> None:
                if step.config.kind == "prune.channel":
                    shrunk.append(copy.deepcopy(model).eval())  # the float module of the served architecture

            t = time.perf_counter()
            with fixed_threads(1):
                ctx = context_for(zm, task, progress=False)
                model = recipe.run(fp32, ctx, on_step=on_step).eval()
            secs = time.perf_counter() - t
            source = shrunk[-1] if shrunk else fp32
            return Row(f"slimkit {name}", model, source=source, file_bytes=safetensors_bytes(model, zm.spec),
                       who="slimkit", note=f"recipe {secs:.0f}s on 1 thread; served as torch, bytes = model.safetensors")
        return make

    for name in PRESETS:
        build(rows, f"slimkit {name}", "slimkit", preset(name))

    log("evaluating")
    for r in rows:
        if r.model is not None:
            r.metrics = task.evaluate(r.model, zm, reference=fp32)
    live = [r for r in rows if r.model is not None and r.metrics]
    suite.count(live, zm.example_inputs(1))
    for b in BATCHES:
        log(f"timing batch {b} ({args.rounds} rounds, {threads} threads)")
        suite.time_rows(live, inputs[b], batch=b, rounds=args.rounds)

    notes = comparison_notes(rows)
    cmd = "python benchmarks/compare_digits.py" + (f" --rounds {args.rounds}" if args.rounds != 10 else "") + (
        f" --threads {args.threads}" if args.threads != 1 else "")
    path = suite.write_results("compare_digits", "zoo:digits-cnn: slimkit presets vs other toolkits", rows, METRICS,
                               BATCHES, pareto_metric="accuracy", pareto_label="digits test accuracy (450 images)",
                               command=cmd, notes=notes)
    log(f"wrote {path}")
    print(path.read_text())
    shutil.rmtree(tmp, ignore_errors=True)


def comparison_notes(rows: list[Row]) -> str:
    """For each slimkit preset against every other row: faster and/or smaller at equal or better accuracy?"""
    floor = suite.band_floor(rows, "accuracy", 0.01)
    out = ["**Preset vs each row** (`suite.verdicts`: 'faster' = at least three of four paired rounds faster at "
           "that batch, 'smaller' = fewer file bytes, a win counted only at equal or better accuracy; equal "
           f"accuracy is the issue's band, within 1.0 point of fp32: >= {floor:.4f}. One test image is 0.0022, "
           "and the presets' accuracy moves by about 0.007 between training seeds):", ""]
    for p in (r for r in rows if r.who == "slimkit" and r.model is not None and "accuracy" in r.metrics):
        out += [f"**{p.name}** (accuracy {p.metrics['accuracy']:.4f}):", ""]
        out += suite.verdicts([r for r in rows if r.model is not None], p, "accuracy", BATCHES, floor=floor) + [""]
    out += ["Exact file bytes: " + "; ".join(f"{r.name} {r.file_bytes}" for r in rows if r.file_bytes), ""]
    return "\n".join(out)


if __name__ == "__main__":
    main()
