"""Issue 18, must-show 5: LayerDrop-trained MiniLM pruned to 3 blocks versus a plain 3-block student
trained for the same number of steps, on STS-B.

Usage::

    SLIMKIT_DATA=../shared/data HF_HUB_OFFLINE=1 python benchmarks/layerdrop_minilm.py [--steps 500] [--p 0.5]
    python benchmarks/layerdrop_minilm.py --smoke   # plumbing only: 2 steps, no scoring, no result file

Arms (zoo:minilm-l6, 6 blocks; the teacher is fp32 MiniLM; the same data, optimizer, LR schedule,
seed and number of optimizer steps ``N`` for every arm):

- **layerdrop**: ``train.layerdrop`` (every block skipped with probability ``p`` per step, the
  objective ``distill.embedding``: 1 - cos of the pooled embedding against the teacher,
  ``cache_teacher``) for ``N`` steps, then ``prune.layers keep_every: 2`` (keep blocks 1, 3, 5:
  Fan et al.'s "every other layer"), **no** further training;
- **plain**: ``prune.layers keep_every: 2`` first, then ``distill.embedding`` for the same ``N``
  steps with the same options.

- **half**: ``train.layerdrop`` for ``N/2`` steps, ``prune.layers keep_every: 2``, then
  ``distill.embedding`` for the other ``N/2`` steps on the next batches (the same budget split).

All take ``N`` optimizer steps (length-bucketed batches of up to 64 sentences) from the STS-B task's unlabelled corpus. At
``p = 0.5`` a LayerDrop step runs 3 of the 6 blocks on average, so the two arms also cost about
the same compute (their wall-clock seconds are reported). Also reported: the LayerDrop model
with all 6 blocks (what the training did to the full model), and ``prune.layers`` with no
training at all. STS-B dev and test Spearman x100 with the task's embedding and scoring code;
settings were fixed before the run (``p`` from Fan et al.'s advice to train with a higher rate
when pruning more), not chosen on test.

Writes ``benchmarks/results/layerdrop_minilm.json`` in the generic form make_results.py renders.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

import slimkit
from slimkit import zoo
from slimkit.core import Context, Recipe
from slimkit.core.cpu import int8_isa

sys.path.insert(0, str(Path(__file__).parent))
from stsb_splits import score  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "layerdrop_minilm.json"
PRUNE = {"kind": "prune.layers", "with": {"keep_every": 2}}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def loop_options(steps: int, lr: float) -> dict[str, Any]:
    """The loop options both arms train with."""
    return {"steps": steps, "lr": lr, "warmup": steps // 20, "dropout": 0.0, "seed": 0}


def run(name: str, steps: list[dict[str, Any]], zm: Any, ctx: Context, smoke: bool,
        start: torch.nn.Module | None = None) -> dict[str, Any]:
    """Run ``steps`` on ``start`` (default: fp32 MiniLM); the row, with the model under ``model``."""
    log(f"{name}: {[s['kind'] for s in steps]}")
    t0 = time.perf_counter()
    model = Recipe.from_dict({"name": name, "steps": steps}).run(zm.model if start is None else start, ctx)
    seconds = round(time.perf_counter() - t0, 1)
    recs = slimkit.records(model)
    row = {"name": name, "chain": [r.kind for r in recs], "seconds": seconds,
           "blocks": len(model.get_submodule("encoder.encoder.layer")),
           "summaries": {r.kind: r.summary for r in recs}}
    row["stsb"] = {} if smoke else {s: round(score(model, zm.tokenizer, s), 2) for s in ("dev", "test")}
    log(f"{name}: {row['stsb']} in {seconds} s; {row['summaries']}")
    row["model"] = model
    return row


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--p", type=float, default=0.5)
    ap.add_argument("--drop-schedule", choices=["uniform", "linear"], default="uniform")
    ap.add_argument("--lr", type=float, default=6e-4)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--smoke", action="store_true", help="check the plumbing: 2 steps, no scoring, no result file")
    args = ap.parse_args(argv)
    steps = 2 if args.smoke else args.steps
    cmd = ("python benchmarks/layerdrop_minilm.py " + " ".join(argv)).strip()
    torch.manual_seed(0)
    zm = zoo.load("zoo:minilm-l6")
    task = zoo.get_task("stsb")
    corpus = task.unlabeled_batches(zm, args.batch, seed=0)
    data = list(corpus)[:steps]  # each arm sees these batches once, in this order; the teacher cache covers them
    log(f"corpus: {len(list(corpus))} batches of {args.batch}; training on the first {len(data)}")
    ctx = Context(example_inputs=zm.example_inputs(1), unlabeled_data=data, teacher=zm.model, progress=False, seed=0)
    loop = loop_options(steps, args.lr)
    layerdrop = {"kind": "train.layerdrop", "with": {**loop, "p": args.p, "drop_schedule": args.drop_schedule,
                                                      "objective": "embedding",
                                                      "objective_options": {"cache_teacher": True}}}
    distill = {"kind": "distill.embedding", "with": {**loop, "cache_teacher": True}}

    half = max(1, steps // 2)
    ld_half = {"kind": "train.layerdrop", "with": {**layerdrop["with"], **loop_options(half, args.lr)}}
    distill_half = {"kind": "distill.embedding", "with": {**distill["with"], **loop_options(half, args.lr)}}
    ctx_second = dataclasses.replace(ctx, unlabeled_data=data[half:])  # the half arm's second half: the next batches
    labels = {"fp32": "fp32 MiniLM (teacher)",
              "layerdrop_3": f"train.layerdrop p={args.p} {args.drop_schedule}, {steps} steps -> prune.layers keep_every 2",
              "plain_3": f"prune.layers keep_every 2 -> distill.embedding, {steps} steps",
              "pruned_untrained_3": "prune.layers keep_every 2, no training",
              "layerdrop_6": f"train.layerdrop p={args.p} {args.drop_schedule}, {steps} steps, all 6 blocks kept",
              "layerdrop_half_3": f"train.layerdrop p={args.p}, {half} steps -> prune.layers keep_every 2 -> "
                                  f"distill.embedding, {steps - half} steps"}
    train_steps = {"fp32": 0, "layerdrop_3": steps, "plain_3": steps, "pruned_untrained_3": 0, "layerdrop_6": steps,
                   "layerdrop_half_3": steps}
    rows: dict[str, dict[str, Any]] = {}

    def write() -> None:
        """Rewrite the result file with the rows finished so far (a cut run keeps them)."""
        if args.smoke:
            return
        doc = report(rows, labels, train_steps, steps, args, cmd)
        doc["options"] = {"layerdrop": layerdrop, "distill": distill, "prune": PRUNE, "layerdrop_half": ld_half,
                          "distill_half": distill_half}
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(json.dumps(doc, indent=1, default=str) + "\n")
        log(f"wrote {RESULTS}")

    rows["fp32"] = {"name": "fp32", "chain": [], "seconds": 0.0, "blocks": 6, "summaries": {},
                    "stsb": {} if args.smoke else {s: round(score(zm.model, zm.tokenizer, s), 2) for s in ("dev", "test")}}
    rows["layerdrop_6"] = run("layerdrop_6", [layerdrop], zm, ctx, args.smoke)
    # the same trained weights, then every other block dropped (no further training)
    rows["layerdrop_3"] = prune_row("layerdrop_3", rows["layerdrop_6"].pop("model"), zm, ctx, args.smoke)
    rows["layerdrop_3"]["seconds"] = rows["layerdrop_6"]["seconds"]
    write()
    rows["plain_3"] = run("plain_3", [PRUNE, distill], zm, ctx, args.smoke)
    rows["pruned_untrained_3"] = run("pruned_untrained_3", [PRUNE], zm, ctx, args.smoke)
    write()
    first = run("layerdrop_half_6", [ld_half], zm, ctx, smoke=True)  # not scored: an intermediate model
    rows["layerdrop_half_3"] = run("layerdrop_half_3", [PRUNE, distill_half], zm, ctx_second, args.smoke,
                                   start=first.pop("model"))
    rows["layerdrop_half_3"]["seconds"] = round(rows["layerdrop_half_3"]["seconds"] + first["seconds"], 1)
    write()
    if args.smoke:
        print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "model"} for k, v in rows.items()},
                         indent=1, default=str))


def prune_row(name: str, model: torch.nn.Module, zm: Any, ctx: Context, smoke: bool) -> dict[str, Any]:
    """``prune.layers keep_every 2`` on an already trained model, scored."""
    pruned = Recipe.from_dict({"name": "prune", "steps": [PRUNE]}).run(model, ctx)
    row = {"name": name, "chain": [r.kind for r in slimkit.records(pruned)],
           "blocks": len(pruned.get_submodule("encoder.encoder.layer")),
           "summaries": {r.kind: r.summary for r in slimkit.records(pruned)},
           "stsb": {} if smoke else {s: round(score(pruned, zm.tokenizer, s), 2) for s in ("dev", "test")}}
    log(f"{name}: {row['stsb']}")
    return row


def report(rows: dict[str, dict[str, Any]], labels: dict[str, str], train_steps: dict[str, int], steps: int,
           args: argparse.Namespace, cmd: str) -> dict[str, Any]:
    """The generic result document (title / command / summary / tables / notes) of the rows so far."""
    fp32 = rows["fp32"]["stsb"]["test"]
    order = [k for k in ("fp32", "layerdrop_3", "plain_3", "layerdrop_half_3", "pruned_untrained_3", "layerdrop_6")
             if k in rows]
    table = [[labels[k], rows[k]["blocks"], rows[k]["stsb"]["dev"], rows[k]["stsb"]["test"],
              round(rows[k]["stsb"]["test"] - fp32, 2), train_steps[k], rows[k]["seconds"]] for k in order]
    ld = rows["layerdrop_3"]["stsb"]["test"]
    summary = (f"Same training budget: {steps} optimizer steps of up to {args.batch} sentences (distill.embedding, "
               f"lr {args.lr}, cache_teacher, the STS-B task's unlabelled corpus) for each arm; 3 blocks kept "
               f"(1, 3, 5). STS-B test: LayerDrop then prune {ld:.2f}")
    if "plain_3" in rows:
        plain = rows["plain_3"]["stsb"]["test"]
        summary += f", plain 3-block student {plain:.2f} (LayerDrop {ld - plain:+.2f})"
    if "layerdrop_half_3" in rows:
        summary += f", half LayerDrop + half distillation {rows['layerdrop_half_3']['stsb']['test']:.2f}"
    skip = rows["layerdrop_6"]["summaries"]["train.layerdrop"]
    summary += (f"; fp32 {fp32:.2f}. The LayerDrop model with all 6 blocks: {rows['layerdrop_6']['stsb']['test']:.2f}. "
                f"Observed skip rate {skip['skip_rate']} (expected {skip['expected_skip_rate']}).")
    return {
        "title": "MiniLM-L6: LayerDrop training then prune.layers to 3 blocks vs a plain 3-block student (STS-B)",
        "command": cmd, "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "cpu": int8_isa().cpu_model, "int8_isa": int8_isa().to_dict(), "summary": summary,
        "tables": [{"caption": "STS-B Spearman x100 (dev, test); optimizer steps per arm; seconds = training "
                               "wall clock on a shared 2-core machine (indicative only)",
                    "columns": ["model", "blocks", "dev", "test", "test - fp32", "train steps", "train seconds"],
                    "rows": table}],
        "notes": ["The LayerDrop arm is pruned after training with no further step: its 3-block model had the "
                  "same number of optimizer steps as the plain arm, and at p=0.5 about the same block evaluations "
                  "(3 of 6 blocks per step on average).",
                  "The half arm splits the same budget: LayerDrop on the first half of the batches, prune, then "
                  "distill.embedding on the second half.",
                  "LayerDrop needs no rescaling at inference (a skipped block is the identity), so the 6-block row "
                  "is the trained model as it is.",
                  "One seed (0) per arm, not repeated: the run-to-run spread of either arm was not measured."],
        "rows": {k: {kk: vv for kk, vv in v.items() if kk != "model"} for k, v in rows.items()},
    }


if __name__ == "__main__":
    main(sys.argv[1:])
