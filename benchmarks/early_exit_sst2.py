"""Early exit (``dynamic.early_exit``) on an SST-2 classifier built on MiniLM: accuracy vs average speed-up at batch 1.

1. The classifier: zoo:minilm-l6's encoder + masked mean pooling + a linear head, fine-tuned
   (every weight) on SST-2 train through the one engine (``slimkit.train.train``). The zoo
   has no fine-tuned MiniLM classifier (``zoo:sst2-bilstm`` is a BiLSTM), so this builds one.
2. ``dynamic.early_exit``: 5 exit heads (after blocks 1-5), distilled from the final logits
   on SST-2 train sentences, backbone frozen.
3. Thresholds: every exit head's logits on SST-2 dev and test once (all blocks), the exit
   rule replayed offline for a grid of entropy thresholds; the operating threshold is the
   largest whose *dev* accuracy is within ``--dev-margin`` points of the full model's dev accuracy.
4. Timing on SST-2 test at batch 1 (one sentence per call, unpadded): for each reported
   threshold the full fine-tuned model and the early-exit model run on the same sentence,
   interleaved (order alternating), ``--reps`` times; per-sentence medians; average speed-up
   = total full time / total early-exit time over the test set. Accuracy of those timed runs
   is what the table reports.

Usage::

    python benchmarks/early_exit_sst2.py --smoke          # plumbing check, seconds, writes /tmp
    python benchmarks/early_exit_sst2.py                  # the real run (heavy: under /work/heavy.lock)

Writes ``benchmarks/results/early_exit_sst2.json`` (generic tables) and ``early_exit_sst2.png``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

import slimkit
from slimkit.core import Context
from slimkit.core.cpu import int8_isa
from slimkit.dynamic import EarlyExitDynamic, collect_exits
from slimkit.dynamic.exits import normalized_entropy
from slimkit.measure.latency import fixed_threads
from slimkit.train import TrainOptions, task_loss, train
from slimkit.zoo.data import read_sst2
from slimkit.zoo.minilm import SentenceEmbedder, TextTokenizer, load_hf_encoder, minilm_path

ROOT = Path(__file__).resolve().parent
RESULT = ROOT / "results" / "early_exit_sst2.json"
PLOT = ROOT / "results" / "early_exit_sst2.png"
MAX_LEN = 64


class MiniLMClassifier(nn.Module):
    """``forward(input_ids, attention_mask) -> logits [B, 2]``: MiniLM, masked mean pooling, Linear."""

    def __init__(self, pretrained: bool = True) -> None:
        super().__init__()
        if pretrained:
            encoder = load_hf_encoder(minilm_path())
        else:
            from transformers import AutoConfig, AutoModel

            encoder = AutoModel.from_config(AutoConfig.from_pretrained(str(minilm_path()), local_files_only=True),
                                            attn_implementation="sdpa")
        self.embedder = SentenceEmbedder(encoder, pooling="mean", normalize=False)
        self.head = nn.Linear(encoder.config.hidden_size, 2)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.embedder(input_ids, attention_mask))  # [B, 2]


def _loss(model: nn.Module, batch: Any) -> torch.Tensor:
    inputs, y = batch
    return nn.functional.cross_entropy(model(**inputs), y)


def train_batches(tok: TextTokenizer, n_batches: int, bs: int, seed: int) -> list[Any]:
    texts, labels = read_sst2("train")
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(texts), generator=g)[: n_batches * bs].tolist()
    out = []
    for i in range(n_batches):
        idx = order[i * bs:(i + 1) * bs]
        out.append((tok.encode([texts[j] for j in idx], MAX_LEN), torch.tensor([labels[j] for j in idx])))
    return out


def sorted_batches(tok: TextTokenizer, texts: list[str], bs: int = 64) -> tuple[list[Any], list[int]]:
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    return [tok.encode([texts[j] for j in order[i:i + bs]], MAX_LEN) for i in range(0, len(order), bs)], order


@torch.no_grad()
def all_logits(model: nn.Module, tok: TextTokenizer, texts: list[str]) -> torch.Tensor:
    """``[L, N, C]``: every exit head's logits then the final logits, in the order of ``texts``."""
    batches, order = sorted_batches(tok, texts)
    rows = []
    for b in batches:
        exits, final = collect_exits(model, **b)
        rows.append(torch.stack([*exits, final]))  # [L, B, C]
    out = torch.cat(rows, dim=1)
    result = torch.empty_like(out)
    result[:, torch.tensor(order)] = out
    return result


