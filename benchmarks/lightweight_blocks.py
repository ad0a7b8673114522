"""Issue 19, must-show 6: standard convs -> depthwise-separable on a CNN, distilled back (digits).

Usage::

    python benchmarks/lightweight_blocks.py [--steps 800] [--models digits,wide]
    python benchmarks/lightweight_blocks.py --smoke   # plumbing only: 3 steps, 2 rounds, no result file

Models (scikit-learn digits, the fixed 1347 / 450 split of ``zoo:digits-cnn``):

- **digits**: ``zoo:digits-cnn`` (convs 1->16, 16->32 at 8x8, 32->64 at 4x4; ~0.6 M MACs);
- **wide**: the same architecture four times wider (64, 128, 256 channels, hidden 128), trained
  here with the zoo's own deterministic recipe (seed 0, 12 epochs): convs big enough that their
  MACs dominate the forward.

Arms per model (the teacher is always the fp32 model; every conv with a 3x3 kernel converted):

- **fp32**: the trained model;
- **dws m=1, SVD init, no training**: ``block.depthwise_separable`` alone (the best separable fit);
- **dws m=1, SVD init + distill**: then ``distill.logits`` (KD with the labels, T=4, alpha 0.5)
  for ``--steps`` steps of 64 on the training split (as the ``digits-fast`` preset distils);
- **dws m=1, random init + distill**: the same structure re-initialised (PyTorch's default init),
  the same distillation: what the decomposition buys;
- **dws m=2, SVD init + distill**: depth multiplier 2;
- **group conv g=4 + shuffle**: ``block.group_shuffle`` (ShuffleNet's grouped conv + channel
  shuffle; the first conv, with one input channel, is skipped), the same distillation.

Reported: parameters and MACs (``slimkit.measure.profile``, batch 1), test accuracy on the
450-image test split, and the paired latency ratio fp32 / converted (``slimkit.measure.compare``:
interleaved rounds, medians) at batch 1 and batch 256, eager PyTorch, on this machine's threads.
Settings were fixed before the run, not chosen on test. Writes
``benchmarks/results/lightweight_blocks.json`` in the generic form make_results.py renders.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

import slimkit
from slimkit import zoo
from slimkit.core import Context, Recipe
from slimkit.core.cpu import int8_isa
from slimkit.measure import compare, profile

RESULTS = Path(__file__).parent / "results" / "lightweight_blocks.json"
BATCHES = (1, 256)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def wide_cnn() -> nn.Module:
    """DigitsCNN x4 wider, trained with the zoo's deterministic recipe (seed 0)."""
    from slimkit.zoo.digits import DigitsCNN, train_digits_cnn

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = DigitsCNN(widths=(64, 128, 256), hidden=128)
    return train_digits_cnn(net)


