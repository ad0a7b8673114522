"""Issue 17, must-show 3: MiniLM with cross-layer sharing (``share.layers``) + distillation, against
fp32 and against the 3-block student of the same stored size (``prune.layers``).

Usage::

    SLIMKIT_DATA=../shared/data HF_HUB_OFFLINE=1 python benchmarks/minilm_share.py [--steps 2000] [--groups 3 2]

For each student the chain is: the shrink step (``share.layers groups=G`` or ``prune.layers
drop [0, 2, 4]``), then ``distill.embedding`` (1 - cos on the pooled embedding against fp32
MiniLM, ``cache_teacher``, ``dropout: 0``, lr 6e-4, the STS-B task's unlabelled corpus: the
same options and number of steps for every student), then ``quantize.cast float16`` on the
whole model. The float student and the fp16 one are each saved with ``slimkit.save``,
restored with ``slimkit.restore`` (the shared blocks are re-tied from the record) and scored
on STS-B dev and test (Spearman x100, the task's embedding and scoring code); the file bytes
of each saved ``model.safetensors`` are reported beside fp32's. The sharing ``init`` (mean of
the group's blocks, or its first or last block) is chosen on STS-B **dev** before distillation.

Writes ``benchmarks/results/minilm_share.json`` (rewritten after every student, so a cut run
keeps what finished).
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
from slimkit.app.pipeline import context_for, load_artifact
from slimkit.core import Recipe, Targets
from slimkit.core.cpu import int8_isa
from slimkit.quantize.ptq import CastQuant
from slimkit.share.layers import LayersShare

sys.path.insert(0, str(Path(__file__).parent))
from stsb_splits import score  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "minilm_share.json"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def splits(model: torch.nn.Module, zm: Any, which: tuple[str, ...] = ("dev", "test")) -> dict[str, float]:
    return {s: round(score(model, zm.tokenizer, s), 2) for s in which}


def saved(model: torch.nn.Module, folder: Path, zm: Any, which: tuple[str, ...] = ("dev", "test")) -> dict[str, Any]:
    """Save, restore (replaying the records) and score the restored model; bytes of the weights file."""
    slimkit.save(model, folder, spec="zoo:minilm-l6")
    restored, _ = load_artifact(folder)
    prof = measure.profile(restored, zm.example_inputs(1))
    return {"file_bytes": (folder / "model.safetensors").stat().st_size, "params": prof.params_total,
            "profile_bytes": prof.bytes_on_disk, "stsb": splits(restored, zm, which)}


def distill_yaml(shrink: dict[str, Any], steps: int) -> str:
    recipe = {"name": "share-bench", "steps": [shrink, {"kind": "distill.embedding", "with": {
        "steps": steps, "lr": 0.0006, "warmup": max(1, steps // 20), "dropout": 0.0, "cache_teacher": True}}]}
    return json.dumps(recipe)  # JSON is YAML


def run_student(name: str, shrink: dict[str, Any], steps: int, zm: Any, task: Any, tmp: Path) -> dict[str, Any]:
    log(f"{name}: {shrink}")
    ctx = context_for(zm, task, seed=0, progress=False)
    recipe = Recipe.from_yaml(distill_yaml(shrink, steps))
    t0 = time.perf_counter()
    student = recipe.run(zm.model, ctx)
    seconds = time.perf_counter() - t0
    recs = slimkit.records(student)
    row: dict[str, Any] = {"name": name, "chain": [shrink["kind"], "distill.embedding"], "shrink": shrink,
                           "shrink_summary": recs[0].summary, "distill_summary": recs[1].summary,
                           "seconds": round(seconds, 1)}
    row["float"] = saved(student, tmp / f"{name}-float", zm)
    log(f"{name} float: {row['float']}")
    half = slimkit.apply(student, CastQuant(dtype="float16"), Targets())
    row["fp16"] = saved(half, tmp / f"{name}-fp16", zm, ("test",))  # fp16 storage: test only (CPU time)
    row["fp16"]["chain"] = [shrink["kind"], "distill.embedding", "quantize.cast float16"]
    log(f"{name} fp16: {row['fp16']}")
    return row


def choose_init(zm: Any, groups: int) -> tuple[str, dict[str, dict[str, float]]]:
    """Score each init before distillation on STS-B dev; the best one is distilled."""
    got = {}
    for init in ("mean", "first", "last"):
        shared = slimkit.apply(zm.model, LayersShare(groups=groups, init=init), Targets())
        got[init] = {"dev": round(score(shared, zm.tokenizer, "dev"), 2)}
        log(f"groups={groups} init={init} before distillation: {got[init]}")
    return max(got, key=lambda k: got[k]["dev"]), got


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--groups", type=int, nargs="+", default=[3, 2])
    ap.add_argument("--init", choices=["mean", "first", "last"],
                    help="skip the dev probe of the init (use for later groupings once it was chosen)")
    ap.add_argument("--no-layers", action="store_true", help="skip the prune.layers 3-block student")
    ap.add_argument("--only-layers", action="store_true", help="only the prune.layers 3-block student (no fp32 row)")
    ap.add_argument("--results", type=Path, default=RESULTS, help="the JSON to write")
    ap.add_argument("--append", action="store_true", help="keep the rows of other students already in the JSON")
    args = ap.parse_args()
    torch.manual_seed(0)
    zm = zoo.load("zoo:minilm-l6")
    task = zoo.get_task("stsb")
    isa = int8_isa()
    doc: dict[str, Any] = {
        "date": datetime.date.today().isoformat(), "machine": platform.machine(), "cpu": isa.cpu_model,
        "threads": torch.get_num_threads(),
        "command": "python benchmarks/minilm_share.py " + " ".join(sys.argv[1:]),
        "distill": {"kind": "distill.embedding", "steps": args.steps, "lr": 0.0006, "dropout": 0.0,
                    "cache_teacher": True, "data": "stsb task unlabelled corpus"},
        "rows": []}
    out = args.results
    if args.append and out.is_file():
        old = json.loads(out.read_text())
        doc["rows"], doc["runs"] = old.get("rows", []), old.get("runs", [old.get("command")])
        doc["init_probe"] = old.get("init_probe", {})
        if "fp32" in old:
            doc["fp32"] = old["fp32"]
    doc.setdefault("runs", []).append(doc["command"])
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        log("fp32")
        fp32 = doc.get("fp32") or (None if args.only_layers else saved(zm.model, tmp / "fp32", zm))
        doc["fp32"] = fp32
        log(f"fp32: {fp32}")
        plan: list[tuple[str, dict[str, Any]]] = []
        init = args.init
        for g in [] if args.only_layers else args.groups:
            if init is None:  # chosen on dev for the first grouping, then reused
                init, probe = choose_init(zm, g)
                doc.setdefault("init_probe", {})[f"groups={g}"] = probe
            plan.append((f"share-{g}groups", {"kind": "share.layers", "with": {"groups": g, "init": init}}))
            if g == args.groups[0] and not args.no_layers:
                plan.append(("layers-3of6", {"kind": "prune.layers", "with": {"drop": [0, 2, 4]}}))
        if args.only_layers:
            plan.append(("layers-3of6", {"kind": "prune.layers", "with": {"drop": [0, 2, 4]}}))
        for name, shrink in plan:
            row = run_student(name, shrink, args.steps, zm, task, tmp)
            for kind in ("float", "fp16") if fp32 else ():
                row[kind]["x_smaller_than_fp32"] = round(fp32["file_bytes"] / row[kind]["file_bytes"], 2)
            doc["rows"] = [r for r in doc["rows"] if r["name"] != name] + [row]
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(doc, indent=2) + "\n")
            log(f"wrote {out}")


if __name__ == "__main__":
    main()
