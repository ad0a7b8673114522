#!/usr/bin/env bash
# Structured pruning figures for docs/results.md.
# Run from the repo root after `make install`:  bash benchmarks/pruning.sh
# Writes benchmarks/results/pruning-*.json and prints the tables.
set -euo pipefail
cd "$(dirname "$0")/.."
export SLIMKIT_DATA=${SLIMKIT_DATA:-$(cd ../shared/data 2>/dev/null && pwd)}
export HF_HUB_OFFLINE=1
SK=.venv/bin/slimkit
OUT=${OUT:-$(mktemp -d)}
R=benchmarks/results

# 1. MiniLM: 4 of 12 heads and half the FFN neurons removed in every layer; STS-B test Spearman
#    before/after (no recovery training), then the paired latency at batch 32 x 128 tokens.
$SK compress --model zoo:minilm-l6 --recipe minilm-prune --task stsb --out "$OUT/minilm-prune" --overwrite --json > $R/pruning-minilm.json
$SK bench "$OUT/minilm-prune" --batch-size 32 --seq-len 128 --rounds ${ROUNDS:-8} --json > $R/pruning-minilm-bench32.json
$SK bench "$OUT/minilm-prune" --batch-size 1 --seq-len 128 --rounds ${ROUNDS:-8} --json > $R/pruning-minilm-bench1.json

# 2. EfficientNet-lite0: 30 % of channels by Taylor importance + adaptive BN; ImageNet-sample agreement.
$SK compress --model zoo:efficientnet-lite0 --recipe efficientnet-taylor --task imagenet-sample --out "$OUT/effnet" --overwrite --json > $R/pruning-effnet.json
$SK bench "$OUT/effnet" --batch-size 1 --rounds ${ROUNDS:-8} --json > $R/pruning-effnet-bench1.json

# 3. digits: 90 % unstructured sparsity with the cubic schedule and fine-tuning.
.venv/bin/python benchmarks/digits_sparsity.py > $R/pruning-digits.md; cat $R/pruning-digits.md
.venv/bin/python benchmarks/make_results.py  # docs/results.md