def convert(model: nn.Module, multiplier: int, ctx: Context, distill_steps: int, random_init: bool = False,
            recalibrate: bool = False, lr: float = 2e-3) -> nn.Module:
    """``multiplier > 0``: block.depthwise_separable at that multiplier; ``< 0``: block.group_shuffle
    with ``-multiplier`` groups. Then optionally re-initialise, recalibrate BN and distil."""
    kind, opts = (("block.depthwise_separable", {"multiplier": multiplier}) if multiplier > 0
                  else ("block.group_shuffle", {"groups": -multiplier}))
    steps: list[dict[str, Any]] = [{"kind": kind, "targets": {"types": ["Conv2d"]}, "with": opts}]
    if recalibrate:
        steps.append({"kind": "train.bn_recalibrate", "with": {"batches": 16}})
    out = Recipe.from_dict({"name": "dws", "steps": steps}).run(model, ctx)
    if random_init:
        torch.manual_seed(0)
        for m in out.modules():
            if isinstance(m, nn.Sequential) and len(m) == 2 and all(isinstance(c, nn.Conv2d) for c in m):
                for c in m:
                    c.reset_parameters()
    if distill_steps:
        kd = {"kind": "distill.logits", "with": {"steps": distill_steps, "lr": lr, "temperature": 4.0, "alpha": 0.5,
                                                 "warmup": distill_steps // 20, "seed": 0}}
        out = Recipe.from_dict({"name": "kd", "steps": [kd]}).run(out, ctx)
    return out.eval()


def measure(name: str, model: nn.Module, ref: nn.Module | None, task: Any, rounds: int, iters: int) -> dict[str, Any]:
    """Params, MACs and test accuracy of ``model``; with ``ref``, the paired latency ratio ref / model."""
    x1 = torch.zeros(1, 1, 8, 8)
    prof = profile(model, x1)
    row: dict[str, Any] = {"name": name, "params": prof.params_total, "macs": prof.macs,
                           "accuracy": round(100 * task.evaluate(model)["accuracy"], 2)}
    gen = torch.Generator().manual_seed(0)
    for b in BATCHES:
        if ref is None:
            continue
        x = torch.rand(b, 1, 8, 8, generator=gen)
        n = iters if b == 1 else max(1, iters // 5)  # a batch of 256 takes ~100x longer: fewer calls per round
        res = compare(ref, model, x, rounds=rounds, iters_per_round=n, warmup=2)
        row[f"speedup_b{b}"] = round(res.speedup, 3)
        row[f"iqr_b{b}"] = [round(res.speedup_p25, 3), round(res.speedup_p75, 3)]
        row[f"ms_b{b}"] = [round(res.median_a_ms, 4), round(res.median_b_ms, 4)]
        row["threads"] = res.threads
    recs = [r for r in slimkit.records(model) if r.kind.startswith("block.")]
    if recs:
        row["fit_error"] = {n: v["error"] for n, v in recs[0].data["layers"].items()}
    log(f"{name}: {row}")
    return row


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--models", default="digits,wide")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--smoke", action="store_true", help="check the plumbing: 3 steps, 2 rounds, no result file")
    args = ap.parse_args(argv)
    steps, rounds, iters = (3, 2, 2) if args.smoke else (args.steps, args.rounds, args.iters)
    cmd = ("python benchmarks/lightweight_blocks.py " + " ".join(argv)).strip()
    task = zoo.get_task("digits")
    rows: dict[str, list[dict[str, Any]]] = {}
    for which in args.models.split(","):
        t0 = time.perf_counter()
        zm = zoo.load("zoo:digits-cnn")
        teacher = zm.model.eval() if which == "digits" else wide_cnn().eval()
        log(f"{which}: teacher ready in {time.perf_counter() - t0:.1f} s")
        ctx = Context(example_inputs=torch.zeros(1, 1, 8, 8), teacher=teacher,
                      calib_data=task.calibration_batches(zm, 16, 64),
                      train_data=task.train_batches(zm, 64, epochs=10**6, seed=0), loss_fn=task.loss_fn,
                      progress=False, seed=0)
        # (multiplier, distill steps, random init, BN recalibration, timed); the m=1 arms share one
        # structure, so only one of them is timed (latency does not depend on the weights' values)
        arms = [("fp32", None), ("dws m=1, SVD init, no training", (1, 0, False, False, False)),
                ("dws m=1, SVD init + BN recalibration", (1, 0, False, True, False)),
                ("dws m=1, SVD init + distill", (1, steps, False, False, True)),
                ("dws m=1, random init + distill", (1, steps, True, False, False)),
                ("dws m=2, SVD init + distill", (2, steps, False, False, True)),
                ("group conv g=4 + shuffle, restricted init + distill", (-4, steps, False, False, True))]
        rows[which] = []
        for name, arm in arms:
            t0 = time.perf_counter()
            model = teacher if arm is None else convert(teacher, arm[0], ctx, arm[1], random_init=arm[2],
                                                        recalibrate=arm[3])
            seconds = round(time.perf_counter() - t0, 1)
            timed = arm is not None and arm[4]
            row = measure(name, model, teacher if timed else None, task, rounds, iters)
            row["convert_seconds"] = seconds
            if arm is not None and arm[2]:
                row.pop("fit_error", None)  # the Record's fit error is the SVD's, not this random start's
            rows[which].append(row)
        if not args.smoke:
            write(rows, args, cmd, steps)
    if args.smoke:
        print(json.dumps(rows, indent=1))


def _speed(r: dict[str, Any], fp: dict[str, Any], batch: int) -> Any:
    if r is fp:
        return 1.0
    return r.get(f"speedup_b{batch}", "same")


def write(rows: dict[str, list[dict[str, Any]]], args: argparse.Namespace, cmd: str, steps: int) -> None:
    """The generic result document (title / command / summary / tables / notes) of the rows so far."""
    tables, parts = [], []
    for which, rs in rows.items():
        fp = rs[0]
        table = [[r["name"], r["params"], r["macs"], round(fp["macs"] / r["macs"], 2), r["accuracy"],
                  round(r["accuracy"] - fp["accuracy"], 2), _speed(r, fp, 1), _speed(r, fp, 256)]
                 for r in rs]
        threads = next((r["threads"] for r in rs if "threads" in r), "?")
        tables.append({"caption": f"{which}: params, MACs (batch 1), digits test accuracy %, paired eager latency "
                                  f"speed-up vs fp32 (ratio of medians over {args.rounds} interleaved rounds, "
                                  f"{threads} threads; 'same' = the structure of the timed m=1 row)",
                       "columns": ["model", "params", "MACs", "MACs x fewer", "test acc", "acc - fp32",
                                   "speed-up b1", "speed-up b256"], "rows": table})
        by = {r["name"]: r for r in rs}
        best, m2 = by["dws m=1, SVD init + distill"], by["dws m=2, SVD init + distill"]
        gs = by["group conv g=4 + shuffle, restricted init + distill"]
        parts.append(f"{which}: MACs {fp['macs']:,} -> {best['macs']:,} ({fp['macs'] / best['macs']:.1f}x fewer), "
                     f"test accuracy {fp['accuracy']:.2f} -> {by['dws m=1, SVD init, no training']['accuracy']:.2f} "
                     f"(SVD fit, untrained; {by['dws m=1, SVD init + BN recalibration']['accuracy']:.2f} with BN "
                     f"recalibrated) -> {best['accuracy']:.2f} after {steps} distillation steps (random init, same "
                     f"distillation: {by['dws m=1, random init + distill']['accuracy']:.2f}; m=2: {m2['accuracy']:.2f}); "
                     f"paired latency fp32/dws {best.get('speedup_b1')}x at batch 1, {best.get('speedup_b256')}x at "
                     f"batch 256; group conv g=4 + shuffle: {gs['accuracy']:.2f}, {gs.get('speedup_b1')}x / "
                     f"{gs.get('speedup_b256')}x")
    doc = {
        "title": "Lightweight blocks: standard 3x3 convs -> depthwise-separable (block.depthwise_separable) or "
                 "grouped + shuffle (block.group_shuffle), distilled back, on digits CNNs",
        "command": cmd, "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "cpu": int8_isa().cpu_model, "int8_isa": int8_isa().to_dict(),
        "summary": "; ".join(parts) + ".",
        "tables": tables,
        "notes": ["Every 3x3 Conv2d converted (depthwise C_in -> C_in*m with the layer's stride / padding, then a 1x1 "
                  "with the bias); BatchNorm, pooling and the classifier unchanged. MACs and params from "
                  "slimkit.measure.profile at batch 1.",
                  f"distill.logits: {steps} steps of 64 images from the 1347-image training split, lr 2e-3 "
                  "(linear decay, 5 % warm-up), T=4, alpha 0.5 (KD plus the labels), seed 0; the teacher is the fp32 "
                  "model. Accuracy on the fixed 450-image test split, never used for choices.",
                  "Latency: slimkit.measure.compare, eager PyTorch, interleaved rounds, ratio of medians; the 2-core "
                  "machine is shared, so the ratios are indicative. The digits CNN is tiny: at batch 1 its forward is "
                  "dominated by per-op overhead, and the conversion adds an op per conv.",
                  "One seed per arm, not repeated."],
        "rows": rows,
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    log(f"wrote {RESULTS}")


if __name__ == "__main__":
    main(sys.argv[1:])
