"""Early exit (``dynamic.early_exit``) on an SST-2 classifier built on MiniLM: accuracy vs average speed-up at batch 1.

1. The classifier: zoo:minilm-l6's encoder + masked mean pooling + a linear head, fine-tuned
   (every weight) on SST-2 train through the one engine (``slimkit.train.train``). The zoo
   has no fine-tuned MiniLM classifier (``zoo:sst2-bilstm`` is a BiLSTM), so this builds one.
2. ``dynamic.early_exit``: 5 exit heads (after blocks 1-5), distilled from the final logits
   on SST-2 train sentences, backbone frozen.
3. Operating point, chosen on dev only: every exit head's logits on SST-2 dev and test once
   (all blocks), every exit rule of :data:`RULES` replayed offline (``replay_exits``, the
   runtime's own decision code) for a grid of thresholds; among the (rule, threshold) pairs
   whose *dev* accuracy is within ``--dev-margin`` points of the full model's dev accuracy,
   the one with the fewest dev mean blocks is the operating point (ties: higher dev
   accuracy). Test is only reported.
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
from slimkit.dynamic import EarlyExitDynamic, ExitSettings, collect_exits, replay_exits
from slimkit.measure.latency import fixed_threads
from slimkit.train import TrainOptions, task_loss, train
from slimkit.zoo.data import read_sst2
from slimkit.zoo.minilm import SentenceEmbedder, TextTokenizer, load_hf_encoder, minilm_path

ROOT = Path(__file__).resolve().parent
RESULT = ROOT / "results" / "early_exit_sst2.json"
PLOT = ROOT / "results" / "early_exit_sst2.png"
MAX_LEN = 64
# exit rules searched on dev: (criterion, exit_patience, solo_ratio); entropy_patience with
# solo_ratio 1 would be the entropy rule, so it is left out
RULES: list[tuple[str, int, float]] = [("entropy", 2, 0.5)] + [
    ("entropy_patience", p, r) for p in (1, 2, 3) for r in (0.25, 0.5, 0.75)]
GRID = [round(0.02 * i, 2) for i in range(51)]


def rule_name(rule: tuple[str, int, float]) -> str:
    c, p, r = rule
    return "entropy" if c == "entropy" else f"entropy_patience (patience {p}, solo {r:g})"


def settings(rule: tuple[str, int, float], threshold: float) -> ExitSettings:
    return ExitSettings(criterion=rule[0], threshold=threshold, patience=rule[1], solo_ratio=rule[2])  # type: ignore[arg-type]


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


def simulate(logits: torch.Tensor, labels: torch.Tensor, rule: tuple[str, int, float],
             threshold: float) -> tuple[float, float]:
    """Accuracy and mean blocks of ``rule`` at ``threshold``, replayed on ``[L, N, C]`` logits."""
    layer = replay_exits(list(logits[:-1]), settings(rule, threshold))  # [N], 1..L
    pred = logits[layer - 1, torch.arange(logits.shape[1])].argmax(-1)
    return float((pred == labels).float().mean() * 100), float(layer.float().mean())


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
    full_dev, _ = simulate(dev_l, dev_yt, RULES[0], 0.0)
    full_test, _ = simulate(test_l, test_yt, RULES[0], 0.0)
    curves = {rule: [(t, *simulate(dev_l, dev_yt, rule, t), *simulate(test_l, test_yt, rule, t)) for t in GRID]
              for rule in RULES}
    picks = {}  # per rule: its dev-chosen threshold (fewest dev blocks within the margin)
    for rule, curve in curves.items():
        ok = [c for c in curve if c[1] >= full_dev - args.dev_margin]
        picks[rule] = min(ok, key=lambda c: (c[2], -c[1]))
    rule = min(picks, key=lambda r: (picks[r][2], -picks[r][1]))
    chosen = picks[rule][0]
    print(f"full model: dev {full_dev:.2f}, test {full_test:.2f}; chosen on dev: {rule_name(rule)} at {chosen}",
          flush=True)
    for r, c in picks.items():
        print(f"  {rule_name(r)}: t={c[0]:.2f} dev {c[1]:.2f} ({c[2]:.2f} blocks)  test {c[3]:.2f} ({c[4]:.2f})")

    entropy = RULES[0]
    timed = [(rule, t) for t in sorted({0.0, 0.3, 0.5, chosen, min(1.0, round(chosen + 0.1, 2))})]
    if rule != entropy:
        timed.append((entropy, picks[entropy][0]))  # the entropy rule's own dev pick, for comparison
    if args.smoke:
        timed = [(rule, 0.0), (rule, chosen)]
    rows = []
    with fixed_threads(args.threads):
        for r, t in timed:
            s = settings(r, t)
            early.exit_settings.criterion, early.exit_settings.threshold = s.criterion, s.threshold
            early.exit_settings.patience, early.exit_settings.solo_ratio = s.patience, s.solo_ratio
            res = time_pairs(base, early, tok, test_t, test_y, args.reps)
            rows.append({"rule": rule_name(r), "threshold": t, **res})
            print(f"{rule_name(r)} t={t:.2f}: speed-up {res['speedup']:.2f}x, test acc {res['accuracy']:.2f}, "
                  f"blocks {res['mean_blocks']:.2f}/{n_blocks}", flush=True)

    # batch > 1: the batch runs until its last row exits (no timing: the blocks it executed)
    s = settings(rule, chosen)
    early.exit_settings.criterion, early.exit_settings.threshold = s.criterion, s.threshold
    early.exit_settings.patience, early.exit_settings.solo_ratio = s.patience, s.solo_ratio
    early.exit_stats.reset()
    with torch.no_grad():
        for b in sorted_batches(tok, test_t, 32)[0]:
            early(**b)
    st = early.exit_stats
    batch32 = {"row_mean_blocks": st.mean_blocks, "batch_mean_blocks": st.batch_blocks / max(1, st.batches)}
    write(args, rows, curves, picks, rule, chosen, full_dev, full_test, n_blocks, batch32,
          slimkit.records(early)[-1].summary)


def write(args: argparse.Namespace, rows: list[dict[str, Any]], curves: dict[tuple, list[tuple]],
          picks: dict[tuple, tuple], rule: tuple[str, int, float], chosen: float, full_dev: float, full_test: float,
          n_blocks: int, batch32: dict[str, float], summary: dict[str, Any]) -> None:
    isa = int8_isa()
    name = rule_name(rule)
    best = next(r for r in rows if r["threshold"] == chosen and r["rule"] == name)
    out_json = Path("/tmp/early_exit_sst2_smoke.json") if args.smoke else RESULT
    r2 = lambda v: round(v, 2)  # noqa: E731
    offline = [rule] + ([RULES[0]] if rule != RULES[0] else [])
    doc = {
        "title": "Early exit on an SST-2 MiniLM classifier (dynamic.early_exit, batch 1)",
        "date": datetime.date.today().isoformat(), "cpu": isa.cpu_model, "int8_isa": isa.to_dict(),
        "machine": f"{platform.machine()}, torch {torch.__version__}, {args.threads} thread(s)",
        "command": "python benchmarks/early_exit_sst2.py " + " ".join(sys.argv[1:]),
        "summary": (f"MiniLM-L6 + mean pooling + linear head fine-tuned on SST-2 train ({args.ft_steps} steps, batch 32): "
                    f"test accuracy {full_test:.2f} (dev {full_dev:.2f}). {n_blocks - 1} exit heads distilled from the "
                    f"final logits ({args.exit_steps} steps, backbone frozen). Operating point chosen on dev only "
                    f"(among {len(RULES)} exit rules x {len(GRID)} thresholds, the fewest dev mean blocks with dev "
                    f"accuracy within {args.dev_margin} points of the full model): {name}, threshold {chosen}. "
                    f"At it, SST-2 test at batch 1: {best['accuracy']:.2f} accuracy "
                    f"({best['accuracy'] - full_test:+.2f} points), {best['speedup']:.2f}x average speed-up "
                    f"(paired, interleaved, per-sentence medians of {args.reps}), "
                    f"{best['mean_blocks']:.2f} of {n_blocks} blocks on average."),
        "tables": [
            {"caption": "SST-2 test (872 sentences), batch 1, timed against the full model on the same sentences",
             "columns": ["exit rule", "threshold", "test accuracy", "vs full (points)", "mean blocks",
                         "average speed-up", "median per-sentence speed-up", "full ms", "early-exit ms"],
             "rows": [[r["rule"], r["threshold"], r2(r["accuracy"]), r2(r["accuracy"] - full_test),
                       r2(r["mean_blocks"]), round(r["speedup"], 3), round(r["median_ratio"], 3),
                       r2(r["full_ms"]), r2(r["early_ms"])] for r in rows]},
            {"caption": (f"Dev selection: each rule's own dev pick (fewest dev blocks within {args.dev_margin} points "
                         "of the full model's dev accuracy); the row with the fewest dev blocks is the operating "
                         "point. Test columns are for information only (offline replay, no timing)"),
             "columns": ["exit rule", "threshold", "dev accuracy", "dev mean blocks", "test accuracy",
                         "test vs full (points)", "test mean blocks"],
             "rows": [[rule_name(r), c[0], r2(c[1]), r2(c[2]), r2(c[3]), r2(c[3] - full_test), r2(c[4])]
                      for r, c in picks.items()]},
        ] + [
            {"caption": f"{rule_name(r)}: the rule replayed offline on every head's logits (no timing)",
             "columns": ["threshold", "dev accuracy", "dev mean blocks", "test accuracy", "test vs full (points)",
                         "test mean blocks"],
             "rows": [[c[0], r2(c[1]), r2(c[2]), r2(c[3]), r2(c[3] - full_test), r2(c[4])] for c in curves[r][::2]]}
            for r in offline
        ],
        "notes": [
            f"batch 32 at the operating point (test, sorted by length): rows need {batch32['row_mean_blocks']:.2f} "
            f"blocks on average but a batch runs until its last row exits: {batch32['batch_mean_blocks']:.2f} "
            "blocks per batch, so early exit pays at batch 1 (serving one request), not in large batches.",
            "Threshold 0 never exits: its row times the exit-aware model running every block (the overhead of "
            "the exit machinery without any exit).",
            "SST-2 test has 872 sentences: one sentence is 0.11 points, so differences of a few tenths between "
            "neighbouring thresholds are noise.",
            f"exit training: {summary}",
        ],
        "chosen_rule": name, "chosen_threshold": chosen, "thresholds_timed": [[r["rule"], r["threshold"]] for r in rows],
        "full_test_accuracy": full_test, "full_dev_accuracy": full_dev, "batch32": batch32,
    }
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(doc, indent=2) + "\n")
    plot(rows, {rule_name(r): curves[r] for r in offline}, full_test, n_blocks,
         Path("/tmp/early_exit_sst2_smoke.png") if args.smoke else PLOT)
    print(f"wrote {out_json}")


def plot(rows: list[dict[str, Any]], curves: dict[str, list[tuple]], full_test: float, n_blocks: int,
         path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for k, (name, curve) in enumerate(curves.items()):
        ax.plot([n_blocks / c[4] for c in curve], [c[3] for c in curve], "o-", color=f"0.{4 + 2 * k}", ms=2,
                lw=0.8, label=f"offline {name}: n / mean blocks")
    for k, name in enumerate(dict.fromkeys(r["rule"] for r in rows)):
        mine = [r for r in rows if r["rule"] == name]
        ax.plot([r["speedup"] for r in mine], [r["accuracy"] for r in mine], "s-", color=f"C{k}", ms=4,
                label=f"measured batch-1 speed-up, {name}")
        for r in mine:
            ax.annotate(f"{r['threshold']:g}", (r["speedup"], r["accuracy"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
    ax.axhline(full_test, color="k", lw=0.8, ls="--", label="full model")
    ax.axhline(full_test - 1.0, color="r", lw=0.8, ls=":", label="full - 1 point")
    ax.axvline(1.6, color="r", lw=0.8, ls=":")
    ax.set_xlabel("average speed-up vs full model (x)")
    ax.set_ylabel("SST-2 test accuracy (%)")
    ax.set_title("Early exit, MiniLM SST-2 classifier, batch 1")
    ax.set_ylim(max(70.0, ax.get_ylim()[0]), None)
    ax.legend(fontsize=6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
