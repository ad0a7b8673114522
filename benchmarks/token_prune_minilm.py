"""Issue 18, must-show 3: token pruning (``attention.token_prune``) on MiniLM, distilled, STS-B + speed.

Usage::

    SLIMKIT_DATA=../shared/data HF_HUB_OFFLINE=1 python benchmarks/token_prune_minilm.py [--steps 600] [--smoke]

1. Candidate keep schedules (one fraction per block: the share of each sentence's real tokens
   the block processes) and scores are applied to fp32 MiniLM and scored on STS-B **dev** only, with
   a short paired speed probe at batch 32 x 128 tokens. The schedule kept is the best on dev among
   those whose probe reaches ``--min-speedup``; the test split is not looked at to choose.
2. That schedule is distilled with ``distill.embedding`` (1 - cos on the pooled embedding against
   fp32 MiniLM, ``cache_teacher``, dropout 0, the STS-B task's unlabelled corpus).
3. The student is saved with ``slimkit.save``, restored (the record swaps the encoder again) and
   scored on STS-B dev and test (Spearman x100); ``measure.profile`` MACs at 32 x 128 against fp32.
   The same student is also scored with ``min_keep`` in ``MIN_KEEPS`` (rows of at most that many
   real tokens are not pruned; 128-token rows compute exactly the same, checked), with the share of
   token-block work each leaves on STS-B; the smallest within 1.0 of fp32 on **dev** is named.
   Pooled-embedding cosine to fp32 on 128-token dev text says how faithful the long inputs stay.
4. Paired interleaved latency (``slimkit.measure.compare``) of fp32 against the restored student
   at batch 32 x 128 and batch 1 x 128 tokens. The 128-token inputs are real text: STS-B test
   sentences joined until the tokenizer's 128-token cut, so every row is 128 real tokens.

Writes ``benchmarks/results/token_prune_minilm.json`` in the generic form (title / command /
summary / tables / notes) with the CPU label.
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
from slimkit import Context, measure, zoo
from slimkit.app.pipeline import load_artifact
from slimkit.attention.token_prune import TokenPruneAttention
from slimkit.core import Recipe, Targets
from slimkit.core.cpu import int8_isa
from slimkit.zoo.data import read_stsb

sys.path.insert(0, str(Path(__file__).parent))
from stsb_splits import score  # noqa: E402

RESULTS = Path(__file__).parent / "results"
FP32_TEST = 81.03
# name -> (keep per block, score). Zero-shot STS-B dev probes (1 thread, fp32 dev 86.72) that led here:
# [1,1,.7,.5,.4,.3] cls 75.83 (mean 74.09; merge 69.16); [1,1,.6,.5,.4,.4] cls 77.67; [1,.6 x5] cls 66.50
# but mean 81.97; [1,.58 x5] mean 81.67; [1,.55 x5] mean 80.12: pruning once, right after block 0, by
# the attention every token receives keeps far more of the mean-pooled content than CLS attention;
# by key norm still more: [1,.6 x5] 83.70, [1,.58 x5] 83.53, [1,.55 x5] 81.53 (random scores: 72.63).
CANDIDATES: dict[str, tuple[list[float], str]] = {
    "issue-cls": ([1.0, 1.0, 0.7, 0.5, 0.4, 0.3], "cls"),
    "u60-mean": ([1.0, 0.6, 0.6, 0.6, 0.6, 0.6], "mean"),
    "u60-keynorm": ([1.0, 0.6, 0.6, 0.6, 0.6, 0.6], "key_norm"),
    "u58-keynorm": ([1.0, 0.58, 0.58, 0.58, 0.58, 0.58], "key_norm"),
    "u55-keynorm": ([1.0, 0.55, 0.55, 0.55, 0.55, 0.55], "key_norm"),
}
MIN_KEEPS = (0, 8, 12, 16)  # inference-time short-input protection scored on the same distilled student


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def long_batch(zm: Any, batch: int, tokens: int = 128, split: str = "test") -> dict[str, torch.Tensor]:
    """``batch`` rows of ``tokens`` real tokens: STS-B ``split`` sentences joined, cut at ``tokens``."""
    s1, s2, _ = read_stsb(split)
    sents = list(dict.fromkeys(s1 + s2))
    texts, i = [], 0
    while len(texts) < batch:
        texts.append(" ".join(sents[i:i + 24]))
        i += 24
    enc = zm.tokenizer.encode(texts, max_length=tokens)
    assert enc["input_ids"].shape == (batch, tokens) and bool(enc["attention_mask"].all())
    return enc


def pruned(model: torch.nn.Module, keep: list[float], score_by: str = "cls") -> torch.nn.Module:
    return slimkit.apply(model, TokenPruneAttention(keep=tuple(keep), score=score_by), Targets())


def fidelity(a: torch.nn.Module, b: torch.nn.Module, x: dict[str, torch.Tensor]) -> float:
    """Mean cosine between two models' sentence embeddings of ``x`` (1.0: identical)."""
    with torch.no_grad():
        return round(float(torch.nn.functional.cosine_similarity(a(**x), b(**x), dim=-1).mean()), 4)


