"""Give the issue-17 result files (low-rank, sharing) the tables ``make_results.py`` renders.

    python benchmarks/issue17_tables.py     # rewrites the files in place (idempotent)

The benchmark scripts write their raw figures; this script derives ``title``, ``tables``,
``summary`` and the CPU label fields from them, so the page shows what the run measured and
nothing else. A file without an ``int8_isa`` label gets this machine's only when it records the
same CPU model (the runs are CPU-bound fp32; the label says where they ran).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def _label(doc: dict[str, Any]) -> None:
    if doc.get("int8_isa"):
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    from slimkit.core.cpu import int8_isa

    isa = int8_isa()
    if doc.get("cpu") in (None, isa.cpu_model):
        doc["int8_isa"] = isa.to_dict()


def _r(v: Any, nd: int = 2) -> Any:
    return round(v, nd) if isinstance(v, float) else v


def lowrank_minilm(doc: dict[str, Any]) -> None:
    rows = []
    for key in sorted(k for k in doc if k.startswith("before_recovery_budget_")):
        part = doc[key]
        for arm in ("plain", "data_aware"):
            row = part["rows"].get(arm)
            if row:
                rows.append([f"{arm.replace('_', '-')} SVD, budget {part['options'].get('budget')}, no recovery",
                             _r(row.get("linear_params_fraction"), 3), _r(row["dev"]), _r(row["test"])])
    after = doc.get("after_recovery", {})
    steps = {s["kind"]: s["with"] for s in after.get("recipe", {}).get("steps", [])}
    de = steps.get("distill.embedding", {})
    if after:
        rows.append([f"data-aware SVD + distill.embedding ({de.get('steps')} steps, lr {de.get('lr')})",
                     _r(after.get("linear_params_fraction"), 3), _r(after["dev"]), _r(after["test"])])
    fp32 = doc.get("fp32_test")
    speed = after.get("speed_b32_t128_eager", {})
    doc["title"] = "MiniLM-L6: lowrank.svd (plain and data-aware) + distillation, STS-B"
    doc["date"] = doc.get("date") or after.get("date")
    doc["command"] = after.get("command", "python benchmarks/lowrank_minilm.py")
    doc["summary"] = (f"fp32 STS-B test {fp32}. Targets: the six projections of every block. Paired eager "
                      f"speed-up of the recovered model vs fp32 at batch 32 x 128 tokens: "
                      f"{speed.get('speedup', float('nan')):.2f}x (p25-p75 {speed.get('speedup_p25', 0):.2f}-"
                      f"{speed.get('speedup_p75', 0):.2f}, {len(speed.get('round_ratios', []))} rounds); params "
                      f"{after.get('params_total', 0):,} vs {after.get('params_total_fp32', 0):,}.")
    doc["tables"] = [{"caption": "STS-B Spearman x100", "columns": ["model", "linear params kept", "dev", "test"],
                      "rows": [["fp32", 1.0, None, fp32], *rows]}]


def lowrank_cnn(doc: dict[str, Any]) -> None:
    rows = []
    for r in doc["rows"]:
        g, u, dn = r.get("gated", {}), r.get("ungated", {}), r.get("dense", {})
        kept = sum(1 for layer in r.get("layers", []) if layer.get("kept") == "factorized")
        rows.append([r["model"], r["arm"], r["serve_batch"], f"{kept}/{len(r.get('layers', []))}",
                     f"{dn.get('macs', 0) / max(g.get('macs', 1), 1):.2f}x",
                     f"{g.get('speedup', float('nan')):.2f}x", f"{u.get('speedup', float('nan')):.2f}x",
                     _r(dn.get("accuracy"), 4), _r(r.get("acc_factorized"), 4), _r(r.get("acc_finetuned"), 4)])
    ft = doc.get("fine_tune", {})
    doc["title"] = "CNNs on digits: lowrank.tucker / lowrank.cp with gate: latency"
    doc["summary"] = (f"Test split: {doc.get('test_split')}. Layers kept = factorized layers the latency gate kept "
                      f"(eager, at the serving batch). Fine-tune: {ft.get('kind')} {ft.get('steps')} steps. "
                      "Speed-ups are paired whole-model medians vs the dense model; 'ungated' swaps every layer.")
    doc["tables"] = [{"columns": ["model", "arm", "batch", "layers kept", "MACs fewer", "speed-up gated",
                                  "speed-up ungated", "acc dense", "acc factorized", "acc fine-tuned"],
                      "rows": rows}]


def minilm_embedding(doc: dict[str, Any]) -> None:
    rows = []
    for name, row in doc["rows"].items():
        if not isinstance(row, dict):  # e.g. "chosen": the name of the row dev picked
            continue
        st = row.get("stsb", {})
        rows.append([name, row.get("word_table_params"), row.get("file_bytes"), row.get("profile_bytes"),
                     _r(st.get("dev")), _r(st.get("test"))])
    a = doc.get("args", {})
    exact = f", exact_rows {a['exact_rows']}" if a.get("exact_rows") else ""
    exact += f", smoothing {a['smoothing']:g}" if a.get("smoothing", 1.0) != 1.0 else ""
    doc["title"] = f"MiniLM-L6 word embeddings: share.factorized_embedding (E={a.get('dim')}{exact}) + distillation"
    doc["summary"] = (f"distill.{a.get('objective', 'embedding')} {a.get('steps')} steps, lr {a.get('lr')}, "
                      f"batch {a.get('batch')}; headline: {json.dumps(doc.get('headline', {}))}")
    doc["tables"] = [{"columns": ["model", "word-table params", "file bytes", "profile bytes", "STS-B dev",
                                  "STS-B test"], "rows": rows}]


def minilm_share(doc: dict[str, Any]) -> None:
    fp = doc["fp32"]
    rows = [["fp32", "-", fp["params"], fp["file_bytes"], "1.00x", fp["stsb"].get("dev"), fp["stsb"].get("test")]]
    for r in doc["rows"]:
        for form in ("float", "fp16"):
            got = r[form]
            rows.append([r["name"], " -> ".join(got.get("chain", r["chain"])), got["params"], got["file_bytes"],
                         f"{fp['file_bytes'] / got['file_bytes']:.2f}x", got["stsb"].get("dev"),
                         got["stsb"].get("test")])
    d = doc.get("distill", {})
    doc["title"] = "MiniLM-L6: share.layers (3 groups of 2) vs the 3-block student, same distillation"
    doc["summary"] = (f"{d.get('kind')} {d.get('steps')} steps, lr {d.get('lr')}, dropout {d.get('dropout')}, "
                      f"cache_teacher, {d.get('data')}; every artifact saved, restored and scored (STS-B x100).")
    doc["tables"] = [{"columns": ["student", "chain", "params", "file bytes", "smaller than fp32", "STS-B dev",
                                  "STS-B test"], "rows": rows}]


CONVERTERS = {"lowrank_minilm.json": lowrank_minilm, "lowrank_cnn.json": lowrank_cnn,
              "minilm_share.json": minilm_share}


def convert(path: Path) -> bool:
    fn = CONVERTERS.get(path.name) or (minilm_embedding if path.name.startswith("minilm_embedding") else None)
    if fn is None:
        return False
    doc = json.loads(path.read_text())
    if fn is minilm_embedding and not isinstance(doc.get("rows"), dict):
        return False  # already in the generic form (e.g. --probe-smoothing)
    fn(doc)
    _label(doc)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return True


if __name__ == "__main__":
    for p in sorted(RESULTS.glob("*.json")):
        if convert(p):
            print(f"tables added to {p.name}", file=sys.stderr)
