"""Recovery of pruned MiniLM by embedding distillation on unlabelled sentences (SST-2 + STS-B train).

Usage: python benchmarks/minilm_recovery.py STEPS LR   (e.g. 1200 3e-4)
Prunes zoo:minilm-l6 with the minilm-prune preset (4/12 heads, 1/2 FFN), distils it towards the
unpruned model with a cosine loss on sentence embeddings (no STS-B labels), and prints STS-B test
Spearman before and after.
"""
import random
import sys
import time

import torch

from slimkit import Context, Recipe, zoo
from slimkit.distill.engine import distill
from slimkit.distill.losses import cosine_loss
from slimkit.zoo.data import read_sst2, read_stsb

torch.manual_seed(0)
steps = int(sys.argv[1])
lr = float(sys.argv[2])
zm = zoo.load("zoo:minilm-l6")
task = zoo.get_task("stsb")
pruned = Recipe.load("minilm-prune").run(zm.model, Context(example_inputs=zm.example_inputs(1)))
s1, s2, _ = read_stsb("train")
sst = read_sst2("train")
sents = list(dict.fromkeys(s1 + s2 + [s for s in sst[0]] if isinstance(sst, tuple) else s1 + s2))
random.Random(0).shuffle(sents)
bs = 32
batches = [zm.tokenizer.encode(sents[i:i+bs], 64) for i in range(0, min(len(sents), steps * bs), bs)]
print(len(sents), len(batches), flush=True)
print("pruned, before distillation:", task.evaluate(pruned, zm), flush=True)
t = time.time()
r = distill(pruned, zm.model, batches, loss=lambda s, te, b: cosine_loss(s, te), steps=steps, lr=lr, schedule="linear", warmup=steps // 10, seed=0)
print("train s", round(time.time() - t, 1), "final loss", r.final_loss, flush=True)
print(task.evaluate(pruned, zm))
