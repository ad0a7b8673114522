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


if __name__ == "__main__":
    print({"pruning": pruning}[sys.argv[1] if len(sys.argv) > 1 else "pruning"]())
