"""torchrun with 2 gloo processes on CPU matches a single process at the same effective batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from helpers import write_cycle_dataset

N_USERS, N_ITEMS, SEQ_LEN = 40, 30, 10
SETS = ["train.epochs=2", "train.batch_size=16", "train.lr=0.01", "train.max_len=8", "train.progress=false",
        "train.patience=0", "train.num_threads=1", "item_encoder.dim=16", "objective.name=ce",
        "model.dropout=0.0", "model.n_layers=1", "eval.ks=[1,5,10]"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = write_cycle_dataset(tmp_path_factory.mktemp("data") / "ds", N_USERS, N_ITEMS, SEQ_LEN)
    # unequal sequence lengths, so that process shards hold different numbers of targets
    df = pl.read_parquet(root / "interactions.parquet")
    df = df.filter(pl.col("timestamp") % 1000 >= pl.col("user") % 5)
    df.write_parquet(root / "interactions.parquet")
    man = json.loads((root / "manifest.json").read_text())
    man["n_interactions"] = df.height
    (root / "manifest.json").write_text(json.dumps(man))
    return root


def _train(data: Path, out: Path, nproc: int) -> subprocess.CompletedProcess:
    args = ["-m", "mmseqrec", "train", "--data", str(data), "--model", "sasrec", "--out", str(out),
            "--device", "cpu", "--seed", "3", *[a for s in SETS for a in ("--set", s)]]
    if nproc > 1:
        args = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], check=False, capture_output=True, text=True, env=env, timeout=600)


def test_two_gloo_processes_match_single_process(data_dir, tmp_path):
    one = _train(data_dir, tmp_path / "one", 1)
    assert one.returncode == 0, one.stderr[-2000:]
    two = _train(data_dir, tmp_path / "two", 2)
    assert two.returncode == 0, two.stderr[-3000:]
    m1 = json.loads((tmp_path / "one" / "metrics.json").read_text())
    m2 = json.loads((tmp_path / "two" / "metrics.json").read_text())
    # same training losses up to float rounding (gradients are summed in another order); the weights are not
    # compared: AdamW turns the float noise of parameters with an exactly-zero gradient (attention key bias)
    # into full-size steps that do not change any score
    l1 = [json.loads(ln)["loss"]["loss"] for ln in (tmp_path / "one" / "log.jsonl").read_text().splitlines()]
    l2 = [json.loads(ln)["loss"]["loss"] for ln in (tmp_path / "two" / "log.jsonl").read_text().splitlines()]
    assert len(l1) == len(l2) == 2
    np.testing.assert_allclose(l2, l1, rtol=1e-5)
    for split in ("valid", "test"):
        assert m2[split]["n_cases"] == m1[split]["n_cases"] == N_USERS
        for k, v in m1[split].items():
            assert abs(m2[split][k] - v) <= 1.0 / N_USERS + 1e-9, (split, k)  # at most one case flips
    assert m2["best_epoch"] == m1["best_epoch"]
    r1 = pl.read_parquet(tmp_path / "one" / "ranks.parquet")
    r2 = pl.read_parquet(tmp_path / "two" / "ranks.parquet")
    assert r1["user"].to_list() == r2["user"].to_list()  # gathered back in the original case order
    assert (r1["rank"] != r2["rank"]).sum() <= 1
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
