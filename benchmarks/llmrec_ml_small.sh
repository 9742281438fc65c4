#!/usr/bin/env bash
# Issue #12 "Real results": MLLM-MSR and MMSRARec text-only with SmolLM2-135M-Instruct against Pop, SASRec and
# DMESR (text views) on ONE candidate file of ml-latest-small, 3 seeds; the table of docs/results.md ("Issue #12").
# A 135M *text* model, not the papers' 7B MLLMs. Usage (from the repository root, PYTHONPATH=src):
#   N=100 EPOCHS=2 OUT=/tmp/llmrec12 nice -n 10 bash benchmarks/llmrec_ml_small.sh
# N: users that get a preference summary (the first N user ids; every ml-latest-small user has >= 20 ratings, so
# all are eligible for history 5) and hence lists, split 8:1:1 by `llmrec candidates` (seed 0). Summaries are
# generated once (resumable cache) and reused by every seed; the seeds vary the SFT (LoRA init, negatives, order).
# SAS: directory holding trained SASRec runs sasrec-{42,43,44} on this dataset (ID-only, table (b)'s recipe); when
# absent they are trained here. DMESR (text view only, as table (b)) is trained here with DMESR_SET's recipe.
# MMSRARec (SASRec seed 42 as its similar-user retriever): its keyword summariser SmolLM2 is GRPO-tuned
# (GRPO_STEPS steps on 64 items, held-out reward before/after in DATA/enrich/models/*/grpo.json), then generates
# keywords (KW_TOKENS new tokens at most) for exactly the items the lists need (`llmrec keyword-items`: histories,
# all candidates, similar users' next items); runs mmkw-SEED. The ablation row "MMSRARec (item text)" puts the
# items' own text (categories) in place of the keywords (--keywords item-text, no GRPO), seeds MM_TEXT_SEEDS.
set -euo pipefail
N=${N:-100}; EPOCHS=${EPOCHS:-2}; MM_EPOCHS=${MM_EPOCHS:-1}; OUT=${OUT:-/tmp/llmrec12}; PY=${PY:-python}
SAS=${SAS:-$OUT/seq}; SEEDS=${SEEDS:-"0 1 2"}; MM_SEEDS=${MM_SEEDS:-$SEEDS}; SEQ_SEEDS=${SEQ_SEEDS:-"42 43 44"}
MM_TEXT_SEEDS=${MM_TEXT_SEEDS:-0}; GRPO_STEPS=${GRPO_STEPS:-20}; KW_TOKENS=${KW_TOKENS:-24}
DMESR_SET=${DMESR_SET:-"--set train.windows=last --set train.epochs=10 --set train.patience=0"}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
M="$PY -m mmseqrec"; D="$OUT/data"; L="$OUT/lists.parquet"; P="candidates:file=$L"
t() { /usr/bin/time -f "TIME %U user %S sys %e wall: $*" "$@"; uptime; }
[ -d "$D" ] || t $M prepare /work/shared/data/ml-latest-small --format movielens --out "$D"
t $M enrich "$D" --task user-preference --mode recurrent --block-size 3 --max-history 5 --limit "$N" \
    --backend offline --max-new-tokens 64 --threads 1 --no-progress
[ -f "$D/embed/text.safetensors" ] || t $M embed "$D" --source text --encoder all-MiniLM-L6-v2 --out text
[ -f "$L" ] || t $M llmrec candidates "$D" --out "$L" --with-preferences --seed 0
# sequential runs: trained on every user's training prefix (leave-one-out), scored on the file's lists
[ -d "$OUT/seq/pop" ] || t $M train --data "$D" --model pop --out "$OUT/seq/pop" --device cpu
for s in $SEQ_SEEDS; do
  [ -d "$SAS/sasrec-$s" ] || t $M train --data "$D" --model sasrec --out "$SAS/sasrec-$s" --seed "$s" --device cpu \
      --set model.max_len=50 --set model.dropout=0.2 --set objective.name=ce --set train.epochs=10 \
      --set train.batch_size=128 --set train.lr=0.002 --set train.patience=0 --set train.num_threads=1
  [ -d "$OUT/seq/dmesr-$s" ] || t $M train -c configs/dmesr.yaml --data "$D" --out "$OUT/seq/dmesr-$s" --seed "$s" \
      --device cpu --set item_encoder.image_view=null --set item_encoder.text_view=text \
      --set item_encoder.both_view=null --set item_encoder.raw_text=text --set item_encoder.raw_tokens=null \
      --set item_encoder.combine=concat --set train.num_threads=1 --set train.progress=false $DMESR_SET
done
for r in "$OUT/seq/pop" "$SAS"/sasrec-* "$OUT"/seq/dmesr-*; do
  t $M evaluate "$r" --data "$D" --protocol "$P" --split both
done
for s in $SEEDS; do
  [ -d "$OUT/msr-$s" ] || t $M llmrec train --method mllm-msr --data "$D" --candidates "$L" --model smollm2 \
      --out "$OUT/msr-$s" --epochs "$EPOCHS" --seed "$s" --batch-size 4 --max-length 512
done
[ -f "$OUT/kw-items.txt" ] || t $M llmrec keyword-items "$D" --candidates "$L" --retriever "$SAS/sasrec-42" \
    --out "$OUT/kw-items.txt"
[ -f "$D/enrich/item-keywords.parquet" ] || t $M enrich "$D" --task item-keywords --backend offline --tune grpo \
    --tune-steps "$GRPO_STEPS" --tune-items 64 --only "$OUT/kw-items.txt" --max-new-tokens "$KW_TOKENS" \
    --threads 1 --no-progress --device cpu
for s in $MM_SEEDS; do
  [ -d "$OUT/mmkw-$s" ] || t $M llmrec train --method mmsrarec --retriever "$SAS/sasrec-42" \
      --data "$D" --candidates "$L" --model smollm2 --out "$OUT/mmkw-$s" --epochs "$MM_EPOCHS" --seed "$s" \
      --batch-size 4 --max-length 512
done
for s in $MM_TEXT_SEEDS; do
  [ -d "$OUT/mm-$s" ] || t $M llmrec train --method mmsrarec --keywords item-text --retriever "$SAS/sasrec-42" \
      --data "$D" --candidates "$L" --model smollm2 --out "$OUT/mm-$s" --epochs "$MM_EPOCHS" --seed "$s" \
      --batch-size 4 --max-length 512
done
$PY benchmarks/llmrec_table.py --protocol "$P" --against Pop --against SASRec "Pop=$OUT/seq/pop" \
    "SASRec=$(ls -d "$SAS"/sasrec-* | paste -sd,)" "DMESR=$(ls -d "$OUT"/seq/dmesr-* | paste -sd,)" \
    "MLLM-MSR=$(ls -d "$OUT"/msr-* | paste -sd,)" "MMSRARec=$(ls -d "$OUT"/mmkw-* | paste -sd,)" \
    "MMSRARec (item text)=$(ls -d "$OUT"/mm-* | paste -sd,)"
