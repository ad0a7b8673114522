"""MiniLM embedding shrink: vocabulary trimming to the SST-2 + STS-B train corpus, then int8 rows.

Usage::

    SLIMKIT_DATA=../shared/data HF_HUB_OFFLINE=1 python benchmarks/minilm_vocab.py

Prints the ``prune.vocab`` and ``quantize.embedding`` record summaries, STS-B test Spearman
(and embedding cosine to fp32) after each step, and slimkit's bytes-on-disk account.
"""
import torch

import slimkit
from slimkit import Context, measure, zoo
from slimkit.core import Targets
from slimkit.prune.vocab import VocabPrune
from slimkit.quantize.embedding import EmbeddingQuant
from slimkit.zoo.data import read_sst2, read_stsb

torch.set_num_threads(1)
zm = zoo.load("zoo:minilm-l6")
task = zoo.get_task("stsb")
s1, s2, _ = read_stsb("train")
sst, _ = read_sst2("train")
texts = list(dict.fromkeys([*s1, *s2, *sst]))
batches = [zm.tokenizer.encode(texts[i:i+256], 128) for i in range(0, len(texts), 256)]
ctx = Context(calib_data=batches)
t = slimkit.apply(zm.model, VocabPrune(), Targets(), ctx)
rec = slimkit.records(t)[-1]
print(rec.summary)
q = slimkit.apply(t, EmbeddingQuant(bits=8), Targets(include=("*word_embeddings*",)), Context())
print(slimkit.records(q)[-1].summary)
for name, m in (("trim", t), ("trim+int8 emb", q)):
    print(name, task.evaluate(m, zm, reference=zm.model), measure.profile(m, zm.example_inputs(1)).bytes_on_disk)
print("fp32", measure.profile(zm.model, zm.example_inputs(1)).bytes_on_disk)
