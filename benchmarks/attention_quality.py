"""Issue 18, must-show 2: MiniLM's attention converted, distilled back, scored on STS-B against fp32.

Usage::

    SLIMKIT_DATA=../shared/data HF_HUB_OFFLINE=1 python benchmarks/attention_quality.py \\
        [--kinds linformer favor elu] [--steps 400] [--append] [--smoke]

For each conversion in ``--kinds`` the chain is: the conversion step on every self-attention
module of ``zoo:minilm-l6`` (a preset name below, or ``KIND`` / ``KIND:{json options}`` for any
registered kind, e.g. ``attention.window:{"window": 32}``), then ``distill.embedding`` (1 - cos of
the pooled embedding against fp32 MiniLM, ``dropout: 0``, lr 6e-4, the STS-B
task's unlabelled corpus: the same options and steps for every conversion). STS-B dev and test
(Spearman x100, the task's embedding and scoring code, inputs up to 128 tokens) are reported for
the converted model before distillation and for the distilled model after ``slimkit.save`` ->
``slimkit.restore`` (the records replay the conversion). fp32: 81.03 test.

Writes ``benchmarks/results/attention_quality.json`` in the generic form
(``title / command / summary / tables / notes``), rewritten after every conversion so a cut
run keeps what finished; ``--append`` keeps rows of other conversions already there.
``--smoke``: 3 distillation steps, 200 dev/test pairs, nothing written (checks the plumbing).
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
from slimkit import zoo
from slimkit.app.pipeline import context_for, load_artifact
from slimkit.core import Recipe
from slimkit.core.cpu import int8_isa
from slimkit.zoo.data import read_stsb
from slimkit.zoo.task_base import row_cosine, spearman
from slimkit.zoo.text_tasks import embed

RESULTS = Path(__file__).parent / "results" / "attention_quality.json"
FP32_TEST = 81.03
PRESETS: dict[str, dict[str, Any]] = {
    # k = 64 slots over MiniLM's 128-token inputs: pooling init averages pairs of positions
    "linformer": {"kind": "attention.linformer", "with": {"k": 64, "max_len": 128}},
    "favor": {"kind": "attention.linear", "with": {"feature_map": "favor", "features": 128, "seed": 0}},
    "elu": {"kind": "attention.linear", "with": {"feature_map": "elu"}},
    "window": {"kind": "attention.window", "with": {"window": 16, "global_tokens": [0]}},
}
DISTILL = {"lr": 0.0006, "dropout": 0.0}  # no cache_teacher: it runs the teacher over the whole corpus first


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def step_for(spec: str) -> tuple[str, dict[str, Any]]:
    """``(row name, recipe step)`` of one ``--kinds`` item: a preset, ``KIND`` or ``KIND:{json}``."""
    if spec in PRESETS:
        return spec, PRESETS[spec]
    kind, _, opts = spec.partition(":")
    return spec, {"kind": kind, "with": json.loads(opts) if opts else {}}


def stsb(model: torch.nn.Module, tokenizer: Any, split: str, limit: int | None) -> float:
    s1, s2, gold = read_stsb(split)
    if limit:
        s1, s2, gold = s1[:limit], s2[:limit], gold[:limit]
    texts = list(dict.fromkeys(s1 + s2))
    pos = {t: i for i, t in enumerate(texts)}
    emb = embed(model, tokenizer, texts)
    a, b = emb[torch.tensor([pos[t] for t in s1])], emb[torch.tensor([pos[t] for t in s2])]
    return round(100 * spearman(row_cosine(a, b).numpy(), gold), 2)


def scores(model: torch.nn.Module, zm: Any, limit: int | None) -> dict[str, float]:
    return {s: stsb(model, zm.tokenizer, s, limit) for s in ("dev", "test")}


def run(name: str, step: dict[str, Any], steps: int, zm: Any, task: Any, tmp: Path, limit: int | None) -> dict[str, Any]:
    log(f"{name}: {step}")
    converted = Recipe.from_yaml(json.dumps({"name": name, "steps": [step]})).run(zm.model)
    before = scores(converted, zm, limit)
    log(f"{name} before distillation: {before}")
    ctx = context_for(zm, task, seed=0, progress=False)
    distill = {"kind": "distill.embedding", "with": {"steps": steps, "warmup": max(1, steps // 20), **DISTILL}}
    t0 = time.perf_counter()
    student = Recipe.from_yaml(json.dumps({"name": name, "steps": [distill]})).run(converted, ctx)
    seconds = round(time.perf_counter() - t0, 1)
    folder = tmp / name
    slimkit.save(student, folder, spec="zoo:minilm-l6")
    restored, _ = load_artifact(folder)  # replays the conversion record, loads weights strictly
    after = scores(restored, zm, limit)
    log(f"{name} after {steps} steps ({seconds} s): {after}")
    recs = slimkit.records(restored)
    return {"name": name, "step": step, "convert_summary": recs[0].summary, "before": before, "after": after,
            "distill_seconds": seconds, "params": sum(p.numel() for p in restored.parameters()),
            "delta_test_vs_fp32": round(after["test"] - FP32_TEST, 2)}


def tables(doc: dict[str, Any]) -> list[dict[str, Any]]:
    fp32 = doc["fp32"]
    rows = [["fp32 (softmax attention)", "", fp32["dev"], fp32["test"], "", "", 0.0]]
    for r in doc["rows"]:
        opts = ", ".join(f"{k}={v}" for k, v in r["step"]["with"].items())
        rows.append([r["name"], f"{r['step']['kind']} {opts}".strip(), r["before"]["dev"], r["before"]["test"],
                     r["after"]["dev"], r["after"]["test"], r["delta_test_vs_fp32"]])
    return [{"caption": f"STS-B Spearman x100 of zoo:minilm-l6 with converted attention, before and after "
                        f"{doc['distill_steps']} steps of distill.embedding (restored from disk)",
             "columns": ["conversion", "step", "dev at init", "test at init", "dev distilled", "test distilled",
                         "test - fp32"], "rows": rows}]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kinds", nargs="+", default=["linformer", "favor", "elu"],
                    help=f"presets ({', '.join(PRESETS)}), KIND or KIND:{{json options}}")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--append", action="store_true", help="keep rows of other conversions already in the JSON")
    ap.add_argument("--smoke", action="store_true", help="3 steps, 200 pairs, nothing written")
    args = ap.parse_args()
    steps, limit = (3, 200) if args.smoke else (args.steps, None)
    torch.manual_seed(0)
    zm = zoo.load("zoo:minilm-l6")
    task = zoo.get_task("stsb")
    isa = int8_isa()
    cmd = "python benchmarks/attention_quality.py " + " ".join(sys.argv[1:])
    doc: dict[str, Any] = {"title": "Efficient attention on MiniLM: STS-B after conversion and distillation",
                           "date": datetime.date.today().isoformat(), "machine": platform.machine(),
                           "cpu": isa.cpu_model, "int8_isa": isa.to_dict(), "threads": torch.get_num_threads(),
                           "command": cmd, "distill_steps": steps, "rows": []}
    if args.append and RESULTS.is_file():
        old = json.loads(RESULTS.read_text())
        doc["rows"], doc["fp32"] = old.get("rows", []), old.get("fp32")
        doc["runs"] = old.get("runs", [old.get("command")])
        if old.get("distill_steps") != steps:
            sys.exit(f"--append: the JSON's rows used {old.get('distill_steps')} steps, not {steps}")
    doc.setdefault("runs", []).append(cmd)
    if not doc.get("fp32"):
        doc["fp32"] = scores(zm.model, zm, limit)
        log(f"fp32: {doc['fp32']}")
    with tempfile.TemporaryDirectory() as d:
        for spec in args.kinds:
            name, step = step_for(spec)
            row = run(name, step, steps, zm, task, Path(d), limit)
            doc["rows"] = [r for r in doc["rows"] if r["name"] != name] + [row]
            best = max(doc["rows"], key=lambda r: r["after"]["test"])
            doc["summary"] = (f"Best conversion: {best['name']} at STS-B test {best['after']['test']} "
                              f"({best['delta_test_vs_fp32']:+.2f} vs fp32 {FP32_TEST}) after {steps} steps of "
                              "distill.embedding on the STS-B task's unlabelled corpus; goal: within 2 points.")
            doc["tables"] = tables(doc)
            doc["notes"] = [
                "Same distillation for every row: distill.embedding, lr 6e-4, dropout 0, teacher run live, "
                "batches of 64 unlabelled sentences (<= 64 tokens); scored at <= 128 tokens.",
                "'at init' is the converted model before any training (Linformer: E, F average-pool pairs "
                "of positions; FAVOR+: 128 orthogonal random features; elu+1: no softmax approximation).",
                "Distilled rows are scored after slimkit.save -> slimkit.restore (conversion replayed from the "
                "record, weights loaded strictly).",
                "CPU timings of distillation are shared-machine wall clock, not a speed claim."]
            if args.smoke:
                log(f"smoke: {row}")
                continue
            RESULTS.parent.mkdir(parents=True, exist_ok=True)
            RESULTS.write_text(json.dumps(doc, indent=2) + "\n")
            log(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
