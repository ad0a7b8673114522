"""lowrank.svd on all-MiniLM-L6-v2 (issue 17, must-show 1): plain vs data-aware SVD, recovery, speed.

    SLIMKIT_DATA=... python benchmarks/lowrank_minilm.py before [--budget 0.59]
    SLIMKIT_DATA=... python benchmarks/lowrank_minilm.py recover DIR   (or: slimkit compress --model zoo:minilm-l6
        --recipe benchmarks/recipes/minilm-svd.yaml --task stsb --out DIR, which adds its report)
    SLIMKIT_DATA=... python benchmarks/lowrank_minilm.py after DIR [--rounds 10]

``before`` factorizes the six Linears of every encoder block (Q, K, V, attention output,
intermediate, output) with the recipe's options, once plain and once data-aware (whitened
by the inputs of 8 calibration batches of 32 STS-B train sentences, as ``compress --task
stsb`` feeds them), and scores both on STS-B dev and test with no recovery. ``after``
scores the recovered artifact of the recipe, checks the encoder's linear-layer parameter
fraction, and times the whole model against fp32 in PyTorch eager at batch 32 x 128
(paired, interleaved rounds, medians: :func:`slimkit.measure.compare`). Both write into
``benchmarks/results/lowrank_minilm.json`` (each phase its own key).
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
import yaml
from torch import nn

import slimkit
from slimkit import measure, zoo
from slimkit.app.pipeline import context_for, load_artifact
from slimkit.core import Recipe, config_class
from slimkit.core.cpu import int8_isa

sys.path.insert(0, str(Path(__file__).parent))
from stsb_splits import score  # noqa: E402

ROOT = Path(__file__).parent
RECIPE = ROOT / "recipes" / "minilm-svd.yaml"
RESULT = ROOT / "results" / "lowrank_minilm.json"
FP32_TEST = 81.03  # STS-B test Spearman x100 of zoo:minilm-l6 (docs/results.md)
BLOCK_LINEARS = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                 "intermediate.dense", "output.dense")


def linear_params(model: nn.Module) -> int:
    """Parameters (weights and biases) of everything inside the encoder blocks' six projections."""
    total = 0
    for name, module in model.named_modules():
        if ".layer." in name and name.endswith(BLOCK_LINEARS) and not name.endswith(".0") and not name.endswith(".1"):
            total += sum(p.numel() for p in module.parameters())
    return total


def svd_step() -> tuple[dict[str, Any], dict[str, Any]]:
    """The recipe's lowrank.svd step: its options and targets."""
    doc = yaml.safe_load(RECIPE.read_text())
    step = next(s for s in doc["steps"] if s["kind"] == "lowrank.svd")
    return dict(step["with"]), step.get("targets", {})


def _write(key: str, payload: dict[str, Any], argv: list[str]) -> None:
    doc = json.loads(RESULT.read_text()) if RESULT.is_file() else {}
    isa = int8_isa()
    doc.update({"cpu": isa.cpu_model, "machine": f"{platform.machine()}, torch {torch.__version__}, "
                f"{torch.get_num_threads()} threads", "recipe": str(RECIPE.relative_to(ROOT.parent)),
                "fp32_test": FP32_TEST})
    doc[key] = {**payload, "date": datetime.date.today().isoformat(),
                "command": "python benchmarks/lowrank_minilm.py " + " ".join(argv)}
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(payload, indent=2))


def before(args: argparse.Namespace, argv: list[str]) -> None:
    zm = zoo.load("zoo:minilm-l6")
    ctx = context_for(zm, zoo.get_task("stsb"), calib_batches=8, progress=False)
    options, targets = svd_step()
    if args.budget is not None:
        options["budget"] = args.budget
    dense = linear_params(zm.model)
    rows: dict[str, Any] = {"fp32": {"dev": score(zm.model, zm.tokenizer, "dev"), "test": FP32_TEST}}
    for label, aware in (("plain", False), ("data_aware", True)):
        t0 = time.perf_counter()
        cfg = config_class("lowrank.svd").from_dict({**options, "data_aware": aware})
        model = slimkit.apply(zm.model, cfg, slimkit.Targets.from_dict(targets), ctx)
        secs = time.perf_counter() - t0
        rec = slimkit.records(model)[-1]
        rows[label] = {"dev": score(model, zm.tokenizer, "dev"), "test": score(model, zm.tokenizer, "test"),
                       "linear_params_fraction": linear_params(model) / dense, "seconds": round(secs, 1),
                       "ranks": {k: v["rank"] for k, v in rec.data["layers"].items()},
                       "skipped": rec.data["skipped"]}
        print(label, {k: v for k, v in rows[label].items() if k not in ("ranks", "skipped")}, flush=True)
    _write(f"before_recovery_budget_{options.get('budget')}", {"options": options, "rows": rows}, argv)


def recover(args: argparse.Namespace, argv: list[str]) -> None:
    """The recipe's steps on zoo:minilm-l6 with the stsb task's data (what ``compress --task stsb``
    feeds them), saved to ``args.dir``, without compress's report evaluations and timing."""
    zm = zoo.load("zoo:minilm-l6")
    recipe = Recipe.load(str(RECIPE))
    ctx = context_for(zm, zoo.get_task("stsb"), calib_batches=8, progress=True)
    t0 = time.perf_counter()
    model = recipe.run(zm.model, ctx)
    slimkit.save(model, args.dir, spec="zoo:minilm-l6")
    print(f"recovered in {time.perf_counter() - t0:.0f} s -> {args.dir}", flush=True)


def after(args: argparse.Namespace, argv: list[str]) -> None:
    model, zm = load_artifact(Path(args.dir))
    dense = zm.model.eval()
    frac = linear_params(model) / linear_params(dense)
    dev, test = score(model, zm.tokenizer, "dev"), score(model, zm.tokenizer, "test")
    print(f"recovered: dev {dev:.2f} test {test:.2f} linear params {frac:.3f}", flush=True)
    x = zm.tokenizer.example(32, 128)
    res = measure.compare(dense, model.eval(), x, rounds=args.rounds, iters_per_round=3, warmup=2)
    recipe = Recipe.load(str(RECIPE)).to_dict()
    payload = {"dir": args.dir, "recipe": recipe, "dev": dev, "test": test, "test_minus_fp32": test - FP32_TEST,
               "linear_params_fraction": frac, "params_total": sum(p.numel() for p in model.parameters()),
               "params_total_fp32": sum(p.numel() for p in dense.parameters()),
               "speed_b32_t128_eager": res.to_dict()}
    _write("after_recovery", payload, argv)


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="phase", required=True)
    b = sub.add_parser("before")
    b.add_argument("--budget", type=float, help="override the recipe's budget")
    r = sub.add_parser("recover")
    r.add_argument("dir")
    a = sub.add_parser("after")
    a.add_argument("dir")
    a.add_argument("--rounds", type=int, default=10)
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    {"before": before, "recover": recover, "after": after}[args.phase](args, argv)


if __name__ == "__main__":
    main(sys.argv[1:])
