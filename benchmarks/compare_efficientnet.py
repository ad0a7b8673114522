"""EfficientNet-Lite0 on CPU: slimkit's ``efficientnet-fast`` preset against other toolkits, in one run.

Usage::

    SLIMKIT_DATA=... HF_HUB_OFFLINE=1 python benchmarks/compare_efficientnet.py [--rounds 8] [--threads 2] [--quick]

Every row is built, evaluated and timed in the same process on the same inputs and threads:

- metrics: ``zoo.get_task("imagenet-sample").evaluate(model, zm, reference=...)`` on the 500 eval
  images (top-1 and top-1 agreement with fp32 PyTorch). The reference passed to ``evaluate`` is
  fp32 PyTorch behind a cache of its own outputs (keyed by the input bytes), so fp32 runs once
  over the eval set instead of once per row; the cached outputs are exactly ``zm.model``'s;
- calibration (every static-int8 row and the preset): the task's 500 calibration images
  (10 batches x 50);
- latency: :func:`suite.time_rows` (interleaved rounds, paired ratios to fp32 PyTorch) at batch 1
  and batch 32. The ONNX files are exported with a dynamic batch axis (``export_onnx``'s
  default), so one file serves both; the ``torch.compile`` row is compiled once per batch size
  (fixed shapes; compiling happens in the warm-up calls).

OpenVINO rows (``pip install 'slimkit[openvino]'``; "not installed" rows without it): OpenVINO
fp32 (``openvino.convert_model`` of the same plain fp32 ONNX file, CPU plugin, f32 inference
precision), OpenVINO int8 (``nncf.quantize`` post-training quantization of that OpenVINO model on
the same calibration batches) and the preset's pruned + refitted float model through the same
OpenVINO + NNCF int8 path (``slimkit efficientnet-fast (OpenVINO int8)``).

Results go to ``benchmarks/results/compare_efficientnet.{md,json,png}``.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
import suite  # noqa: E402
from suite import Row  # noqa: E402

from slimkit import zoo  # noqa: E402
from slimkit.app.pipeline import context_for  # noqa: E402
from slimkit.core import Recipe  # noqa: E402
from slimkit.export import openvino as ovx  # noqa: E402
from slimkit.export.onnx import (
    OrtModel,  # noqa: E402
    write_onnx,  # noqa: E402
)
from slimkit.export.ort_quant import describe_ops  # noqa: E402

PRESET = "efficientnet-fast"
OV_INSTALL = "not installed (pip install 'slimkit[openvino]')"
T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:6.0f}s] {msg}", file=sys.stderr, flush=True)


class CachedReference(nn.Module):
    """``model``'s outputs, memoised by the input batch's bytes (the same eval batches come back for every row)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.cache: dict[str, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        key = hashlib.sha1(x.detach().contiguous().numpy().tobytes()).hexdigest() + str(tuple(x.shape))
        if key not in self.cache:
            with torch.no_grad():
                self.cache[key] = self.model(x)
        return self.cache[key]


class FixedShapeCompiled(nn.Module):
    """One ``torch.compile(dynamic=False)`` program per input shape (compiled on first call)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.programs: dict[tuple[int, ...], Any] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = tuple(x.shape)
        if shape not in self.programs:
            t = time.perf_counter()
            torch._dynamo.reset()  # a fresh, fixed-shape graph per batch size (no dynamic-shape recompile)
            self.programs = {}
            fn = torch.compile(self.model, dynamic=False)
            fn(x)
            self.programs[shape] = fn
            log(f"  torch.compile for batch shape {shape}: {time.perf_counter() - t:.0f}s")
        return self.programs[shape](x)


def ort_dynamic(src: Path, dst: Path, per_channel: bool) -> str:
    """``onnxruntime.quantization.quantize_dynamic`` with its defaults (all supported op types)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), per_channel=per_channel, weight_type=QuantType.QInt8)
    ops = describe_ops(dst)
    return ", ".join(f"{k} x{v}" for k, v in sorted(ops.items()) if "Integer" in k or "Quant" in k)


