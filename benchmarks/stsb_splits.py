"""STS-B dev and test Spearman x100 of a saved slimkit folder (and of the dense teacher with --teacher).

    SLIMKIT_DATA=... python benchmarks/stsb_splits.py OUT_DIR [--teacher]

`slimkit compress --task stsb` reports the test split; recipe settings are chosen on dev,
which this prints beside it (same embedding and scoring code as the task).
"""
from __future__ import annotations

import sys

import torch

from slimkit import zoo
from slimkit.app.pipeline import load_artifact
from slimkit.zoo.data import read_stsb
from slimkit.zoo.task_base import row_cosine, spearman
from slimkit.zoo.text_tasks import embed


def score(model: torch.nn.Module, tokenizer: object, split: str) -> float:
    s1, s2, gold = read_stsb(split)
    texts = list(dict.fromkeys(s1 + s2))
    pos = {t: i for i, t in enumerate(texts)}
    emb = embed(model, tokenizer, texts)
    a = emb[torch.tensor([pos[t] for t in s1])]
    b = emb[torch.tensor([pos[t] for t in s2])]
    return 100 * spearman(row_cosine(a, b).numpy(), gold)


def main(argv: list[str]) -> None:
    model, zm = load_artifact(argv[0])
    print(f"student dev {score(model, zm.tokenizer, 'dev'):.2f} test {score(model, zm.tokenizer, 'test'):.2f}")
    if "--teacher" in argv:
        t = zoo.load("zoo:minilm-l6")
        print(f"teacher dev {score(t.model, t.tokenizer, 'dev'):.2f} test {score(t.model, t.tokenizer, 'test'):.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
