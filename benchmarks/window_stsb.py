"""STS-B (dev and test Spearman x100) of MiniLM converted to sliding-window attention, NOT distilled.

How much a window costs in quality before any distillation, at the sentence lengths of
STS-B (most pairs are 10-30 tokens, so only small windows change anything; a window of
``w`` reaches ``w`` tokens on each side, plus the [CLS] global token). Every converted
model is saved and restored (the replay path) before scoring.

    python benchmarks/window_stsb.py --windows 2 4 8 16
    python benchmarks/window_stsb.py --smoke          # plumbing: one window, no file
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

import slimkit
from slimkit import zoo
from slimkit.attention.window import WindowAttention
from slimkit.core.cpu import int8_isa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stsb_splits import score  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--windows", type=int, nargs="+", default=[2, 4, 8, 16])
    ap.add_argument("--no-global", action="store_true", help="no [CLS] global token")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cmd = ("python benchmarks/window_stsb.py " + " ".join(argv)).strip()
    zm = zoo.load("zoo:minilm-l6")
    glob = () if args.no_global else (0,)
    if args.smoke:  # 40 pairs per split
        import stsb_splits

        real = stsb_splits.read_stsb
        stsb_splits.read_stsb = lambda split: tuple(x[:40] for x in real(split))
        args.windows = args.windows[:1]
    rows: list[list[Any]] = [["fp32 (dense attention)", "-", round(score(zm.model, zm.tokenizer, "dev"), 2),
                              round(score(zm.model, zm.tokenizer, "test"), 2)]]
    print(rows[-1], flush=True)
    for w in args.windows:
        conv = slimkit.apply(zm.model, WindowAttention(window=w, global_tokens=glob))
        with tempfile.TemporaryDirectory() as tmp:
            slimkit.save(conv, tmp)
            back = slimkit.restore(tmp)  # rebuilt from its spec, the swap replayed
        rows.append([f"attention.window window={w}", list(glob), round(score(back, zm.tokenizer, "dev"), 2),
                     round(score(back, zm.tokenizer, "test"), 2)])
        print(rows[-1], flush=True)
    if args.smoke:
        return
    isa = int8_isa()
    fp32 = rows[0][3]
    out = {
        "title": "Sliding-window attention on STS-B without distillation (MiniLM, 128-token inputs)",
        "date": datetime.date.today().isoformat(), "cpu": isa.cpu_model, "int8_isa": isa.to_dict(),
        "command": cmd,
        "summary": "Zero-shot conversion (no distillation): " + "; ".join(
            f"{r[0].split()[-1]} test {r[3]:.2f} ({r[3] - fp32:+.2f})" for r in rows[1:]) + f"; fp32 {fp32:.2f}.",
        "tables": [{"caption": "STS-B Spearman x100 (saved, restored, then scored)",
                    "columns": ["model", "global tokens", "dev", "test"], "rows": rows}],
        "notes": ["No distillation: the trained weights are used as they are; distil with distill.embedding "
                  "to recover (docs/attention.md).",
                  "STS-B sentences are short: a window of w tokens each side covers most of a sentence once w >= 16."],
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "attention_window_stsb.json").write_text(json.dumps(out, indent=1) + "\n")
    print(out["summary"])


if __name__ == "__main__":
    main(sys.argv[1:])
