"""Speed versus sequence length (128 to 4,096 tokens, batch 1) of MiniLM and its converted attentions.

Issue 18, must-show 1. The original ``zoo:minilm-l6`` gets its 512 learned positions
extended to the longest length by copying (:func:`slimkit.attention.positions.extend_positions`,
Longformer's choice; speed does not depend on the embedding values). Each converted
attention (``--kinds``, taken from the registry by name; a kind this checkout does not
register is skipped and noted) is applied to that extended model and timed against it
with :func:`slimkit.measure.compare`: paired, interleaved rounds (A,B then B,A), median of
per-round medians, at every length. Eager PyTorch, fp32 (what ``slimkit.save`` ships
and ``restore`` serves; no export row).

Two tables: the whole sentence embedder (what a user runs), and ONE attention module alone
(the part a conversion changes). The whole model cannot speed up more than
``1 / (share of time outside attention)`` (Amdahl: MiniLM's Q/K/V/output projections and
FFN are O(n) and stay), so the module table shows the O(n^2) -> O(n) change itself.

The input is real text: the STS-B test sentences joined into one document and tokenised
without truncation, cut to ``n`` tokens between [CLS] and [SEP].

    python benchmarks/attention_scaling.py                      # full run (take the heavy lock)
    python benchmarks/attention_scaling.py --kinds attention.linear --merge   # add a kind to the file
    python benchmarks/attention_scaling.py --smoke              # plumbing: tiny lengths, no files
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

import slimkit
from slimkit import zoo
from slimkit.attention.positions import extend_positions
from slimkit.core import ConfigError, config_class
from slimkit.core.cpu import int8_isa
from slimkit.measure import compare, profile

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_OPTIONS: dict[str, dict[str, Any]] = {
    "attention.window": {"window": 64, "global_tokens": [0]},
    "attention.linformer": {"k": 128},          # max_len: the extended table (the longest length)
    "attention.linear": {},
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def long_text_ids(tokenizer: Any, n_max: int) -> torch.Tensor:
    """[n_max] token ids of real text: STS-B test sentences joined, [CLS] ... [SEP]."""
    path = Path(os.environ.get("SLIMKIT_DATA", "/work/shared/data")) / "stsb" / "test.tsv"
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    text = " ".join(s for r in rows for s in (r["sentence1"], r["sentence2"]))
    hf = tokenizer.hf
    body = hf(text, add_special_tokens=False)["input_ids"][: n_max - 2]
    if len(body) < n_max - 2:
        raise SystemExit(f"STS-B test has only {len(body)} tokens, fewer than {n_max}")
    return torch.tensor([hf.cls_token_id, *body, hf.sep_token_id])


def batch_of(ids: torch.Tensor, n: int) -> dict[str, torch.Tensor]:
    """Batch-1 input of the first ``n - 1`` tokens plus [SEP]."""
    x = torch.cat([ids[: n - 1], ids[-1:]])[None]  # [1, n]
    return {"input_ids": x, "attention_mask": torch.ones_like(x)}


def attention_input(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The hidden states layer 0's attention sees (the embeddings' output) for ``inputs``."""
    with torch.no_grad():
        return model.encoder.embeddings(input_ids=inputs["input_ids"])  # [1, n, 384]


def row_for(kind: str, n: int, whole: Any, module: Any, macs: tuple[int, int] | None) -> dict[str, Any]:
    return {"kind": kind, "n": n,
            "orig_ms": whole.median_a_ms, "conv_ms": whole.median_b_ms, "speedup": whole.speedup,
            "speedup_p25": whole.speedup_p25, "speedup_p75": whole.speedup_p75,
            "attn_orig_ms": module.median_a_ms, "attn_conv_ms": module.median_b_ms, "attn_speedup": module.speedup,
            "attn_speedup_p25": module.speedup_p25, "attn_speedup_p75": module.speedup_p75,
            "macs_orig": macs[0] if macs else None, "macs_conv": macs[1] if macs else None}


