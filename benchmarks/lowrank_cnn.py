"""Tucker-2 and CP of zoo:digits-cnn's 3x3 convs, gated by measured latency, then a short KD fine-tune.

For each arm (a kind and its rank rule) and each serving batch size, one recipe runs:
``lowrank.tucker`` / ``lowrank.cp`` with ``gate: latency`` (eager PyTorch, the layer timed
against its factorized chain at that batch's input shape, paired and interleaved), then
``distill.logits`` against the dense model (the training engine; KD + labels). Reported:

- per layer: ranks, relative weight error, measured dense / factorized time and ratio, kept or declined;
- whole model: MACs and parameters (``slimkit.measure.profile``) before / after, and the paired,
  interleaved whole-model latency ratio (``slimkit.measure.compare``) dense vs the result, for
  the gated model and for the same factorization without the gate (every layer swapped);
- accuracy on the fixed 450-image digits test split: dense, after factorization, after fine-tune.

One thread (the machine's 2 cores are shared); a few minutes::

    PYTHONPATH=src python benchmarks/lowrank_cnn.py [--steps 400] [--batches 1 256] [--rounds 15]

Writes ``benchmarks/results/lowrank_cnn.json``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

import slimkit
from slimkit import measure
from slimkit.app.pipeline import context_for
from slimkit.core import Recipe
from slimkit.core.cpu import int8_isa

RESULTS = Path(__file__).resolve().parent / "results"
ARMS: dict[str, tuple[str, dict[str, Any]]] = {
    "tucker-vbmf": ("lowrank.tucker", {}),
    "tucker-energy-0.9": ("lowrank.tucker", {"energy": 0.9}),
    "tucker-ratio-0.25": ("lowrank.tucker", {"ratio": 0.25}),
    "cp-ratio-0.25": ("lowrank.cp", {"ratio": 0.25}),
}
RESNET_TRAIN = {"seed": 0, "epochs": 8, "batch_size": 64, "lr": 3e-3, "weight_decay": 1e-4}


class Block(nn.Module):
    """Basic residual block: conv3x3-BN-ReLU-conv3x3-BN + shortcut (1x1 conv + BN when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                                  nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.short = nn.Identity() if stride == 1 and cin == cout else \
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.short(x))


def digits_resnet() -> nn.Module:
    """A ResNet-style CNN for 8x8 digits: stem 1->64, two 64-wide blocks at 8x8, a 128-wide block at 4x4
    (stride 2) and one more at 4x4, global pool, Linear 128->10: real 3x3 convs of 64 and 128 channels."""
    return nn.Sequential(nn.Conv2d(1, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                         Block(64, 64), Block(64, 64), Block(64, 128, 2), Block(128, 128),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10))


def trained_resnet(zm: Any, task: Any) -> nn.Module:
    """:func:`digits_resnet` built and trained under a fixed seed on the digits train split (AdamW,
    cosine), through the training engine; the same weights in every run (cached by a hash of the
    architecture and settings under slimkit's cache folder)."""
    import hashlib

    from safetensors.torch import load_file, save_file

    from slimkit.train import TrainOptions, task_loss, train
    from slimkit.zoo.data import atomic_write, cache_dir

    s = RESNET_TRAIN
    key = hashlib.sha256((repr(digits_resnet()) + json.dumps(s, sort_keys=True)).encode()).hexdigest()[:16]
    file = cache_dir() / f"digits-resnet-{key}.safetensors"
    if file.is_file():
        net = digits_resnet()
        net.load_state_dict(load_file(str(file)), strict=True)
        return net.eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(s["seed"])
        net = digits_resnet()
    data = task.train_batches(zm, s["batch_size"], epochs=s["epochs"], seed=s["seed"])
    train(net, task_loss(task.loss_fn), data, TrainOptions(steps=len(data), lr=s["lr"], weight_decay=s["weight_decay"],
                                                           schedule="cosine", warmup=len(data) // 20,
                                                           seed=s["seed"]), progress=False)
    state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    atomic_write(file, lambda p: save_file(state, str(p)))
    return net.eval()


def step_yaml(kind: str, options: dict[str, Any], gate: str, batch: int, args: argparse.Namespace) -> dict[str, Any]:
    with_ = {**options, "gate": gate}
    if gate == "latency":  # one layer at batch 1 runs in ~0.1 ms: many calls per round against scheduler noise
        with_.update(gate_rounds=args.gate_rounds, gate_iters=args.gate_iters * (10 if batch <= 8 else 1),
                     gate_threads=1)
    return {"kind": kind, "targets": {"types": ["Conv2d"]}, "with": with_}