def simulate(logits: torch.Tensor, labels: torch.Tensor, threshold: float) -> tuple[float, float]:
    """Accuracy and mean blocks of the entropy rule at ``threshold`` (first head below it; else the last layer)."""
    ent = torch.stack([normalized_entropy(lg) for lg in logits[:-1]])  # [L-1, N]
    below = torch.cat([ent < threshold, torch.ones(1, logits.shape[1], dtype=torch.bool)])  # [L, N]
    layer = below.float().argmax(0)  # first True
    pred = logits[layer, torch.arange(logits.shape[1])].argmax(-1)
    return float((pred == labels).float().mean() * 100), float((layer + 1).float().mean())


def time_pairs(full: nn.Module, early: nn.Module, tok: TextTokenizer, texts: list[str], labels: list[int],
               reps: int) -> dict[str, Any]:
    """Batch-1 paired, interleaved timing of ``full`` vs ``early`` on every sentence; per-sentence medians."""
    t_full, t_early, correct, blocks = [], [], 0, []
    early.exit_stats.reset()
    with torch.no_grad():
        for i, text in enumerate(texts):
            x = tok.encode([text], MAX_LEN)
            a, b = [], []
            for r in range(reps):
                pair = [(full, a), (early, b)] if (i + r) % 2 == 0 else [(early, b), (full, a)]
                for model, sink in pair:
                    t0 = time.perf_counter()
                    out = model(**x)
                    sink.append(time.perf_counter() - t0)
                    if model is early and r == 0:
                        correct += int(out.argmax(-1).item() == labels[i])
                        blocks.append(early.exit_stats.last[0])
            t_full.append(statistics.median(a))
            t_early.append(statistics.median(b))
    return {"speedup": sum(t_full) / sum(t_early), "accuracy": 100 * correct / len(texts),
            "mean_blocks": sum(blocks) / len(blocks), "full_ms": 1e3 * statistics.mean(t_full),
            "early_ms": 1e3 * statistics.mean(t_early),
            "median_ratio": statistics.median(f / e for f, e in zip(t_full, t_early))}


