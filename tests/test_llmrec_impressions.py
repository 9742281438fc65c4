"""Sequential runs and LLM recommenders on one impression candidate file (MMSRARec's protocol, ``llmrec
candidates --split impression``): ``mmseqrec evaluate RUN --protocol candidates:file=LISTS`` scores the file's
rows (histories ending at each row's ``position``, not the leave-one-out cases), and ``llmrec train`` /
``llmrec evaluate`` accept the same file, end to end on tiny data."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
from helpers import run_cli, write_cycle_dataset
from test_llmrec_candidates import _write_impressions

from mmseqrec.data.dataset import DatasetDir
from mmseqrec.data.split import leave_one_out
from mmseqrec.llmrec.candidates import read_candidate_set
from mmseqrec.train.run import item_popularity


def test_impression_file_scored_by_sequential_and_llm_runs(tmp_path):
    from mmseqrec.llmrec.random_lm import build_random_lm

    data = write_cycle_dataset(tmp_path / "data", n_users=30, n_items=40, seq_len=9)
    _write_impressions(data)
    lists = tmp_path / "imp.parquet"
    assert 0 == run_cli(["llmrec", "candidates", str(data), "--out", str(lists), "--split", "impression",
                         "--history", "3", "--negatives", "10", "--seed", "2"])
    cs = read_candidate_set(lists)
    ds = DatasetDir(data)
    loo = leave_one_out(ds.sequences)
    is_loo = [(int(u), int(t)) in set(zip(loo.test.users.tolist(), loo.test.targets.tolist(), strict=True))
              for u, t in zip(cs.users, cs.targets, strict=True)]
    assert not all(is_loo)  # impression rows are not (only) leave-one-out cases
    proto = f"candidates:file={lists}"

    # Pop: the rank of each row's target is known by hand from the training counts (ties count against it)
    pop = tmp_path / "pop"
    assert 0 == run_cli(["train", "--data", str(data), "--model", "pop", "--out", str(pop), "--device", "cpu"])
    assert 0 == run_cli(["evaluate", str(pop), "--protocol", proto, "--split", "both"])
    rec = json.loads(next(pop.glob("eval-candidates-file-*.json")).read_text())
    counts = item_popularity(loo.seqs, loo.train_end)
    for split in ("valid", "test"):
        rows = cs.rows(split)
        assert rec[split]["n_cases"] == rows.size
    ranks = pl.read_parquet(pop / "ranks-candidates-file-imp.parquet")
    rows = cs.rows("test")
    expect = sorted((int(cs.users[i]), int(cs.targets[i]),
                     int((counts[cs.candidates[i]] >= counts[cs.targets[i]]).sum()) - 1) for i in rows)
    got = sorted(zip(ranks["user"].to_list(), ranks["target"].to_list(), ranks["rank"].to_list(), strict=True))
    assert got == expect

    # SASRec: scored on the same rows; it is also MMSRARec's similar-user retriever
    sas = tmp_path / "sas"
    assert 0 == run_cli(["train", "--data", str(data), "--model", "sasrec", "--out", str(sas), "--epochs", "1",
                         "--device", "cpu", "--set", "model.n_layers=1"])
    assert 0 == run_cli(["evaluate", str(sas), "--protocol", proto, "--split", "both"])
    rec = json.loads(next(sas.glob("eval-candidates-file-*.json")).read_text())
    assert rec["test"]["n_cases"] == cs.rows("test").size

    # MMSRARec (tiny random LM) trains and re-scores on the same file
    lm = build_random_lm(tmp_path / "lm", seed=3)
    run = tmp_path / "mm"
    assert 0 == run_cli(["llmrec", "train", "--method", "mmsrarec", "--data", str(data), "--candidates",
                         str(lists), "--model", str(lm), "--out", str(run), "--max-train-users", "3",
                         "--max-length", "400", "--retriever", str(sas), "--keywords", "item-text"])
    m = json.loads((run / "metrics.json").read_text())
    assert m["test"]["n_cases"] == cs.rows("test").size and m["valid"]["n_cases"] == cs.rows("valid").size
    assert 0 == run_cli(["llmrec", "evaluate", str(run)])
    again = json.loads((run / "metrics.json").read_text())
    assert again["test"]["AUC"] == m["test"]["AUC"]
    llm_ranks = pl.read_parquet(run / "ranks.parquet")
    assert sorted(zip(llm_ranks["user"].to_list(), llm_ranks["target"].to_list(), strict=True)) == sorted(
        (int(cs.users[i]), int(cs.targets[i])) for i in rows)
    assert np.isfinite(llm_ranks["rank"].to_numpy()).all()
