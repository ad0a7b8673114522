"""MiniLM word embeddings made >= 10x smaller (issue 17, must-show 2), then recovered by distillation.

    SLIMKIT_DATA=... HF_HUB_OFFLINE=1 python benchmarks/minilm_embedding.py --dim 32 --steps 250 \
        --lr 2e-4 --warmup 25 --batch 32 --threads 2
    python benchmarks/minilm_embedding.py --baselines --dim 32 --tt-rank 64     # adds untrained rows

On zoo:minilm-l6 (all-MiniLM-L6-v2, word table 30522 x 384 = 11.7 M parameters):

1. ``share.factorized_embedding`` on ``*word_embeddings`` at ``dim`` (E) with ``init:
   frequency`` (rows weighted by their token counts on the task's unlabelled corpus); STS-B
   dev and test before any training.
2. ``distill.embedding`` (cosine on the pooled embedding, ``cache_teacher``, dropout 0) on
   the first ``steps`` batches of the STS-B task's unlabelled corpus (STS-B + SST-2 train
   sentences, test sentences removed); one pass. Settings chosen on dev only.
3. The saved folders: ``measure.profile`` bytes against the bytes of ``model.safetensors``
   (the file adds only its 8-byte length and JSON header), fp32 and compressed.

``--baselines`` adds, untrained and on dev only, the plain-SVD init at the same E and a
3-core TT-embedding (ranks ``tt-rank``) at about the same size. Writes
``benchmarks/results/minilm_embedding.json``.
"""
from __future__ import annotations

import argparse
import copy
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
from slimkit.core import Recipe, Targets
from slimkit.core.cpu import int8_isa
from slimkit.lowrank.tt import TtLowrank
from slimkit.share.factorized_embedding import FactorizedEmbeddingShare, refit_unseen_rows, token_counts

sys.path.insert(0, str(Path(__file__).parent))
from stsb_splits import score  # noqa: E402

RESULTS = Path(__file__).parent / "results"
WORDS = Targets(include=("*word_embeddings",))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def stsb(model: torch.nn.Module, zm: Any) -> dict[str, float]:
    return {"dev": round(score(model, zm.tokenizer, "dev"), 2), "test": round(score(model, zm.tokenizer, "test"), 2)}


def word_params(model: torch.nn.Module) -> int:
    table = model.get_submodule("encoder.embeddings.word_embeddings")
    return sum(p.numel() for p in table.parameters())


def sizes(model: torch.nn.Module, zm: Any, folder: Path) -> dict[str, int]:
    """Profile bytes, the saved file's bytes and its header (file = tensor bytes + 8 + header)."""
    saved = slimkit.save(model, folder)
    file = saved / "model.safetensors"
    raw = file.read_bytes()
    header = 8 + int.from_bytes(raw[:8], "little")
    prof = measure.profile(model, zm.example_inputs(1))
    return {"params_total": prof.params_total, "word_table_params": word_params(model),
            "profile_bytes": prof.bytes_on_disk, "file_bytes": file.stat().st_size, "file_header_bytes": header,
            "macs_b1_s128": prof.macs}


def baselines(args: argparse.Namespace, zm: Any, corpus: Any, cmd: str) -> None:
    """Untrained comparison rows at about the same size: plain-SVD init and a TT-embedding (dev only)."""
    path = RESULTS / "minilm_embedding.json"
    out = json.loads(path.read_text())
    ctx = Context(unlabeled_data=corpus, progress=False, seed=0)
    for name, cfg in (("factorized_svd", FactorizedEmbeddingShare(dim=args.dim)),
                      ("tt", TtLowrank(d=3, max_rank=args.tt_rank))):
        m = slimkit.apply(zm.model, cfg, WORDS, ctx)
        out["rows"][name] = {"stsb": {"dev": round(score(m, zm.tokenizer, "dev"), 2)},
                             "word_table_params": word_params(m), "record": slimkit.records(m)[-1].summary,
                             "untrained": True}
        log(f"{name}: {out['rows'][name]}")
    out["baselines_command"] = cmd
    path.write_text(json.dumps(out, indent=1) + "\n")


def probe_smoothing(args: argparse.Namespace, zm: Any, corpus: Any, cmd: str) -> None:
    """Untrained ``init: frequency`` factorizations at each smoothing: STS-B dev (chooses) and test."""
    rows = []
    for sm in args.probe_smoothing:
        ctx = Context(unlabeled_data=corpus, progress=False, seed=0)
        student = slimkit.apply(zm.model, FactorizedEmbeddingShare(dim=args.dim, init="frequency", data="unlabeled",
                                                                   smoothing=sm), WORDS, ctx)
        rows.append([sm, *stsb(student, zm).values()])
        log(f"smoothing {sm}: {rows[-1]}")
    best = max(rows, key=lambda r: r[1])
    out = {"title": f"MiniLM word table, E = {args.dim}, untrained: frequency-weight smoothing",
           "date": datetime.date.today().isoformat(), "cpu": int8_isa().cpu_model, "int8_isa": int8_isa().name,
           "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
           "command": cmd, "summary": f"dev picks smoothing {best[0]} (dev {best[1]}, test {best[2]})",
           "tables": [{"caption": "STS-B Spearman x100 before any training (row weights = token counts + smoothing)",
                       "columns": ["smoothing", "dev", "test"], "rows": rows}], "notes": []}
    if not args.smoke:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"{args.name}.json").write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out["summary"]))