def tp_prune(model: nn.Module, example: torch.Tensor, recipe: Recipe) -> tuple[nn.Module, str]:
    """Torch-Pruning at the preset's layers and ratios (L1 magnitude, group-summed; no BN re-estimation)."""
    import fnmatch

    import torch_pruning as tp

    step = next(s for s in recipe.steps if s.config.kind == "prune.channel")
    cfg = step.config
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    chosen = {n: m for n, m in convs.items() if step.targets.matches(n, m)}  # slimkit's own target matching
    if not chosen:
        raise RuntimeError(f"no conv matches {step.targets.to_dict()}")
    ratio_of = {m: float(cfg.ratio) for m in chosen.values()}
    for pat, r in (cfg.per_group_ratio or {}).items():
        for n, m in chosen.items():
            if fnmatch.fnmatchcase(n, pat):
                ratio_of[m] = float(r)
    # every other conv and the classifier are left alone: only the chosen convs' output channels go
    ignored = [m for n, m in convs.items() if n not in chosen] + [m for m in model.modules() if isinstance(m, nn.Linear)]
    pruner = tp.pruner.MetaPruner(model, example, importance=tp.importance.MagnitudeImportance(p=1),
                                  pruning_ratio=0.0, pruning_ratio_dict=ratio_of, ignored_layers=ignored)
    pruner.step()
    kept = ", ".join(f"{n}: {m.out_channels}" for n, m in chosen.items())
    return model.eval(), f"Torch-Pruning {tp.__version__} MetaPruner, L1 magnitude, {sorted(chosen)} -> {kept}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=8, help="interleaved timing rounds at batch 1")
    ap.add_argument("--rounds32", type=int, default=3, help="interleaved timing rounds at batch 32")
    ap.add_argument("--threads", type=int, help="torch and ORT intra-op threads (default: torch's)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 100 eval / 100 calibration images, 2 rounds")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.rounds, args.rounds32 = 2, 1
    limit = 100 if args.quick else None
    n_calib = 2 if args.quick else 10

    zm = zoo.load("zoo:efficientnet-lite0")
    task = zoo.get_task("imagenet-sample")
    fp32 = zm.model.eval()
    x1 = zm.example_inputs(1)
    calib = task.calibration_batches(zm, n_calib, 50)
    recipe = Recipe.load(PRESET)
    tmp = Path(tempfile.mkdtemp(prefix="compare_efficientnet."))
    rows: list[Row] = []
    build_s: dict[str, float] = {}

    def timed(name: str, fn: Any) -> Any:
        t = time.perf_counter()
        out = fn()
        build_s[name] = time.perf_counter() - t
        log(f"built {name} in {build_s[name]:.0f}s")
        return out

    def ort(path: Path) -> OrtModel:
        # spin=False: idle ORT threads must not busy-wait while the torch rows run (interleaved timing)
        return OrtModel(path, spin=False)

    log(f"{torch.get_num_threads()} threads; {n_calib * 50} calibration images; eval limit {limit}")
    rows.append(Row("fp32 PyTorch", fp32, fp32, suite.state_dict_bytes(fp32), who="reference",
                    note="efficientnet_lite_pytorch eager, ImageNet weights"))

    ao = timed("torch.ao", lambda: torch.ao.quantization.quantize_dynamic(copy.deepcopy(fp32), {nn.Linear},
                                                                          dtype=torch.qint8).eval())
    rows.append(Row("torch.ao quantize_dynamic", ao, fp32, suite.state_dict_bytes(ao),
                    note="qint8 on {nn.Linear}: only the classifier `_fc` is quantized (convs stay fp32)"))

    f32_path = tmp / "fp32.onnx"
    info = timed("ORT fp32", lambda: write_onnx(fp32, x1, f32_path))
    rows.append(Row("ORT fp32", ort(f32_path), fp32, info["bytes"],
                    note="slimkit write_onnx plain export (opset 17, dynamic batch), ORT CPU EP"))

    for per_channel, label in ((False, "default"), (True, "per-channel")):
        dst = tmp / f"dyn_{label}.onnx"
        try:
            ops = timed(f"ORT dyn {label}", lambda: ort_dynamic(f32_path, dst, per_channel))
            rows.append(Row(f"ORT quantize_dynamic {label}", ort(dst), fp32, dst.stat().st_size,
                            note=f"onnxruntime quantize_dynamic on the plain fp32 ONNX, all op types ({ops})"))
        except Exception as exc:  # report, do not hide
            rows.append(Row(f"ORT quantize_dynamic {label}", None, fp32, note=f"failed: {exc}"))

    if not ovx.available():
        rows += [Row(n, None, fp32, note=OV_INSTALL) for n in ("OpenVINO fp32", "OpenVINO int8 (NNCF PTQ)")]
    else:
        try:
            ov_fp32 = timed("OpenVINO fp32", lambda: ovx.convert_ov(f32_path))
            f = ovx.save_ov(ov_fp32, tmp / "ov_fp32.xml")
            rows.append(Row("OpenVINO fp32", ovx.OvModel(f), fp32, ovx.ov_bytes(f),
                            note="openvino.convert_model of the same plain fp32 ONNX, CPU plugin, f32 precision"))
            q = ovx.save_ov(timed("OpenVINO int8", lambda: ovx.quantize_ov(ov_fp32, calib)), tmp / "ov_int8.xml")
            rows.append(Row("OpenVINO int8 (NNCF PTQ)", ovx.OvModel(q), fp32, ovx.ov_bytes(q),
                            note=f"nncf.quantize of the OpenVINO fp32 model (default scheme, {len(calib)} x 50 "
                                 "calibration images), CPU plugin"))
        except Exception as exc:  # report, do not hide
            rows.append(Row("OpenVINO fp32 / int8", None, fp32, note=f"failed: {type(exc).__name__}: {exc}"))

    st_path = tmp / "static.onnx"
    info = timed("ORT static", lambda: write_onnx(fp32, x1, st_path, int8="static", calib=calib, per_channel=True))
    rows.append(Row("ORT quantize_static per-channel (slimkit write_onnx, unpruned)", ort(st_path), fp32,
                    info["bytes"], who="slimkit",
                    note="onnxruntime quantize_static QDQ as slimkit drives it (quant_pre_process, every op type, "
                         "uint8 act / int8 per-channel weights, minmax) - i.e. slimkit's static int8 without pruning"))

    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

        tao = copy.deepcopy(fp32)
        timed("torchao", lambda: quantize_(tao, Int8DynamicActivationInt8WeightConfig()))
        rows.append(Row("torchao int8 dyn + torch.compile", FixedShapeCompiled(tao.eval()), fp32,
                        suite.state_dict_bytes(tao),
                        note="torchao 0.18 Int8DynamicActivationInt8Weight (its default filter: nn.Linear only, "
                             "i.e. `_fc`), torch.compile(dynamic=False) per batch size, compiled during warm-up"))
    except Exception as exc:
        rows.append(Row("torchao int8 dyn + torch.compile", None, fp32, note=f"failed: {type(exc).__name__}: {exc}"))

    try:
        tpm, tp_note = timed("Torch-Pruning", lambda: tp_prune(copy.deepcopy(fp32), x1, recipe))
        tp_path = tmp / "tp_static.onnx"
        info = timed("Torch-Pruning ORT static",
                     lambda: write_onnx(tpm, x1, tp_path, int8="static", calib=calib, per_channel=True))
        rows.append(Row("Torch-Pruning + ORT int8", ort(tp_path), tpm, info["bytes"],
                        note=f"{tp_note}; no BN re-estimation (TP's default flow); then the same static int8 "
                             f"export/calibration as slimkit"))
    except Exception as exc:
        rows.append(Row("Torch-Pruning + ORT int8", None, fp32, note=f"failed: {type(exc).__name__}: {exc}"))

    ctx = context_for(zm, task, calib_batches=n_calib, batch_size=50, progress=False)
    ctx.extras["export_dir"] = tmp / "preset"
    pruned = timed(PRESET, lambda: recipe.run(fp32, ctx))
    onnx_file = next(s.config.file for s in recipe.steps if s.config.kind == "export.onnx")
    preset_path = tmp / "preset" / onnx_file
    rows.append(Row(f"slimkit {PRESET}", ort(preset_path), pruned, preset_path.stat().st_size, who="slimkit",
                    note=f"`slimkit compress --recipe {PRESET}` via the Python API ({len(recipe.steps)} steps, "
                         f"{build_s[PRESET]:.0f}s incl. calibration), served from its int8 ONNX"))
    if ovx.available():
        try:
            ovq = timed(f"{PRESET} OpenVINO int8",
                        lambda: ovx.quantize_ov(ovx.convert_ov(pruned.eval(), x1), calib))
            f = ovx.save_ov(ovq, tmp / "preset_ov_int8.xml")
            rows.append(Row(f"slimkit {PRESET} (OpenVINO int8)", ovx.OvModel(f), pruned, ovx.ov_bytes(f),
                            who="slimkit", note=f"the preset's pruned + refitted float model through OpenVINO + "
                                                f"nncf.quantize ({len(calib)} x 50 calibration images)"))
        except Exception as exc:  # report, do not hide
            rows.append(Row(f"slimkit {PRESET} (OpenVINO int8)", None, pruned,
                            note=f"failed: {type(exc).__name__}: {exc}"))

    live = [r for r in rows if r.model is not None]
    suite.count(rows, x1)

    # -- metrics --------------------------------------------------------------------------------
    ref = CachedReference(fp32)
    for r in live:
        t = time.perf_counter()
        model = ref if r is rows[0] else r.model  # fp32 itself goes through the cache (identical outputs)
        if isinstance(r.model, FixedShapeCompiled):
            model = r.model.model  # eager torchao model: compiling again for the eval batch shape costs minutes
            r.note += "; metrics from the same quantized model run eagerly"
        m = task.evaluate(model, zm, reference=ref, limit=limit)
        r.metrics = {"accuracy": 100 * m["accuracy"], "agreement": 100 * m["agreement"]}
        log(f"eval {r.name}: top-1 {r.metrics['accuracy']:.1f} agreement {r.metrics['agreement']:.1f} "
            f"({time.perf_counter() - t:.0f}s)")

    # -- latency --------------------------------------------------------------------------------
    for batch, rounds in ((1, args.rounds), (32, args.rounds32)):
        t = time.perf_counter()
        x = zm.example_inputs(batch)
        iters = 3 if batch == 1 else 1
        suite.time_rows(live, x, batch=batch, rounds=rounds, iters=iters, warmup=2 if batch == 1 else 1,
                        settle=1 if batch == 1 else 0)
        log(f"timed batch {batch}: {rounds} rounds x {iters} calls in {time.perf_counter() - t:.0f}s")

    notes = [f"Total run {time.perf_counter() - T0:.0f}s. Build times: "
             + ", ".join(f"{k} {v:.0f}s" for k, v in build_s.items()) + ".", "", preset_verdict(rows)]
    cmd = "python benchmarks/compare_efficientnet.py " + " ".join(sys.argv[1:])
    path = suite.write_results(
        "compare_efficientnet" + ("-quick" if args.quick else ""),
        "EfficientNet-Lite0: slimkit efficientnet-fast vs other toolkits (CPU)", rows,
        [("accuracy", f"top-1 % ({limit or 500} imgs)", ".1f"), ("agreement", "agreement % with fp32", ".1f")],
        [1, 32], pareto_metric="agreement", pareto_label="top-1 agreement with fp32 PyTorch (%)",
        command=cmd.strip(), notes="\n".join(notes))
    log(f"wrote {path}")
    print(path.read_text())


