#!/usr/bin/env bash
# MLLM-MSR text-only with SmolLM2-135M-Instruct vs Pop on the same candidate lists (ml-latest-small, a subset of
# users). A 135M *text* model, not the papers' 7B MLLMs. Usage (from the repository root, PYTHONPATH=src):
#   N=60 SEED=0 EPOCHS=2 OUT=/tmp/llmrec-ml bash benchmarks/llmrec_ml_small.sh
# N: users that get a preference summary (the first N user ids; every ml-latest-small user has >= 20 ratings, so
# all are eligible for history 5) and hence lists; split 8:1:1 over them.
set -euo pipefail
N=${N:-60}; SEED=${SEED:-0}; EPOCHS=${EPOCHS:-2}; OUT=${OUT:-/tmp/llmrec-ml}; PY=${PY:-python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
M="$PY -m mmseqrec"
t() { local s=$(date +%s.%N); "$@"; echo "TIME $(echo "$(date +%s.%N) - $s" | bc) s: $*  | $(uptime)"; }
[ -d "$OUT/data" ] || t $M prepare /work/shared/data/ml-latest-small --format movielens --out "$OUT/data"
t $M enrich "$OUT/data" --task user-preference --mode recurrent --block-size 3 --max-history 5 --limit "$N" \
    --backend offline --max-new-tokens 64 --threads 1 --no-progress
t $M llmrec candidates "$OUT/data" --out "$OUT/lists-$SEED.parquet" --with-preferences --seed "$SEED" --overwrite
t $M llmrec train --method mllm-msr --data "$OUT/data" --candidates "$OUT/lists-$SEED.parquet" --model smollm2 \
    --out "$OUT/msr-$SEED" --epochs "$EPOCHS" --seed "$SEED" --batch-size 4 --max-length 512 --overwrite
t $M train --data "$OUT/data" --model pop --out "$OUT/pop" --device cpu || true
t $M evaluate "$OUT/pop" --protocol "candidates:file=$OUT/lists-$SEED.parquet" --split both
$M compare "$OUT/pop" "$OUT/msr-$SEED" --protocol "candidates:file=$OUT/lists-$SEED.parquet"