def with_cover_batches(batches: list[dict[str, torch.Tensor]], zm: Any, every: int,
                       steps: int) -> list[dict[str, torch.Tensor]]:
    """``steps`` batches: the corpus with one vocabulary-cover batch after every ``every`` of its batches.

    Cover rows are ``[CLS] + 14 ids + [SEP]``, the ids cycling through a seeded permutation of
    the word-piece rows (id >= 999, past BERT's [unused] block, plus [UNK]) that the corpus
    batches never look up, so the recovery trains every row the tokenizer can emit.
    """
    name = "encoder.embeddings.word_embeddings"
    seen = token_counts(zm.model, [name], batches)[name] > 0  # [V]
    tok = zm.tokenizer.hf  # the Hugging Face tokenizer (special-token ids)
    ids = [i for i in range(999, seen.numel()) if not seen[i]] + ([tok.unk_token_id] if not seen[tok.unk_token_id] else [])
    order = torch.tensor(ids)[torch.randperm(len(ids), generator=torch.Generator().manual_seed(0))]  # [U]
    like = batches[0]
    out: list[dict[str, torch.Tensor]] = []
    pos, real = 0, 0
    while len(out) < steps and real < len(batches):
        if len(out) % (every + 1) == every:
            take = torch.arange(pos, pos + 32 * 14) % order.numel()
            pos += 32 * 14
            body = order[take].view(32, 14)  # [32, 14]
            x = torch.cat([torch.full((32, 1), tok.cls_token_id), body, torch.full((32, 1), tok.sep_token_id)], 1)
            b = {"input_ids": x, "attention_mask": torch.ones_like(x), "_cover": torch.ones(1)}
            if "token_type_ids" in like:
                b["token_type_ids"] = torch.zeros_like(x)
            out.append(b)
        else:
            out.append(batches[real])
            real += 1
    log(f"vocabulary cover: {len(ids)} unseen rows, {sum(1 for b in out if '_cover' in b)} cover batches")
    return out