def token_share(model: torch.nn.Module, split: str, tokenizer: Any) -> float:
    """Share of (token, block) pairs the pruned encoder processes on STS-B ``split`` at natural lengths."""
    from slimkit.attention import token_math as tm

    enc = next(m for m in model.modules() if type(m).__name__ == "TokenPruneEncoder")
    s1, s2, _ = read_stsb(split)
    lengths = tokenizer.encode(list(dict.fromkeys(s1 + s2)), max_length=128)["attention_mask"].sum(1)
    kept = sum(float(tm.keep_counts(lengths, f, enc.min_keep).sum()) for f in enc.fractions)
    return round(kept / (len(enc.fractions) * float(lengths.sum())), 3)


def speed(a: torch.nn.Module, b: torch.nn.Module, x: dict[str, torch.Tensor], rounds: int, iters: int) -> dict[str, Any]:
    r = measure.compare(a, b, x, rounds=rounds, iters_per_round=iters, warmup=2)
    return {"speedup": round(r.speedup, 3), "p25": round(r.speedup_p25, 3), "p75": round(r.speedup_p75, 3),
            "fp32_ms": round(r.median_a_ms, 2), "pruned_ms": round(r.median_b_ms, 2), "rounds": rounds,
            "iters_per_round": iters}


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--lr", type=float, default=6e-4)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-speedup", type=float, default=1.45, help="probe speed-up a candidate must reach")
    ap.add_argument("--schedule", choices=sorted(CANDIDATES), help="skip the dev probe and use this schedule")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--smoke", action="store_true", help="plumbing only: 2 steps, no STS-B scoring, no result file")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    scorer = (lambda *a: 0.0) if args.smoke else score
    steps = 2 if args.smoke else args.steps
    cmd = ("python benchmarks/token_prune_minilm.py " + " ".join(argv)).strip()
    zm = zoo.load("zoo:minilm-l6")
    task = zoo.get_task("stsb")
    fp32 = zm.model.eval()
    x32, x1 = long_batch(zm, 32), long_batch(zm, 1)
    doc: dict[str, Any] = {"title": "Token pruning on MiniLM (attention.token_prune + distill.embedding)",
                           "date": datetime.date.today().isoformat(), "int8_isa": int8_isa().to_dict(),
                           "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
                           "command": cmd, "args": vars(args)}
    fp32_dev = round(scorer(fp32, zm.tokenizer, "dev"), 2)
    log(f"fp32 dev {fp32_dev}")
    probe: dict[str, dict[str, Any]] = {}
    names = [args.schedule] if args.schedule else list(CANDIDATES)
    for name in names:
        keep_n, score_n = CANDIDATES[name]
        cand = pruned(fp32, keep_n, score_n)
        probe[name] = {"keep": keep_n, "score": score_n, "dev": round(scorer(cand, zm.tokenizer, "dev"), 2),
                       "probe_speedup": speed(fp32, cand, x32, 4 if not args.smoke else 1, 2)["speedup"]}
        log(f"probe {name}: {probe[name]}")
    fast = ([n for n in names if probe[n]["probe_speedup"] >= args.min_speedup]
            or [max(names, key=lambda n: probe[n]["probe_speedup"])])  # none fast enough: the fastest
    chosen = max(fast, key=lambda n: probe[n]["dev"])
    keep, score_by = CANDIDATES[chosen]
    zero_shot = pruned(fp32, keep, score_by)
    xdev = long_batch(zm, 32, split="dev")  # 128-token rows of dev sentences: fidelity at the speed length
    log(f"chosen on dev: {chosen} {keep}")

    corpus = task.unlabeled_batches(zm, args.batch, seed=0)
    ctx = Context(unlabeled_data=list(corpus)[:steps], teacher=fp32, progress=False, seed=0)
    recipe = Recipe.from_dict({"name": "token-prune-minilm", "steps": [
        {"kind": "attention.token_prune", "with": {"keep": keep, "score": score_by}},
        {"kind": "distill.embedding", "with": {"steps": steps, "lr": args.lr, "warmup": max(1, steps // 20),
                                               "dropout": 0.0, "cache_teacher": True, "data": "unlabeled"}}]})
    t0 = time.time()
    student = recipe.run(fp32, ctx)
    distill_s = round(time.time() - t0, 1)
    log(f"distilled in {distill_s}s")
    with tempfile.TemporaryDirectory() as tmp:
        slimkit.save(student, Path(tmp) / "student", spec="zoo:minilm-l6")
        restored, _ = load_artifact(Path(tmp) / "student")
    restored.eval()
    same = all(torch.equal(a, b) for a, b in zip(measure_outputs(student, x32), measure_outputs(restored, x32)))
    res = {s: round(scorer(restored, zm.tokenizer, s), 2) for s in ("dev", "test")}
    fp32_test = round(scorer(fp32, zm.tokenizer, "test"), 2)
    log(f"student {res}, fp32 test {fp32_test}, restore bit-exact {same}")
    fid = {"zero_shot": fidelity(fp32, zero_shot, xdev), "distilled": fidelity(fp32, restored, xdev)}
    log(f"embedding cosine to fp32 at 128 tokens (dev text): {fid}")
    enc = next(m for m in restored.modules() if type(m).__name__ == "TokenPruneEncoder")
    guard: dict[int, dict[str, Any]] = {}
    for mk in MIN_KEEPS:  # the same student with short inputs protected; 128-token rows are unaffected
        enc.min_keep = mk
        unchanged = all(torch.equal(a, b) for a, b in zip(measure_outputs(restored, x32), measure_outputs(student, x32)))
        guard[mk] = {"dev": res["dev"] if mk == 0 else round(scorer(restored, zm.tokenizer, "dev"), 2),
                     "test": res["test"] if mk == 0 else round(scorer(restored, zm.tokenizer, "test"), 2),
                     "share_dev": token_share(restored, "dev", zm.tokenizer),
                     "share_test": token_share(restored, "test", zm.tokenizer), "same_at_128": unchanged}
        log(f"min_keep {mk}: {guard[mk]}")
    enc.min_keep = 0
    fp32_dev_v = fp32_dev if not args.smoke else 0.0
    ok_dev = [mk for mk in MIN_KEEPS if guard[mk]["dev"] >= fp32_dev_v - 1.0]
    pick = min(ok_dev) if ok_dev else None  # smallest protection within 1.0 of fp32 on DEV
    macs = {n: measure.profile(m, x32).macs for n, m in (("fp32", fp32), ("pruned", restored))}
    rounds = 2 if args.smoke else args.rounds
    sp32 = speed(fp32, restored, x32, rounds, 3)
    log(f"batch 32 x 128: {sp32}")
    sp1 = speed(fp32, restored, x1, rounds, 10)
    log(f"batch 1 x 128: {sp1}")
    delta = round(res["test"] - fp32_test, 2)
    doc["summary"] = (f"Schedule `{keep}` ({score_by} scores; {'given by --schedule' if args.schedule else 'chosen on STS-B dev'}), distilled {steps} steps: STS-B "
                      f"test {res['test']} vs fp32 {fp32_test} ({delta:+.2f}); paired speed-up {sp32['speedup']}x at "
                      f"batch 32 x 128 tokens, {sp1['speedup']}x at batch 1 x 128; MACs "
                      f"{macs['fp32'] / macs['pruned']:.2f}x fewer. Every STS-B sentence pruned (min_keep 0) is "
                      f"{delta:+.2f} on test; " + (
                          f"with min_keep {pick} (smallest within 1.0 of fp32 on dev; rows of at most {pick} "
                          f"tokens not pruned, {guard[pick]['share_test']:.0%} of STS-B test token-blocks processed, "
                          f"128-token rows unchanged) test {guard[pick]['test']} "
                          f"({guard[pick]['test'] - fp32_test:+.2f})." if pick is not None else
                          f"no min_keep in {list(MIN_KEEPS)} reaches within 1.0 of fp32 on dev."))
    doc["tables"] = [
        {"caption": "Schedule probe before distillation (STS-B dev; quick paired speed probe, batch 32 x 128)",
         "columns": ["schedule", "keep per block", "score", "dev", "probe speed-up"],
         "rows": [["fp32", "-", "-", fp32_dev, 1.0]] + [[n, str(p["keep"]), p["score"], p["dev"], p["probe_speedup"]]
                                                  for n, p in probe.items()]},
        {"caption": "Distilled student (saved, restored) against fp32",
         "columns": ["model", "STS-B dev", "STS-B test", "test delta", "GMACs 32x128",
                     "speed-up b32x128 (p25-p75)", "speed-up b1x128 (p25-p75)"],
         "rows": [["fp32", fp32_dev, fp32_test, 0.0, round(macs["fp32"] / 1e9, 2), 1.0, 1.0],
                  [f"token_prune {chosen} + distill", res["dev"], res["test"], delta,
                   round(macs["pruned"] / 1e9, 2), f"{sp32['speedup']} ({sp32['p25']}-{sp32['p75']})",
                   f"{sp1['speedup']} ({sp1['p25']}-{sp1['p75']})"]]},
        {"caption": "Same distilled student, short inputs protected (min_keep: rows of at most that many real "
                    "tokens are not pruned; set on the restored encoder; 128-token rows compute exactly the same)",
         "columns": ["min_keep", "STS-B dev", "STS-B test", "test delta", "token-block share dev", "share test",
                     "same output at 128"],
         "rows": [[mk, g["dev"], g["test"], round(g["test"] - fp32_test, 2), g["share_dev"], g["share_test"],
                   g["same_at_128"]] for mk, g in guard.items()]}]
    doc["notes"] = [
        "Keep fractions are per block: the share of each sentence's real tokens that block processes; "
        "[CLS] and the last [SEP] are always kept; dropped tokens' last states are written back, so "
        "mean pooling over the original mask is unchanged in form.",
        "Speed inputs are real text, 128 real tokens per row (STS-B test sentences joined), so padding "
        "does not flatter the ratio; STS-B itself is scored at its natural lengths with the same fractions.",
        f"Distillation: {steps} steps of distill.embedding, lr {args.lr}, batch {args.batch}, the STS-B task's "
        f"unlabelled corpus (test sentences removed); {distill_s} s.",
        f"Restored student reproduces the saved one bit for bit: {same}.",
        f"Pooled-embedding cosine to fp32 on 32 rows of 128 real tokens (STS-B dev sentences joined): zero-shot "
        f"{fid['zero_shot']}, distilled {fid['distilled']}.",
        "Token-block share: the share of (token, block) pairs the encoder processes on STS-B at natural lengths "
        f"(1.0 = unpruned); at 128 tokens the schedule processes {sum(keep) / len(keep):.3f}.",
        "CPU timings on a shared 2-core machine: treat as provisional; paired interleaved medians."]
    doc["detail"] = {"probe": probe, "chosen": chosen, "student": res, "fp32_test": fp32_test, "macs": macs,
                     "speed_b32": sp32, "speed_b1": sp1, "fidelity_128": fid, "min_keep": guard,
                     "min_keep_pick_on_dev": pick, "record": slimkit.records(restored)[0].to_dict(),
                     "distill": slimkit.records(student)[-1].summary}
    if args.smoke:
        print(json.dumps(doc, indent=1)[:3000])
        return
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "token_prune_minilm.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(doc["summary"])


def measure_outputs(model: torch.nn.Module, x: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    with torch.no_grad():
        return [model(**x)]


if __name__ == "__main__":
    main(sys.argv[1:])