def whole_model(base: nn.Module, model: nn.Module, x: torch.Tensor, args: argparse.Namespace) -> dict[str, Any]:
    """MACs / params from the profile and the paired latency ratio dense / ``model`` at batch ``x``."""
    prof = measure.profile(model, x)
    # about args.round_ms of calls per side and round: ~1 ms calls (batch 1) get many, ~100 ms calls a few
    once = measure.latency(base, x, warmup=2, iters=5, threads=1).median_ms
    iters = max(3, min(50, round(args.round_ms / max(once, 1e-3))))
    res = measure.compare(base, model, x, rounds=args.rounds, iters_per_round=iters, warmup=5, threads=1)
    return {"macs": prof.macs, "params": sum(p.numel() for p in model.parameters()),
            "speedup": round(res.speedup, 3), "speedup_p25": round(res.speedup_p25, 3),
            "speedup_p75": round(res.speedup_p75, 3), "dense_ms": round(res.median_a_ms, 4),
            "model_ms": round(res.median_b_ms, 4), "rounds": args.rounds, "iters_per_round": iters}


def layer_rows(rec: Any) -> list[dict[str, Any]]:
    out = []
    for d in rec.data["gate"]:
        meta = rec.data["layers"].get(d["layer"]) or rec.data["declined"].get(d["layer"], {})
        out.append({"layer": d["layer"], "kept": d["kept"], "ratio": d["ratio"] and round(d["ratio"], 3),
                    "dense_ms": d["dense_ms"] and round(d["dense_ms"], 4),
                    "factorized_ms": d["factorized_ms"] and round(d["factorized_ms"], 4),
                    "params_dense": d["params_dense"], "params_factorized": d["params_factorized"],
                    **{k: v for k, v in meta.items()}})
    for name, reason in rec.data["skipped"].items():
        out.append({"layer": name, "kept": "skipped", "reason": reason})
    return out


