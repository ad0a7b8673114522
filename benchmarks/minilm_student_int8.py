"""A distilled 3-layer MiniLM student (benchmarks/minilm_student.py --out DIR) in PT2E static int8,
against ORT's default dynamic int8 of the full 6-layer model and fp32 PyTorch.

Usage::

    SLIMKIT_DATA=../shared/data HF_HUB_OFFLINE=1 python benchmarks/minilm_student_int8.py DIR ORT_INT8.onnx

ORT_INT8.onnx: ``onnxruntime.quantization.quantize_dynamic`` of the plain MiniLM export (as
benchmarks/minilm_int8.py builds it). The first step toward the ``minilm-fast`` preset.
"""
import sys

import slimkit
from slimkit import measure, zoo
from slimkit.export.onnx import OrtModel
from slimkit.export.pt2e import Pt2eModel, quantize_pt2e

zm = zoo.load("zoo:minilm-l6")
task = zoo.get_task("stsb")
student = slimkit.restore(sys.argv[1]).eval()
calib = task.calibration_batches(zm, 8, 32)
pt = Pt2eModel(quantize_pt2e(student, zm.example_inputs(2, 16), calib))
print("student fp32", task.evaluate(student, zm)["spearman_x100"], flush=True)
print("student pt2e int8", task.evaluate(pt, zm)["spearman_x100"], flush=True)
ortd = OrtModel(sys.argv[2])
for bs, r, it in ((1, 16, 10), (32, 5, 2)):
    x = zm.example_inputs(bs, 128)
    for na, a in (("ORT int8 default (6 layers)", ortd), ("fp32 6 layers", zm.model)):
        c = measure.compare(a, pt, x, rounds=r, iters_per_round=it, warmup=3, settle=2, pause_s=0.05)
        print(bs, na, "vs 3-layer pt2e", f"{c.median_a_ms:.2f} {c.median_b_ms:.2f} {c.speedup:.2f} ({c.speedup_p25:.2f}-{c.speedup_p75:.2f})", flush=True)
