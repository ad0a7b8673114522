"""Turn the JSON reports under benchmarks/results/ into the README's Markdown table.

Usage: python benchmarks/summarize.py pruning
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

R = Path(__file__).parent / "results"


def _load(name: str) -> dict | None:
    p = R / name
    return json.loads(p.read_text()) if p.is_file() else None


def _metric(rep: dict) -> tuple[str, float, float]:
    b, a = rep["before"].get("metrics", {}), rep["after"].get("metrics", {})
    for key in ("spearman_x100", "agreement", "accuracy"):
        if key in a:
            scale = 100.0 if key != "spearman_x100" else 1.0
            return key.replace("_x100", " x100"), b[key] * scale, a[key] * scale
    return "", 0.0, 0.0


def pruning() -> str:
    rows = ["| model | recipe | params | file bytes | MACs (b=1) | speed-up b=1 | speed-up b=32 | metric | before | after |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for rep_name, b1, b32 in (("pruning-minilm.json", "pruning-minilm-bench1.json", "pruning-minilm-bench32.json"),
                              ("pruning-effnet.json", "pruning-effnet-bench1.json", None)):
        rep = _load(rep_name)
        if rep is None:
            continue
        pb, pa = rep["before"]["profile"], rep["after"]["profile"]
        s1, s32 = _load(b1), _load(b32) if b32 else None
        key, mb, ma = _metric(rep)
        fmt = lambda s: f"{s['speedup']:.2f}x ({s['speedup_p25']:.2f}-{s['speedup_p75']:.2f})" if s else "n/a"  # noqa: E731
        rows.append(
            f"| {rep['model']} | {rep['recipe']['name']} | {pb['params_total'] / 1e6:.2f} M -> {pa['params_total'] / 1e6:.2f} M "
            f"| {pb['file_bytes'] / 2**20:.2f} -> {pa['file_bytes'] / 2**20:.2f} MiB | {pb['macs'] / 1e6:.0f} M -> {pa['macs'] / 1e6:.0f} M "
            f"| {fmt(s1)} | {fmt(s32)} | {key} | {mb:.2f} | {ma:.2f} |"
        )
    return "\n".join(rows)


COMPARE = (("compare_minilm.json", "zoo:minilm-l6", [("stsb", "STS-B x100", ".2f"), ("sst2", "SST-2 probe", ".3f")]),
           ("compare_efficientnet.json", "zoo:efficientnet-lite0",
            [("accuracy", "top-1 %", ".1f"), ("agreement", "agreement %", ".1f")]),
           ("compare_digits.json", "zoo:digits-cnn", [("accuracy", "accuracy", ".4f")]))


def compare() -> str:
    """README view of the comparison suite: one compact table per model (from compare_*.json)."""
    out = []
    for name, model, metrics in COMPARE:
        rep = _load(name)
        if rep is None:
            continue
        out += [f"**{model}** (`{rep['command']}`, {rep['date']}; {rep['machine']})", "",
                "| variant | MB | x smaller | speed-up b=1 | speed-up b=32 | " + " | ".join(h for _, h, _ in metrics) + " |",
                "|---|---|---|---|---|" + "---|" * len(metrics)]
        ref = rep["rows"][0]["file_bytes"]
        for r in rep["rows"]:
            lat = {int(k): v for k, v in r["latency"].items()}
            sp = [f"{lat[b]['speedup']:.2f}x" if b in lat else "-" for b in (1, 32)]
            mb = f"{r['file_bytes'] / 1e6:.3g}" if r["file_bytes"] else "-"
            small = f"{ref / r['file_bytes']:.1f}x" if r["file_bytes"] and ref else "-"
            ms = [format(r["metrics"][k], f) if k in r["metrics"] else "-" for k, _, f in metrics]
            label = f"**{r['name']}**" if r["who"] == "slimkit" else r["name"]
            out.append(f"| {label} | {mb} | {small} | {sp[0]} | {sp[1]} | " + " | ".join(ms) + " |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print({"pruning": pruning, "compare": compare}[sys.argv[1] if len(sys.argv) > 1 else "pruning"]())