def fine_tune(tok: TextTokenizer, args: argparse.Namespace) -> nn.Module:
    model = MiniLMClassifier()
    batches = train_batches(tok, args.ft_steps, 32, seed=0)
    res = train(model, task_loss(_loss), batches,
                TrainOptions(steps=args.ft_steps, lr=args.ft_lr, warmup=max(1, args.ft_steps // 10), seed=0),
                progress=not args.smoke, desc="fine-tune")
    print(f"fine-tune: {res.steps} steps, final loss {res.final_loss:.4f}", flush=True)
    return model.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny run to check the plumbing (writes under /tmp)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/early_exit_sst2"), help="cache of the two models")
    ap.add_argument("--ft-steps", type=int, default=800)
    ap.add_argument("--ft-lr", type=float, default=8e-5)
    ap.add_argument("--exit-steps", type=int, default=500)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dev-margin", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if args.smoke:
        args.ft_steps, args.exit_steps, args.reps, args.work = 3, 3, 1, Path("/tmp/early_exit_sst2_smoke")
    torch.manual_seed(0)
    tok = TextTokenizer(minilm_path())
    base_dir, exit_dir = args.work / "base", args.work / "exit"
    if (base_dir / "manifest.json").is_file():
        base = slimkit.restore(base_dir, model=lambda: MiniLMClassifier(pretrained=False))
    else:
        base = fine_tune(tok, args)
        slimkit.save(base, base_dir)
    if (exit_dir / "manifest.json").is_file():
        early = slimkit.restore(exit_dir, model=lambda: MiniLMClassifier(pretrained=False))
    else:
        data = [b[0] for b in train_batches(tok, args.exit_steps, 32, seed=1)]
        early = slimkit.apply(base, EarlyExitDynamic(steps=args.exit_steps, lr=1e-3, warmup=args.exit_steps // 10),
                              ctx=Context(unlabeled_data=data, progress=not args.smoke, seed=0))
        slimkit.save(early, exit_dir)
    n_blocks = len(early.embedder.encoder.encoder.layer)

    dev_t, dev_y = read_sst2("dev")
    test_t, test_y = read_sst2("test")
    if args.smoke:
        dev_t, dev_y, test_t, test_y = dev_t[:64], dev_y[:64], test_t[:16], test_y[:16]
    dev_l, test_l = all_logits(early, tok, dev_t), all_logits(early, tok, test_t)
    dev_yt, test_yt = torch.tensor(dev_y), torch.tensor(test_y)
    grid = [round(0.05 * i, 2) for i in range(0, 21)]
    full_dev, _ = simulate(dev_l, dev_yt, 0.0)
    full_test, _ = simulate(test_l, test_yt, 0.0)
    curve = [(t, *simulate(dev_l, dev_yt, t), *simulate(test_l, test_yt, t)) for t in grid]
    ok = [c for c in curve if c[1] >= full_dev - args.dev_margin]
    chosen = max(ok, key=lambda c: c[0])[0]
    print(f"full model: dev {full_dev:.2f}, test {full_test:.2f}; chosen threshold {chosen} on dev", flush=True)
    for c in curve:
        print(f"  t={c[0]:.2f} dev {c[1]:.2f} ({c[2]:.2f} blocks)  test {c[3]:.2f} ({c[4]:.2f} blocks)")

    timed_thresholds = sorted({0.0, 0.1, 0.2, chosen, min(1.0, round(chosen + 0.1, 2)), 0.4} if not args.smoke
                              else {0.0, chosen})
    rows = []
    with fixed_threads(args.threads):
        for t in timed_thresholds:
            early.exit_settings.threshold = t
            r = time_pairs(base, early, tok, test_t, test_y, args.reps)
            rows.append({"threshold": t, **r})
            print(f"t={t:.2f}: speed-up {r['speedup']:.2f}x, test acc {r['accuracy']:.2f}, "
                  f"blocks {r['mean_blocks']:.2f}/{n_blocks}", flush=True)

    # batch > 1: the batch runs until its last row exits (no timing: the blocks it executed)
    early.exit_settings.threshold = chosen
    early.exit_stats.reset()
    with torch.no_grad():
        for b in sorted_batches(tok, test_t, 32)[0]:
            early(**b)
    st = early.exit_stats
    batch32 = {"row_mean_blocks": st.mean_blocks, "batch_mean_blocks": st.batch_blocks / max(1, st.batches)}
    write(args, rows, curve, chosen, full_dev, full_test, n_blocks, batch32, slimkit.records(early)[-1].summary)


def write(args: argparse.Namespace, rows: list[dict[str, Any]], curve: list[tuple], chosen: float, full_dev: float,
          full_test: float, n_blocks: int, batch32: dict[str, float], summary: dict[str, Any]) -> None:
    isa = int8_isa()
    best = next(r for r in rows if r["threshold"] == chosen)
    out_json = Path("/tmp/early_exit_sst2_smoke.json") if args.smoke else RESULT
    doc = {
        "title": "Early exit on an SST-2 MiniLM classifier (dynamic.early_exit, batch 1)",
        "date": datetime.date.today().isoformat(), "cpu": isa.cpu_model, "int8_isa": isa.to_dict(),
        "machine": f"{platform.machine()}, torch {torch.__version__}, {args.threads} thread(s)",
        "command": "python benchmarks/early_exit_sst2.py " + " ".join(sys.argv[1:]),
        "summary": (f"MiniLM-L6 + mean pooling + linear head fine-tuned on SST-2 train ({args.ft_steps} steps, batch 32): "
                    f"test accuracy {full_test:.2f} (dev {full_dev:.2f}). {n_blocks - 1} exit heads distilled from the "
                    f"final logits ({args.exit_steps} steps, backbone frozen). Threshold chosen on dev "
                    f"(largest with dev accuracy within {args.dev_margin} points of the full model): {chosen}. "
                    f"At it, SST-2 test at batch 1: {best['accuracy']:.2f} accuracy "
                    f"({best['accuracy'] - full_test:+.2f} points), {best['speedup']:.2f}x average speed-up "
                    f"(paired, interleaved, per-sentence medians of {args.reps}), "
                    f"{best['mean_blocks']:.2f} of {n_blocks} blocks on average."),
        "tables": [
            {"caption": "SST-2 test (872 sentences), batch 1, timed against the full model on the same sentences",
             "columns": ["entropy threshold", "test accuracy", "vs full (points)", "mean blocks", "average speed-up",
                         "median per-sentence speed-up", "full ms", "early-exit ms"],
             "rows": [[r["threshold"], round(r["accuracy"], 2), round(r["accuracy"] - full_test, 2),
                       round(r["mean_blocks"], 2), round(r["speedup"], 3), round(r["median_ratio"], 3),
                       round(r["full_ms"], 2), round(r["early_ms"], 2)] for r in rows]},
            {"caption": "The exit rule replayed offline on every head's logits (no timing): accuracy and mean blocks",
             "columns": ["entropy threshold", "dev accuracy", "dev mean blocks", "test accuracy", "test mean blocks"],
             "rows": [[c[0], round(c[1], 2), round(c[2], 2), round(c[3], 2), round(c[4], 2)] for c in curve]},
        ],
        "notes": [
            f"batch 32 at threshold {chosen} (test, sorted by length): rows need {batch32['row_mean_blocks']:.2f} "
            f"blocks on average but a batch runs until its last row exits: {batch32['batch_mean_blocks']:.2f} "
            "blocks per batch, so early exit pays at batch 1 (serving one request), not in large batches.",
            "Threshold 0 never exits: its row times the exit-aware model running every block (the overhead of "
            "the exit machinery without any exit).",
            f"exit training: {summary}",
        ],
        "thresholds_timed": [r["threshold"] for r in rows], "chosen_threshold": chosen,
        "full_test_accuracy": full_test, "full_dev_accuracy": full_dev, "batch32": batch32,
    }
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(doc, indent=2) + "\n")
    plot(rows, curve, full_test, n_blocks, Path("/tmp/early_exit_sst2_smoke.png") if args.smoke else PLOT)
    print(f"wrote {out_json}")


def plot(rows: list[dict[str, Any]], curve: list[tuple], full_test: float, n_blocks: int, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([n_blocks / c[4] for c in curve], [c[3] for c in curve], "o-", color="0.6", ms=3,
            label="offline: blocks saved (n / mean blocks)")
    ax.plot([r["speedup"] for r in rows], [r["accuracy"] for r in rows], "s-", color="C0",
            label="measured batch-1 speed-up")
    for r in rows:
        ax.annotate(f"{r['threshold']:g}", (r["speedup"], r["accuracy"]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    ax.axhline(full_test, color="k", lw=0.8, ls="--", label="full model")
    ax.axhline(full_test - 1.0, color="r", lw=0.8, ls=":", label="full - 1 point")
    ax.axvline(1.6, color="r", lw=0.8, ls=":")
    ax.set_xlabel("average speed-up vs full model (x)")
    ax.set_ylabel("SST-2 test accuracy (%)")
    ax.set_title("Early exit, MiniLM SST-2 classifier, batch 1")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
