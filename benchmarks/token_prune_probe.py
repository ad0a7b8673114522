"""Zero-shot probes for ``attention.token_prune`` on MiniLM: STS-B **dev** only, no distillation.

Usage (each spec about 20 s at 1 thread; choose on dev, never on test)::

    SLIMKIT_DATA=../shared/data HF_HUB_OFFLINE=1 python benchmarks/token_prune_probe.py \\
        keep=1,.6,.6,.6,.6,.6/score=key_norm keep=1,1,.7,.5,.4,.3/reduce=merge keep=1,.6,.6,.6,.6,.6/score=mean/min_keep=12

A spec is ``/``-separated ``key=value`` pairs of :class:`TokenPruneAttention` fields (``keep`` as
comma-separated fractions). ``probe_score=random`` replaces the score function for that
spec only (a reference point, not an option of the kind). Prints STS-B dev Spearman x100, the share of
token-blocks the encoder processes on STS-B dev at natural lengths, and the share at 128 tokens.
``--test`` also prints the test split: only to *report* a configuration already chosen on dev.
"""
from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from unittest import mock

import torch

import slimkit
from slimkit import zoo
from slimkit.attention import token_math as tm
from slimkit.attention.token_prune import TokenPruneAttention
from slimkit.core import Targets
from slimkit.zoo.data import read_stsb

sys.path.insert(0, str(Path(__file__).parent))
from stsb_splits import score  # noqa: E402


def random_scores(q: torch.Tensor, k: torch.Tensor, alive: torch.Tensor, heads: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(int(alive.sum()))
    return torch.rand(alive.shape, generator=g)


PROBE_SCORES = {"random": random_scores}


def parse(spec: str) -> tuple[TokenPruneAttention, str | None]:
    kv = dict(p.split("=", 1) for p in spec.split("/"))
    probe = kv.pop("probe_score", None)
    keep = tuple(float(f) for f in kv.pop("keep").split(","))
    cfg = TokenPruneAttention(keep=keep, score=kv.pop("score", "cls"), reduce=kv.pop("reduce", "drop"),
                              min_keep=int(kv.pop("min_keep", 0)))
    if kv:
        raise SystemExit(f"unknown keys {sorted(kv)}")
    return cfg, probe


def main(specs: list[str]) -> None:
    with_test = "--test" in specs
    specs = [s for s in specs if s != "--test"]
    torch.set_num_threads(1)
    zm = zoo.load("zoo:minilm-l6")
    fp32 = zm.model.eval()
    s1, s2, _ = read_stsb("dev")
    lengths = zm.tokenizer.encode(list(dict.fromkeys(s1 + s2)), max_length=128)["attention_mask"].sum(1)
    if not specs:
        print(f"fp32 dev {score(fp32, zm.tokenizer, 'dev'):.2f}")
    for spec in specs:
        cfg, probe = parse(spec)
        model = slimkit.apply(fp32, cfg, Targets())
        share = sum(float(tm.keep_counts(lengths, f, cfg.min_keep).sum()) for f in cfg.keep)
        share /= len(cfg.keep) * float(lengths.sum())
        at128 = sum(float(tm.keep_counts(torch.tensor([128]), f, cfg.min_keep).sum()) for f in cfg.keep)
        at128 /= len(cfg.keep) * 128
        t0 = time.time()
        fn = PROBE_SCORES[probe] if probe else None
        with mock.patch.multiple(tm, cls_scores=fn, mean_scores=fn) if fn else contextlib.nullcontext():
            dev = score(model, zm.tokenizer, "dev")
            test = f"  test {score(model, zm.tokenizer, 'test'):6.2f}" if with_test else ""
        print(f"{spec:60s} dev {dev:6.2f}{test}  share dev {share:.3f}  share@128 {at128:.3f}  ({time.time() - t0:.0f} s)",
              flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