def refit_rows(args: argparse.Namespace, zm: Any, student: torch.nn.Module, ctx: Context,
               rows: dict[str, Any], tmp: Path) -> None:
    """Score each ``--refit`` variant (codes of rows the recovery corpus never looked up, re-fitted); dev picks."""
    if not args.refit:
        return
    name = "encoder.embeddings.word_embeddings"
    seen = token_counts(student, [name], ctx.unlabeled_data)[name] > 0  # [V]
    dense = zm.model.get_submodule(name).weight.detach()  # [V, H], the teacher's table
    best = ("factorized_frequency_distilled", rows["factorized_frequency_distilled"]["stsb"].get("dev", 0.0))
    for how in args.refit:
        model = copy.deepcopy(student)
        try:
            n = refit_unseen_rows(model.get_submodule(name), dense, seen, how)
        except ValueError as exc:  # e.g. 'map' with fewer seen rows than H (a smoke run)
            log(f"refit {how} skipped: {exc}")
            continue
        key = f"refit_{how}"
        rows[key] = {"stsb": stsb(model, zm), **sizes(model, zm, tmp / key), "rows_refit": n,
                     "rows_seen": int(seen.sum())}
        log(f"{key}: {rows[key]}")
        if rows[key]["stsb"].get("dev", 0.0) > best[1]:
            best = (key, rows[key]["stsb"]["dev"])
    rows["chosen"] = best[0]


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--exact-rows", type=int, default=0,
                    help="share.factorized_embedding exact_rows: the K most frequent rows stay exact")
    ap.add_argument("--objective", choices=("embedding", "intermediate"), default="embedding",
                    help="recovery: distill.embedding (pooled cosine) or distill.intermediate (every block's "
                         "hidden states, 1:1, plus the pooled cosine)")
    ap.add_argument("--smoothing", type=float, default=1.0,
                    help="added to every row's count in the frequency-weighted SVD (larger: closer to the plain SVD)")
    ap.add_argument("--probe-smoothing", type=float, nargs="+", default=None, metavar="S",
                    help="only score the untrained factorization at each smoothing (dev picks; writes NAME.json)")
    ap.add_argument("--tt-rank", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--baselines", action="store_true",
                    help="only add the untrained svd-init and TT rows (STS-B dev) to an existing result file")
    ap.add_argument("--name", default="minilm_embedding", help="result file benchmarks/results/NAME.json")
    ap.add_argument("--skip-zero-shot", action="store_true", help="do not score the student before distillation")
    ap.add_argument("--refit", nargs="*", default=["pinv", "map"], choices=("pinv", "map"),
                    help="after recovery, re-fit the codes of rows the corpus never looked up (each variant scored; "
                         "dev picks)")
    ap.add_argument("--cover-unseen", type=int, default=0, metavar="EVERY",
                    help="after every EVERY corpus batches insert one batch of [CLS] + 14 vocabulary ids the corpus "
                         "never uses + [SEP], so every row gets a gradient (0: off; vocabulary only, no test text)")
    ap.add_argument("--save", default=None, help="also save the recovered student (before any refit) to this folder")
    ap.add_argument("--smoke", action="store_true", help="check the plumbing: no STS-B scoring, no result file")
    args = ap.parse_args(argv)
    if args.smoke:
        globals()["score"] = lambda *a: 0.0
    torch.set_num_threads(args.threads)
    cmd = ("python benchmarks/minilm_embedding.py " + " ".join(argv)).strip()
    zm = zoo.load("zoo:minilm-l6")
    task = zoo.get_task("stsb")
    corpus = task.unlabeled_batches(zm, args.batch, seed=0)
    if args.baselines:
        baselines(args, zm, corpus, cmd)
        return
    if args.probe_smoothing:
        probe_smoothing(args, zm, corpus, cmd)
        return
    out: dict[str, Any] = {"date": datetime.date.today().isoformat(),
                           "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
                           "cpu": int8_isa().cpu_model, "command": cmd, "args": vars(args), "rows": {}}
    rows = out["rows"]
    with tempfile.TemporaryDirectory() as tmp:
        log("fp32")
        rows["fp32"] = {"stsb": stsb(zm.model, zm), **sizes(zm.model, zm, Path(tmp) / "fp32")}
        log(str(rows["fp32"]))
        ctx = Context(unlabeled_data=corpus, teacher=zm.model, progress=False, seed=0)
        recipe = Recipe.from_dict({"name": "minilm-embedding", "steps": [
            {"kind": "share.factorized_embedding", "targets": {"include": ["*word_embeddings"]},
             "with": {"dim": args.dim, "init": "frequency", "data": "unlabeled", "exact_rows": args.exact_rows,
                      "smoothing": args.smoothing}},
        ]})
        student = recipe.run(zm.model, ctx)
        rows["factorized_frequency"] = {"stsb": {} if args.skip_zero_shot else stsb(student, zm),
                                        "word_table_params": word_params(student),
                                        "record": slimkit.records(student)[-1].summary}
        log(f"factorized_frequency: {rows['factorized_frequency']}")
        out["recipe"] = recipe.to_dict()
        loop = {"steps": args.steps, "lr": args.lr, "warmup": args.warmup, "dropout": 0.0, "data": "unlabeled"}
        step = ({"kind": "distill.embedding", "with": {**loop, "cache_teacher": True}}
                if args.objective == "embedding" else
                {"kind": "distill.intermediate", "with": {**loop, "layer_map": "uniform",
                                                          "matches": [{"what": "hidden"}], "logits": "cosine"}})
        distill = Recipe.from_dict({"name": "recover", "steps": [step]})
        out["recipe"]["steps"] += distill.to_dict()["steps"]
        ctx.unlabeled_data = list(corpus)[: args.steps]  # one pass: the teacher cache covers only what is used
        if args.cover_unseen:
            ctx.unlabeled_data = with_cover_batches(ctx.unlabeled_data, zm, args.cover_unseen, args.steps)
            out["cover_batches"] = sum(1 for b in ctx.unlabeled_data if b.get("_cover") is not None)
            ctx.unlabeled_data = [{k: v for k, v in b.items() if k != "_cover"} for b in ctx.unlabeled_data]
        t = time.time()
        student = distill.run(student, ctx)
        out["distill_seconds"] = round(time.time() - t, 1)
        rows["factorized_frequency_distilled"] = {"stsb": stsb(student, zm),
                                                  **sizes(student, zm, Path(tmp) / "student"),
                                                  "distill": slimkit.records(student)[-1].summary}
        log(f"distilled: {rows['factorized_frequency_distilled']}")
        if args.save:
            slimkit.save(student, args.save)
        refit_rows(args, zm, student, ctx, rows, Path(tmp))
    fp32, final = rows["fp32"], rows[rows.get("chosen", "factorized_frequency_distilled")]
    out["headline"] = {
        "word_table_reduction": round(fp32["word_table_params"] / final["word_table_params"], 2),
        "file_reduction": round(fp32["file_bytes"] / final["file_bytes"], 3),
        "file_bytes_saved": fp32["file_bytes"] - final["file_bytes"],
        "profile_bytes_saved": fp32["profile_bytes"] - final["profile_bytes"],
        "stsb_test_delta": round(final["stsb"]["test"] - fp32["stsb"]["test"], 2),
        "stsb_dev_delta": round(final["stsb"]["dev"] - fp32["stsb"]["dev"], 2),
        "row": rows.get("chosen", "factorized_frequency_distilled"),
    }
    if args.smoke:
        print(json.dumps(out, indent=1))
        return
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{args.name}.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out["headline"]))


if __name__ == "__main__":
    main(sys.argv[1:])