def slope_ms_per_1k(points: list[tuple[int, float]]) -> float:
    """Least-squares slope of latency over length, in ms per 1,000 tokens."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return 1000.0 * sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else float("nan")


def summarise(rows: list[dict[str, Any]], kinds: list[str], lengths: list[int]) -> dict[str, Any]:
    """Per kind: speed-up at the longest length, growth from the second-longest, per-token slopes."""
    out: dict[str, Any] = {}
    big = [n for n in lengths if n >= 1024] or lengths
    orig_pts = [(r["n"], r["orig_ms"]) for r in rows if r["kind"] == kinds[0] and r["n"] in big]
    out["original"] = {"slope_ms_per_1k_tokens": slope_ms_per_1k(orig_pts)}
    for kind in kinds:
        mine = {r["n"]: r for r in rows if r["kind"] == kind}
        if not mine:
            continue
        top, prev = lengths[-1], lengths[-2] if len(lengths) > 1 else lengths[-1]
        out[kind] = {
            "speedup_at_max": mine[top]["speedup"], "attn_speedup_at_max": mine[top]["attn_speedup"],
            "growth_last_doubling": mine[top]["conv_ms"] / mine[prev]["conv_ms"],
            "orig_growth_last_doubling": mine[top]["orig_ms"] / mine[prev]["orig_ms"],
            "slope_ms_per_1k_tokens": slope_ms_per_1k([(n, mine[n]["conv_ms"]) for n in big if n in mine]),
        }
    return out


def plot(rows: list[dict[str, Any]], kinds: list[str], path: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no plot"
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, (o, c, title) in zip(axes, [("orig_ms", "conv_ms", "whole MiniLM embedder"),
                                        ("attn_orig_ms", "attn_conv_ms", "one attention module")]):
        first = [r for r in rows if r["kind"] == kinds[0]]
        ax.plot([r["n"] for r in first], [r[o] for r in first], "k-o", label="original (dense SDPA)")
        for kind in kinds:
            mine = [r for r in rows if r["kind"] == kind]
            if mine:
                ax.plot([r["n"] for r in mine], [r[c] for r in mine], "-o", label=kind)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length (tokens, batch 1)")
        ax.set_ylabel("latency, ms (median)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[128, 256, 512, 1024, 2048, 4096])
    ap.add_argument("--kinds", nargs="+", default=list(DEFAULT_OPTIONS))
    ap.add_argument("--options", default="{}", help='JSON: kind -> options overriding the defaults, '
                    'e.g. \'{"attention.window": {"window": 32}}\'')
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--macs-at", type=int, nargs="*", default=[512, 4096], help="lengths to profile MACs at")
    ap.add_argument("--name", default="attention_scaling")
    ap.add_argument("--merge", action="store_true",
                    help="keep the other kinds' rows of an existing result file (same lengths) and add/replace these")
    ap.add_argument("--smoke", action="store_true", help="plumbing only: lengths 64 128, 1 round, no files")
    args = ap.parse_args(argv)
    if args.smoke:
        args.lengths, args.rounds, args.macs_at = [64, 160], 1, [160]
    lengths = sorted(args.lengths)
    options = {k: dict(v) for k, v in DEFAULT_OPTIONS.items()}
    for k, v in json.loads(args.options).items():
        options.setdefault(k, {}).update(v)
    cmd = ("python benchmarks/attention_scaling.py " + " ".join(argv)).strip()
    torch.set_num_threads(args.threads)

    zm = zoo.load("zoo:minilm-l6")
    n_max = max(lengths[-1], 512)
    orig = extend_positions(zm.model, n_max, mode="copy").eval()
    ids = long_text_ids(zm.tokenizer, n_max)
    notes: list[str] = []
    converted: dict[str, torch.nn.Module] = {}
    for kind in args.kinds:
        try:
            cls = config_class(kind)
        except ConfigError:
            notes.append(f"{kind}: not registered in this checkout, skipped")
            log(notes[-1])
            continue
        opts = dict(options.get(kind, {}))
        if kind == "attention.linformer":
            opts.setdefault("max_len", n_max)
        converted[kind] = slimkit.apply(orig, cls.from_dict(opts)).eval()
        options[kind] = opts
        log(f"{kind} {opts}: converted")
    kinds = list(converted)
    if not kinds:
        raise SystemExit("no kind to time")

    rows: list[dict[str, Any]] = []
    for n in lengths:
        x = batch_of(ids, n)
        h = attention_input(orig, x)
        iters = max(1, min(8, 1024 // n))
        for kind in kinds:
            conv = converted[kind]
            with torch.no_grad():
                whole = compare(orig, conv, x, rounds=args.rounds, iters_per_round=iters, warmup=1,
                                threads=args.threads, settle=1 if n <= 1024 else 0)
                a_mod = orig.encoder.encoder.layer[0].attention.self
                b_mod = conv.encoder.encoder.layer[0].attention.self
                module = compare(a_mod, b_mod, h, rounds=args.rounds, iters_per_round=max(1, min(20, 4096 // n)),
                                 warmup=1, threads=args.threads)
            macs = None
            if n in args.macs_at:
                macs = (profile(orig, x).macs, profile(conv, x).macs)
            rows.append(row_for(kind, n, whole, module, macs))
            r = rows[-1]
            log(f"n={n} {kind}: whole {r['orig_ms']:.1f} -> {r['conv_ms']:.1f} ms ({r['speedup']:.2f}x, "
                f"{r['speedup_p25']:.2f}-{r['speedup_p75']:.2f}); attention module {r['attn_orig_ms']:.2f} -> "
                f"{r['attn_conv_ms']:.2f} ms ({r['attn_speedup']:.2f}x)" + (f"; MACs {macs[0]:,} -> {macs[1]:,}" if macs else ""))

    commands = [cmd]
    path = RESULTS / f"{args.name}.json"
    if args.merge and path.is_file() and not args.smoke:
        # each kind is paired with its own timing of the original, so runs of different kinds combine
        old = json.loads(path.read_text())
        if old.get("lengths") != lengths:
            raise SystemExit(f"--merge: {path} was measured at {old.get('lengths')}, not {lengths}")
        keep = [k for k in old.get("options", {}) if k not in kinds]
        rows = [r for r in old["rows"] if r["kind"] in keep] + rows
        options.update({k: old["options"][k] for k in keep})
        kinds = keep + kinds
        commands = [c for c in old.get("commands", [old.get("command")]) if c] + [cmd]
        notes = [x for x in old.get("run_notes", []) if not any(x.startswith(k + ":") for k in kinds)] + notes
    summary = summarise(rows, kinds, lengths)
    isa = int8_isa()
    table_whole = {"caption": "whole MiniLM sentence embedder, batch 1, eager fp32: median ms (paired ratio, p25-p75)",
                   "columns": ["tokens", "original ms"] + [f"{k} ms (speed-up)" for k in kinds],
                   "rows": []}
    table_attn = {"caption": "one attention module (layer 0 self-attention) alone: median ms (speed-up)",
                  "columns": ["tokens", "original ms"] + [f"{k} ms (speed-up)" for k in kinds], "rows": []}
    for n in lengths:
        by = {r["kind"]: r for r in rows if r["n"] == n}
        first = by[kinds[0]]
        table_whole["rows"].append([n, round(first["orig_ms"], 1)] + [
            f"{by[k]['conv_ms']:.1f} ({by[k]['speedup']:.2f}x, {by[k]['speedup_p25']:.2f}-{by[k]['speedup_p75']:.2f})"
            for k in kinds])
        table_attn["rows"].append([n, round(first["attn_orig_ms"], 2)] + [
            f"{by[k]['attn_conv_ms']:.2f} ({by[k]['attn_speedup']:.2f}x)" for k in kinds])
    table_slope = {"caption": "growth: per-1k-token latency slope (least squares over >= 1,024 tokens) and the "
                              "last doubling's time ratio (2 = linear, 4 = quadratic)",
                   "columns": ["model", "ms per 1k tokens", "time ratio at the last doubling"],
                   "rows": [["original", round(summary["original"]["slope_ms_per_1k_tokens"], 1),
                             round(summary[kinds[0]]["orig_growth_last_doubling"], 2)]]
                   + [[k, round(summary[k]["slope_ms_per_1k_tokens"], 1), round(summary[k]["growth_last_doubling"], 2)]
                      for k in kinds]}
    macs_rows = []
    for n in lengths:
        by = {r["kind"]: r for r in rows if r["n"] == n and r["macs_orig"]}
        if by:
            anyr = next(iter(by.values()))
            macs_rows.append([n, round(anyr["macs_orig"] / 1e9, 2)] + [
                round(by[k]["macs_conv"] / 1e9, 2) if k in by else None for k in kinds])
    table_macs = {"caption": "GMACs of one forward (slimkit.measure.profile)",
                  "columns": ["tokens", "original"] + list(kinds), "rows": macs_rows}
    top = lengths[-1]
    head = ", ".join(f"{k} {summary[k]['speedup_at_max']:.2f}x whole / {summary[k]['attn_speedup_at_max']:.2f}x "
                     f"attention" for k in kinds)
    out = {
        "title": "Attention scaling: speed versus sequence length (MiniLM, batch 1)",
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {args.threads} threads, torch {torch.__version__}",
        "cpu": isa.cpu_model, "int8_isa": isa.to_dict(), "threads": args.threads, "command": " ; ".join(commands),
        "commands": commands, "run_notes": notes,
        "options": {k: options[k] for k in kinds}, "lengths": lengths, "rows": rows, "headline": summary,
        "summary": (f"At {top} tokens (speed-up of the converted model over the original, paired medians): {head}. "
                    "Eager PyTorch fp32, positions extended by copying."),
        "tables": [table_whole, table_attn, table_slope, table_macs],
        "notes": notes + [
            "Runtime: eager PyTorch fp32 (slimkit.save / restore serve this); no export row.",
            "Original: dense SDPA (transformers' default attention) with 512 positions copied to the longest length; "
            "converted kinds are applied to that extended model and not distilled (speed only).",
            "Whole-model speed-up is bounded by the O(n) projections and FFN that every variant keeps (Amdahl).",
        ],
    }
    if args.smoke:
        print(json.dumps(out["summary"]))
        print(json.dumps(out["tables"], indent=1)[:3000])
        return
    RESULTS.mkdir(exist_ok=True)
    note = plot(rows, kinds, RESULTS / f"{args.name}.png")
    if note:
        out["notes"].append(note)
    path.write_text(json.dumps(out, indent=1) + "\n")
    log(f"wrote {RESULTS / (args.name + '.json')}")
    print(out["summary"])


if __name__ == "__main__":
    main(sys.argv[1:])