def preset_verdict(rows: list[Row]) -> str:
    """For the preset against every other row (``suite.verdicts``): on top-1, the task metric, with
    the issue's "equal accuracy" band (within 1.0 point of fp32, as for MiniLM's STS-B), then on
    agreement with fp32 with the same band (99.0 %)."""
    me = next(r for r in rows if r.name == f"slimkit {PRESET}")
    if "agreement" not in me.metrics:
        return "The slimkit preset row has no metrics; no comparison."
    live = [r for r in rows if r.metrics]
    floor = suite.band_floor(live, "accuracy")
    lines = [f"**{me.name} against every other row**, with top-1 on the 500 eval images as the metric "
             f"(the preset's: {me.metrics['accuracy']:.1f} %; one image is 0.2 points). Equal accuracy is "
             f"the issue's band, within 1.0 point of fp32: top-1 >= {floor:.1f} % "
             f"({'met' if me.metrics['accuracy'] >= floor else 'NOT met'} by the preset):", ""]
    lines += suite.verdicts(live, me, "accuracy", [1, 32], floor=floor)
    lines += ["", f"The same with agreement with fp32 as the metric (the preset's: {me.metrics['agreement']:.1f} "
              f"%; band: >= 99.0 %, {'met' if me.metrics['agreement'] >= 99.0 else 'NOT met'}):", ""]
    lines += suite.verdicts(live, me, "agreement", [1, 32], floor=99.0)
    return "\n".join(lines)


if __name__ == "__main__":
    main()
