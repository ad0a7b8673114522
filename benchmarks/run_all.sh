#!/usr/bin/env bash
# Reproduce the comparison tables (README, docs/results.md): every slimkit preset against the other toolkits,
# one script per model, each in a single interleaved run on the same inputs and threads.
#
#   bash benchmarks/run_all.sh            # after `make install` (or `make test`)
#
# Writes benchmarks/results/compare_{minilm,efficientnet,digits}.{md,json,png} and prints
# the tables. Budget: under 30 minutes on a quiet 2-core machine (the minilm-fast
# distillation is about half of it). Run it on an otherwise idle machine: the figures are
# latency ratios and a busy CPU makes them noisy.
set -euo pipefail
cd "$(dirname "$0")/.."
export SLIMKIT_DATA=${SLIMKIT_DATA:-$(cd ../shared/data 2>/dev/null && pwd)}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=.venv/bin/python
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
start=$(date +%s)
stamp() { echo "[run_all $(( $(date +%s) - start ))s] $*" >&2; }

stamp "1/4 minilm-fast: slimkit compress (prune layers + FFN, distil, 4-bit embeddings, PT2E int8)"
.venv/bin/slimkit compress --model zoo:minilm-l6 --recipe minilm-fast --task stsb --out "$OUT/minilm-fast" \
  --overwrite > "$OUT/minilm-fast.report.txt"
stamp "2/4 MiniLM comparison"
$PY benchmarks/compare_minilm.py --fast "$OUT/minilm-fast" --rounds "${ROUNDS:-8}"
stamp "3/4 EfficientNet comparison"
$PY benchmarks/compare_efficientnet.py
stamp "4/4 digits comparison"
$PY benchmarks/compare_digits.py
$PY benchmarks/make_results.py  # docs/results.md
stamp "done; artifacts in $OUT"
