"""``mmseqrec llmrec candidates``: MLLM-MSR lists (8:1:1 users, 1 + N never-interacted), scored by a sequential
run through ``mmseqrec evaluate --protocol candidates:file=FILE``."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from helpers import run_cli, write_cycle_dataset

from mmseqrec.data.dataset import DatasetDir, SequenceData
from mmseqrec.data.split import leave_one_out
from mmseqrec.errors import InputError
from mmseqrec.evaluate import evaluate_ranking
from mmseqrec.llmrec.candidates import build_candidate_set, read_candidate_set, write_candidate_set


def _random_seqs(n_users=60, n_items=80, seed=3):
    rng = np.random.default_rng(seed)
    seqs = [rng.choice(np.arange(1, n_items + 1), size=int(rng.integers(3, 15)), replace=False).tolist()
            for _ in range(n_users)]
    return SequenceData.from_lists(seqs, n_items=n_items)


def test_lists_never_hold_an_interacted_item_and_split_is_8_1_1():
    seqs = _random_seqs()
    cs = build_candidate_set(seqs, history=5, negatives=20, seed=7)
    eligible = int((seqs.lengths[1:] >= 7).sum())
    assert cs.users.size == eligible and cs.n_skipped == seqs.n_users - eligible
    c = cs.counts()
    assert c["train"] == int(np.floor(0.8 * eligible)) and c["valid"] == int(np.floor(0.1 * eligible))
    assert sum(c.values()) == eligible
    assert cs.candidates.shape == (eligible, 21)
    for i, u in enumerate(cs.users):
        seq = seqs.sequence(int(u))
        row = cs.candidates[i]
        assert (row == cs.targets[i]).sum() == 1
        negs = row[row != cs.targets[i]]
        assert not np.isin(negs, seq).any()  # no item of the user's whole sequence
        assert len(set(row.tolist())) == 21
        pos = seq.size - (2 if cs.split[i] == "valid" else 1)  # leave-one-out positions
        assert cs.targets[i] == seq[pos]
        assert cs.history[i].tolist() == seq[pos - 5:pos].tolist()
    # seeded: same seed same lists, another seed other lists
    again = build_candidate_set(seqs, history=5, negatives=20, seed=7)
    assert np.array_equal(again.candidates, cs.candidates) and np.array_equal(again.split, cs.split)
    assert not np.array_equal(build_candidate_set(seqs, history=5, negatives=20, seed=8).candidates, cs.candidates)
    only = build_candidate_set(seqs, history=5, negatives=20, seed=7, only_users=np.arange(1, 21))
    assert set(only.users.tolist()) == set(cs.users.tolist()) & set(range(1, 21))
    assert only.n_skipped == seqs.n_users - only.users.size
    sub = build_candidate_set(seqs, history=5, negatives=20, seed=7, max_users=10)
    assert sub.users.size == 10 and set(sub.users.tolist()) <= set(cs.users.tolist())
    assert sub.n_skipped == seqs.n_users - 10 and sum(sub.counts().values()) == 10


def test_bad_options_are_clear():
    seqs = _random_seqs()
    with pytest.raises(InputError, match="--history"):
        build_candidate_set(seqs, history=0)
    with pytest.raises(InputError, match="--history"):
        build_candidate_set(seqs, history=30)
    with pytest.raises(InputError, match="--negatives"):
        build_candidate_set(seqs, history=3, negatives=75)  # fewer than 75 never-interacted items


def test_file_round_trip_and_split_rows_define_the_cases(tmp_path):
    seqs = _random_seqs()
    cs = build_candidate_set(seqs, history=3, negatives=10, seed=1)
    path = tmp_path / "lists.parquet"
    write_candidate_set(path, cs, seqs.n_items)
    back = read_candidate_set(path, seqs.n_items)
    assert np.array_equal(back.candidates, cs.candidates) and np.array_equal(back.history, cs.history)
    assert back.split.tolist() == cs.split.tolist()
    split = leave_one_out(seqs)
    for name in ("valid", "test"):
        # a scorer that prefers small ids: rank of the target = number of smaller ids in its list
        r = evaluate_ranking(lambda h, c: -c.float(), getattr(split, name), seqs, f"candidates:file={path}",
                             ks=(5,), progress=False)
        rows = cs.rows(name)
        assert sorted(zip(r.users.tolist(), r.targets.tolist(), strict=True)) == sorted(
            zip(cs.users[rows].tolist(), cs.targets[rows].tolist(), strict=True))
        expect = {(int(cs.users[i]), int(cs.targets[i])): int((cs.candidates[i] < cs.targets[i]).sum())
                  for i in rows}
        assert {(int(u), int(t)): int(k) for u, t, k in zip(r.users, r.targets, r.ranks, strict=True)} == expect
        assert r.candidates_file["n_negatives"] == 10


def test_sasrec_run_scored_on_the_file_through_the_cli(tmp_path):
    data = write_cycle_dataset(tmp_path / "data", n_users=40, n_items=30, seq_len=9)
    lists = tmp_path / "lists.parquet"
    assert 0 == run_cli(["llmrec", "candidates", str(data), "--out", str(lists), "--seed", "3"])
    assert 2 == run_cli(["llmrec", "candidates", str(data), "--out", str(lists)])  # exists: refused
    (data / "enrich").mkdir()
    pl.DataFrame({"user": pl.Series(range(1, 11), dtype=pl.Int32), "text": ["likes x"] * 10,
                  "status": ["ok"] * 9 + ["failed"]}).write_parquet(data / "enrich" / "user-preference.parquet")
    sub = tmp_path / "with-pref.parquet"
    assert 0 == run_cli(["llmrec", "candidates", str(data), "--out", str(sub), "--with-preferences"])
    assert sorted(read_candidate_set(sub).users.tolist()) == list(range(1, 10))
    run = tmp_path / "run"
    assert 0 == run_cli(["train", "--data", str(data), "--model", "sasrec", "--out", str(run), "--epochs", "2",
                         "--device", "cpu", "--set", "model.n_layers=1"])
    assert 0 == run_cli(["evaluate", str(run), "--protocol", f"candidates:file={lists}", "--split", "both"])
    rec = json.loads(next(run.glob("eval-candidates-file-*.json")).read_text())
    cs = read_candidate_set(lists)
    assert rec["test"]["n_cases"] == cs.counts()["test"] and rec["valid"]["n_cases"] == cs.counts()["valid"]
    ranks = pl.read_parquet(run / "ranks-candidates-file-lists.parquet")
    test_rows = cs.rows("test")
    assert sorted(ranks["user"].to_list()) == sorted(cs.users[test_rows].tolist())
    assert ranks["rank"].max() <= 20
    ds = DatasetDir(data)
    assert rec["data"]["sha256"] == ds.identity["sha256"]


def test_a_row_that_is_not_a_case_of_its_split_is_named(tmp_path):
    seqs = _random_seqs()
    cs = build_candidate_set(seqs, history=3, negatives=5, seed=2)
    path = tmp_path / "lists.parquet"
    write_candidate_set(path, cs, seqs.n_items)
    df = pl.read_parquet(path)
    row = int(cs.rows("test")[0])  # a test row (target = last item) relabelled valid: not a validation case
    df = df.with_columns(pl.when(pl.int_range(pl.len()) == row).then(pl.lit("valid")).otherwise(pl.col("split"))
                         .alias("split"))
    # without a position column the rows must be leave-one-out cases (with one, the row's own position is the
    # case: tests/test_llmrec_impressions.py)
    df.drop("position").write_parquet(path)
    with pytest.raises(InputError, match="is not a valid case") as e:
        evaluate_ranking(lambda h, c: -c.float(), leave_one_out(seqs).valid, seqs, f"candidates:file={path}",
                         progress=False)
    assert f"line {row + 1}" in str(e.value)
    with pytest.raises(InputError, match="must name"):
        from mmseqrec.data.split import EvalSet

        t = leave_one_out(seqs).test
        evaluate_ranking(lambda h, c: -c.float(), EvalSet(t.users, t.targets, t.hist_end), seqs,
                         f"candidates:file={path}", progress=False)


def _write_impressions(data, n_neg=25, seed=0):
    """One impression per interaction from position 2 on: the clicked item + ``n_neg`` shown items (random, may
    include the user's other items); user 1's impressions show only 3 items (too few negatives)."""
    ds = DatasetDir(data)
    seqs = ds.sequences
    rng = np.random.default_rng(seed)
    rows = {"user": [], "item": [], "timestamp": [], "negatives": []}
    for u in range(1, seqs.n_users + 1):
        lo, hi = seqs.indptr[u], seqs.indptr[u + 1]
        for a in range(lo + 2, hi):
            rows["user"].append(u)
            rows["item"].append(int(seqs.items[a]))
            rows["timestamp"].append(int(seqs.timestamps[a]))
            shown = rng.choice(np.arange(1, seqs.n_items + 1), size=3 if u == 1 else n_neg, replace=False)
            rows["negatives"].append(shown.tolist())
    df = pl.DataFrame(rows, schema={"user": pl.Int32, "item": pl.Int32, "timestamp": pl.Int64,
                                    "negatives": pl.List(pl.Int32)})
    df.write_parquet(data / "impressions.parquet")
    return df


def test_impression_split_lists_and_errors(tmp_path):
    from mmseqrec.llmrec.candidates import build_impression_candidate_set

    data = write_cycle_dataset(tmp_path / "data", n_users=30, n_items=40, seq_len=9)
    ds = DatasetDir(data)
    seqs = ds.sequences
    lists = tmp_path / "imp.parquet"
    assert 2 == run_cli(["llmrec", "candidates", str(data), "--out", str(lists), "--split", "impression"])
    with pytest.raises(InputError, match="no impressions.*--split user"):
        build_impression_candidate_set(data, seqs)
    imp = _write_impressions(data)
    cs = build_impression_candidate_set(data, seqs, history=3, negatives=10, seed=5)
    # eligible: position >= 3 (impressions start at position 2) and >= 10 shown negatives (not user 1)
    n_eligible = 29 * (9 - 3)
    assert cs.users.size == n_eligible and cs.n_skipped == imp.height - n_eligible
    c = cs.counts()
    assert c["train"] == int(np.floor(0.8 * n_eligible)) and c["valid"] == int(np.floor(0.1 * n_eligible))
    assert len({s for u in set(cs.users.tolist()) for s in cs.split[cs.users == u]}) == 3  # lists, not users
    shown = {(int(u), int(i)): set(n) for u, i, n in zip(imp["user"], imp["item"], imp["negatives"], strict=True)}
    for r in range(cs.users.size):
        u, t, p = int(cs.users[r]), int(cs.targets[r]), int(cs.positions[r])
        seq = seqs.sequence(u)
        assert seq[p] == t and cs.history[r].tolist() == seq[p - 3:p].tolist()
        row = cs.candidates[r]
        assert (row == t).sum() == 1 and len(set(row.tolist())) == 11
        assert set(row[row != t].tolist()) <= shown[(u, t)]  # the impression's own shown items
    again = build_impression_candidate_set(data, seqs, history=3, negatives=10, seed=5)
    assert np.array_equal(again.candidates, cs.candidates) and np.array_equal(again.split, cs.split)
    # through the CLI, the file keeps the positions
    assert 0 == run_cli(["llmrec", "candidates", str(data), "--out", str(lists), "--split", "impression",
                         "--history", "3", "--negatives", "10", "--seed", "5"])
    back = read_candidate_set(lists, seqs.n_items)
    assert np.array_equal(back.positions, cs.positions) and np.array_equal(back.candidates, cs.candidates)
    with pytest.raises(InputError, match="--negatives"):
        build_impression_candidate_set(data, seqs, history=3, negatives=30)
    # an impression that is not an interaction is named by its line
    imp.with_columns(pl.when(pl.int_range(pl.len()) == 4).then(pl.lit(999_999, pl.Int64)).otherwise(
        pl.col("timestamp")).alias("timestamp")).write_parquet(data / "impressions.parquet")
    with pytest.raises(InputError, match="not an interaction") as e:
        build_impression_candidate_set(data, seqs)
    assert "line 5" in str(e.value)


def test_impression_rows_are_scored_from_the_file_and_refused_by_mllm_msr(tmp_path):
    from types import SimpleNamespace

    from mmseqrec.llmrec.candidates import build_impression_candidate_set
    from mmseqrec.llmrec.run import _score_split

    data = write_cycle_dataset(tmp_path / "data", n_users=30, n_items=40, seq_len=9)
    _write_impressions(data)
    ds = DatasetDir(data)
    cs = build_impression_candidate_set(data, ds.sequences, history=3, negatives=10, seed=1)
    path = tmp_path / "imp.parquet"
    write_candidate_set(path, cs, ds.n_items)
    cs = read_candidate_set(path, ds.n_items)
    # a scorer that prefers small ids: rank of the target = number of smaller ids in its list
    scorer = SimpleNamespace(score_shared=lambda prompts: -np.asarray([float(p) for p in prompts]))

    def prompt(r, it):  # each list is prompted from its own file row (a user has several rows)
        assert it in cs.candidates[r]
        return str(it)

    prompter = SimpleNamespace(cs=cs, row_of=None, prompt=prompt)
    for name in ("valid", "test"):
        res = _score_split(scorer, prompter, ds, str(path), name, [5])
        rows = cs.rows(name)
        expect = sorted((int(cs.users[i]), int(cs.targets[i]), int((cs.candidates[i] < cs.targets[i]).sum()))
                        for i in rows)
        assert sorted(zip(res.users.tolist(), res.targets.tolist(), res.ranks.tolist(), strict=True)) == expect
    lm = tmp_path / "no-model"  # refused before any model is loaded
    (data / "enrich").mkdir()
    pl.DataFrame({"user": pl.Series(range(1, 31), dtype=pl.Int32), "text": ["likes things"] * 30,
                  "status": ["ok"] * 30}).write_parquet(data / "enrich" / "user-preference.parquet")
    from mmseqrec.llmrec.run import LLMRecConfig, train_llmrec

    with pytest.raises(InputError, match="inside the user's training prefix"):
        train_llmrec(LLMRecConfig(data=str(data), candidates=str(path), model=str(lm)), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_file_without_positions_is_scored_on_the_leave_one_out_cases(tmp_path):
    from types import SimpleNamespace

    from mmseqrec.llmrec.run import _score_split

    data = write_cycle_dataset(tmp_path / "data", n_users=40, n_items=30, seq_len=9)
    ds = DatasetDir(data)
    cs = build_candidate_set(ds.sequences, history=3, negatives=8, seed=4)
    new, old = tmp_path / "new.parquet", tmp_path / "old.parquet"
    write_candidate_set(new, cs, ds.n_items)
    pl.read_parquet(new).drop("position").write_parquet(old)  # a file written before the position column
    scorer = SimpleNamespace(score_shared=lambda prompts: -np.asarray([float(p) for p in prompts]))
    for path in (new, old):
        back = read_candidate_set(path, ds.n_items)
        assert (back.positions is None) == (path == old)
        row_of = np.full(ds.n_users + 1, -1)
        row_of[back.users] = np.arange(back.users.size)

        def prompt(r, it, back=back):
            assert it in back.candidates[r]
            return str(it)

        res = _score_split(scorer, SimpleNamespace(cs=back, row_of=row_of, prompt=prompt), ds, str(path), "test",
                           [5])
        rows = cs.rows("test")
        assert sorted(zip(res.users.tolist(), res.ranks.tolist(), strict=True)) == sorted(
            (int(cs.users[i]), int((cs.candidates[i] < cs.targets[i]).sum())) for i in rows)