def run_arm(model_name: str, name: str, batch: int, base: nn.Module, zm: Any, task: Any, x: torch.Tensor,
            args: argparse.Namespace) -> dict[str, Any]:
    kind, options = ARMS[name]
    ctx = context_for(zm, task, batch_size=64, progress=False)
    ctx.example_inputs = x  # the gate times each layer at the serving batch's shape
    ctx.teacher = base  # fine-tune against the dense model of this run
    recipe = Recipe.from_dict({"name": name, "steps": [
        step_yaml(kind, options, "latency", batch, args),
        {"kind": "distill.logits", "with": {"steps": args.steps, "lr": args.lr, "schedule": "cosine"}}]})
    seen: dict[str, Any] = {}

    def on_step(i: int, _step: Any, model: nn.Module) -> None:
        if i == 0:
            seen["acc_factorized"] = task.evaluate(model)["accuracy"]
            seen["record"] = slimkit.records(model)[-1]

    t0 = time.perf_counter()
    tuned = recipe.run(base, ctx, on_step=on_step)
    elapsed = time.perf_counter() - t0
    # the same factorization without the gate: every layer swapped (no fine-tune; its structure only)
    ungated = Recipe.from_dict({"name": f"{name}-ungated", "steps": [step_yaml(kind, options, "none", batch, args)]})
    every = ungated.run(base, context_for(zm, task, batch_size=64, progress=False))
    row = {"model": model_name, "arm": name, "kind": kind, "options": options, "serve_batch": batch, "gate_runtime": "eager",
           "layers": layer_rows(seen["record"]), "acc_factorized": seen["acc_factorized"],
           "acc_finetuned": task.evaluate(tuned)["accuracy"], "seconds": round(elapsed, 1),
           "gated": whole_model(base, tuned, x, args),
           "ungated": {**whole_model(base, every, x, args), "acc_factorized": task.evaluate(every)["accuracy"]}}
    print(f"{model_name} {name} b={batch}: kept {[r['layer'] for r in row['layers'] if r['kept'] == 'factorized']} "
          f"acc {row['acc_factorized']:.4f} -> {row['acc_finetuned']:.4f}; gated {row['gated']['speedup']}x, "
          f"ungated {row['ungated']['speedup']}x", file=sys.stderr)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["digits-resnet", "digits-cnn"],
                    choices=["digits-resnet", "digits-cnn"])
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 256])
    ap.add_argument("--steps", type=int, default=400, help="distill.logits fine-tune steps (batch 64)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--rounds", type=int, default=21, help="whole-model paired rounds")
    ap.add_argument("--round-ms", type=float, default=100.0, help="time per side and round (whole model; sets "
                    "the calls per round, 3 to 50)")
    ap.add_argument("--gate-rounds", type=int, default=9)
    ap.add_argument("--gate-iters", type=int, default=5, help="calls per gate round (x10 at batch <= 8)")
    ap.add_argument("--out", type=Path, default=RESULTS / "lowrank_cnn.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    zm = slimkit.zoo.load("zoo:digits-cnn")
    task = slimkit.zoo.get_task("digits")
    rows, dense_acc = [], {}
    for model_name in args.models:
        t0 = time.perf_counter()
        base = zm.model.eval() if model_name == "digits-cnn" else trained_resnet(zm, task)
        dense_acc[model_name] = base_acc = task.evaluate(base)["accuracy"]
        print(f"{model_name}: accuracy {base_acc:.4f} ({time.perf_counter() - t0:.0f} s to load / train)",
              file=sys.stderr)
        for batch in args.batches:
            x = task.calibration_batches(zm, 1, batch)[0]  # real training images, [batch, 1, 8, 8]
            base_prof = measure.profile(base, x)
            for name in args.arms:
                row = run_arm(model_name, name, batch, base, zm, task, x, args)
                row["dense"] = {"macs": base_prof.macs, "params": sum(p.numel() for p in base.parameters()),
                                "accuracy": base_acc}
                rows.append(row)
    isa = int8_isa()
    doc = {"date": datetime.date.today().isoformat(), "cpu": isa.cpu_model,
           "machine": f"{platform.machine()}, {os.cpu_count()} cores, 1 thread, torch {torch.__version__}",
           "command": "PYTHONPATH=src python benchmarks/lowrank_cnn.py " + " ".join(sys.argv[1:]),
           "models": {"digits-cnn": "zoo:digits-cnn", "digits-resnet": f"benchmarks/lowrank_cnn.py digits_resnet, "
                      f"trained {RESNET_TRAIN}"}, "test_split": "digits 450 images", "dense_accuracy": dense_acc,
           "fine_tune": {"kind": "distill.logits", "steps": args.steps, "batch": 64, "lr": args.lr},
           "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(markdown(doc))


def markdown(doc: dict[str, Any]) -> str:
    lines = [f"dense accuracy {doc['dense_accuracy']}; {doc['cpu']}, {doc['date']}", "",
             "| model | arm | serve batch | layers kept / declined | MACs dense -> gated | params | whole-model speed-up gated "
             "(p25-p75) | ungated | acc factorized | acc after fine-tune |", "|---|---|---:|---|---|---|---|---|---:|---:|"]
    for r in doc["rows"]:
        kept = [x["layer"] for x in r["layers"] if x["kept"] == "factorized"]
        dec = [x["layer"] for x in r["layers"] if x["kept"] == "dense"]
        g, u = r["gated"], r["ungated"]
        lines.append(f"| {r['model']} | {r['arm']} | {r['serve_batch']} | {', '.join(kept) or '-'} / {', '.join(dec) or '-'} | "
                     f"{r['dense']['macs']:,} -> {g['macs']:,} | {r['dense']['params']:,} -> {g['params']:,} | "
                     f"{g['speedup']}x ({g['speedup_p25']}-{g['speedup_p75']}) | {u['speedup']}x "
                     f"(MACs {u['macs']:,}, acc {u['acc_factorized']:.4f}) | {r['acc_factorized']:.4f} | "
                     f"{r['acc_finetuned']:.4f} |")
    lines += ["", "| model | arm | serve batch | layer | ranks | weight error | dense ms | factorized ms | ratio | kept |",
              "|---|---|---:|---|---|---:|---:|---:|---:|---|"]
    for r in doc["rows"]:
        for x in r["layers"]:
            ranks = x.get("ranks", x.get("rank", "-"))
            lines.append(f"| {r['model']} | {r['arm']} | {r['serve_batch']} | {x['layer']} | {ranks} | {x.get('error', '-')} | "
                         f"{x.get('dense_ms', '-')} | {x.get('factorized_ms', '-')} | {x.get('ratio', '-')} | "
                         f"{x['kept'] if x['kept'] != 'skipped' else 'skipped: ' + x['reason']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
