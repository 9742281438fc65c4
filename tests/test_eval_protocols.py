"""evaluate_ranking under full / sampled / candidates protocols, history masking and leakage checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmseqrec.data import SequenceData, leave_one_out
from mmseqrec.data.split import EvalSet
from mmseqrec.errors import InputError
from mmseqrec.evaluate import evaluate_ranking, item_popularity, load_ranks

torch.set_num_threads(1)
N_ITEMS = 30


@pytest.fixture()
def small():
    # user 3 repeats item 2 as its test target
    seqs = SequenceData.from_lists([[1, 2, 3, 4, 5], [6, 7, 8], [2, 9, 10, 2]], n_items=N_ITEMS)
    return seqs, leave_one_out(seqs)


def _const(h, c):
    return torch.zeros(h.shape[0], N_ITEMS + 1) if c is None else torch.zeros(c.shape)


def _neg_id(n_items):
    def fn(h, c):
        if c is None:
            return -torch.arange(n_items + 1, dtype=torch.float32).expand(h.shape[0], -1).clone()
        return -c.float()
    return fn


def test_constant_model_full_is_pessimistic(small):
    seqs, sp = small
    r = evaluate_ranking(_const, sp.test, seqs, "full", ks=(5, 10), progress=False)
    assert r.ranks.tolist() == [N_ITEMS - 1] * 3 and r.ranks.dtype == np.int64
    assert r.metrics["HR@10"] == 0.0 and r.metrics["NDCG@10"] == 0.0 and r.metrics["n_cases"] == 3
    assert r.to_dict()["protocol"] == "full" and r.to_dict()["ties"] == "pessimistic"


def test_constant_model_random_ties_scores_like_random(small):
    seqs, sp = small
    r = evaluate_ranking(_const, sp.test, seqs, "full:ties=random", ks=(10,), progress=False)
    assert r.ranks.tolist() == [(N_ITEMS - 1) / 2] * 3
    assert r.metrics["HR@10"] == pytest.approx(10 / N_ITEMS)
    ndcg = sum(1 / np.log2(i + 2) for i in range(10)) / N_ITEMS
    assert r.metrics["NDCG@10"] == pytest.approx(ndcg)


def test_exclude_history_masks_exactly_earlier_items(small):
    seqs, sp = small
    # constant model: rank = number of unmasked other items
    r = evaluate_ranking(_const, sp.test, seqs, "full", ks=(10,), exclude_history=True, progress=False)
    # u1 history {1,2,3,4}; u2 {6,7}; u3 {2,9,10} but 2 is the target and is never masked
    assert r.ranks.tolist() == [N_ITEMS - 1 - 4, N_ITEMS - 1 - 2, N_ITEMS - 1 - 2]
    # score = -item id: smaller ids rank higher
    r0 = evaluate_ranking(_neg_id(N_ITEMS), sp.test, seqs, "full", ks=(10,), progress=False)
    r1 = evaluate_ranking(_neg_id(N_ITEMS), sp.test, seqs, "full", ks=(10,), exclude_history=True,
                          progress=False)
    assert r0.ranks.tolist() == [4, 7, 1]  # targets 5, 8, 2
    assert r1.ranks.tolist() == [0, 7 - 2, 1]  # u2: 6,7 masked; u3: item 1 still ahead
    assert r1.exclude_history and r1.to_dict()["exclude_history"] is True


def test_histories_left_padded_last_max_len(small):
    seqs, sp = small
    seen = []

    def rec(h, c):
        seen.append(h.clone())
        return _const(h, c)

    evaluate_ranking(rec, sp.test, seqs, "full", max_len=3, progress=False)
    assert torch.cat(seen).tolist() == [[2, 3, 4], [0, 6, 7], [2, 9, 10]]
    seen.clear()
    evaluate_ranking(rec, sp.valid, seqs, "full", max_len=5, progress=False)
    assert torch.cat(seen).tolist() == [[0, 0, 1, 2, 3], [0, 0, 0, 0, 6], [0, 0, 0, 2, 9]]


def test_leave_one_out_no_leakage():
    rng = np.random.default_rng(0)
    lists = [list(rng.permutation(np.arange(1, 41))[: rng.integers(1, 12)]) for _ in range(25)]
    seqs = SequenceData.from_lists(lists, n_items=40)  # items unique within a user: positions == items
    sp = leave_one_out(seqs)
    end = seqs.indptr[1:]
    for i, u in enumerate(sp.valid.users):
        assert sp.train_end[u] <= sp.valid.hist_end[i]          # training never reaches the valid target
        assert sp.valid.hist_end[i] == end[u] - 2
        assert sp.test.hist_end[i] == end[u] - 1
        assert sp.valid.hist_end[i] < sp.test.hist_end[i]       # valid history excludes the test position
        train = sp.train_sequence(u)
        assert sp.valid.targets[i] not in train and sp.test.targets[i] not in train
    # the evaluator's histories never contain the case's own target (nor, for valid, the test target)
    seen = []

    def rec(h, c):
        seen.append(h.clone())
        return torch.zeros(h.shape[0], 41) if c is None else torch.zeros(c.shape)

    for es in (sp.valid, sp.test):
        seen.clear()
        evaluate_ranking(rec, es, seqs, "full", max_len=50, batch_size=4, progress=False)
        hist = torch.cat(seen).numpy()
        assert not np.any(hist == es.targets[:, None])
    seen.clear()
    evaluate_ranking(rec, sp.valid, seqs, "full", max_len=50, progress=False)
    assert not np.any(torch.cat(seen).numpy() == sp.test.targets[:, None])


def _random_data(n_users=40, n_items=60, seed=1):
    rng = np.random.default_rng(seed)
    lists = [list(rng.integers(1, n_items + 1, size=rng.integers(3, 20))) for _ in range(n_users)]
    return SequenceData.from_lists(lists, n_items=n_items)


def test_sampled_negatives_exclude_history_and_are_reproducible():
    seqs = _random_data()
    sp = leave_one_out(seqs)
    got = []

    def rec(h, c):
        got.append(c.clone())
        return torch.sin(c.float() * 1.3 + h[:, -1:].float())

    r1 = evaluate_ranking(rec, sp.test, seqs, "sampled:20", ks=(10,), progress=False)
    c1 = torch.cat(got).numpy()
    got.clear()
    r2 = evaluate_ranking(rec, sp.test, seqs, "sampled:20", ks=(10,), batch_size=7, progress=False)
    c2 = torch.cat(got).numpy()
    got.clear()
    evaluate_ranking(rec, sp.test, seqs, "sampled:20:seed=1", ks=(10,), progress=False)
    c3 = torch.cat(got).numpy()
    assert c1.shape == (len(sp.test), 21)
    np.testing.assert_array_equal(c1, c2)          # same seed, other batch size -> same candidates
    np.testing.assert_array_equal(r1.ranks, r2.ranks)
    assert not np.array_equal(c1, c3)              # another seed -> other candidates
    pos_cols = []
    for i, u in enumerate(sp.test.users):
        row = c1[i]
        t = sp.test.targets[i]
        (where,) = np.nonzero(row == t)
        assert where.size == 1
        pos_cols.append(int(where[0]))
        negs = np.delete(row, where[0])
        history = set(seqs.items[seqs.indptr[u]:sp.test.hist_end[i] + 1].tolist())
        assert len(set(negs.tolist())) == 20 and 0 not in negs
        assert not history & set(negs.tolist())
    assert len(set(pos_cols)) > 3                   # positive not always at one column
    assert set(r1.metrics) >= {"HR@10", "NDCG@10", "MRR@10", "AUC", "AUC_global", "n_cases"}


def test_sampled_constant_model_auc():
    seqs = _random_data()
    sp = leave_one_out(seqs)
    const = lambda h, c: torch.zeros(c.shape)
    r = evaluate_ranking(const, sp.test, seqs, "sampled:10", ks=(10,), progress=False)
    assert np.all(r.ranks == 10) and r.metrics["AUC"] == 0.0 and r.metrics["HR@10"] == 0.0
    r = evaluate_ranking(const, sp.test, seqs, "sampled:10:ties=random", ks=(10,), progress=False)
    assert r.metrics["AUC"] == pytest.approx(0.5) and r.metrics["AUC_global"] == pytest.approx(0.5)
    assert r.metrics["HR@10"] == pytest.approx(10 / 11)


def test_popularity_sampler_follows_weights():
    seqs = _random_data(n_items=80)
    sp = leave_one_out(seqs)
    pop = item_popularity(seqs, sp.train_end)
    assert pop[0] == 0 and pop.sum() == int((sp.train_end - seqs.indptr[:-1]).sum())
    w = np.zeros(81)
    w[1:41] = 1.0  # only items 1..40 may be drawn
    got = []

    def rec(h, c):
        got.append(c.clone())
        return torch.zeros(c.shape)

    evaluate_ranking(rec, sp.test, seqs, "sampled:5:popularity", item_popularity=w, progress=False)
    c = torch.cat(got).numpy()
    negs = c[c != sp.test.targets[:, None]]
    assert negs.max() <= 40
    with pytest.raises(InputError):
        evaluate_ranking(rec, sp.test, seqs, "sampled:5:popularity", progress=False)


def test_not_enough_negatives_is_an_error():
    seqs = SequenceData.from_lists([[1, 2, 3, 4, 5, 6]], n_items=8)
    sp = leave_one_out(seqs)
    with pytest.raises(InputError, match="eligible"):
        evaluate_ranking(_const, sp.test, seqs, "sampled:3", progress=False)
    r = evaluate_ranking(lambda h, c: torch.zeros(c.shape), sp.test, seqs, "sampled:2", progress=False)
    assert r.ranks.tolist() == [2]


def test_explicit_candidates_and_auc(tmp_path):
    seqs = SequenceData.from_lists([[1, 2, 3], [4, 5, 6]], n_items=N_ITEMS)
    es = EvalSet(users=np.array([1, 2]), targets=np.array([3, 6]), hist_end=np.array([2, 5]))
    cands = np.array([[3, 1, 2, 10], [6, 20, 21, 5]])
    # score = -id: case 1 target 3 beaten by 1 and 2 -> rank 2; case 2 target 6 beaten by 5 -> rank 1
    r = evaluate_ranking(_neg_id(N_ITEMS), es, seqs, "candidates:3", ks=(1, 2), candidates=cands,
                         progress=False)
    assert r.ranks.tolist() == [2, 1]
    assert r.metrics["HR@2"] == 0.5 and r.metrics["MRR@2"] == pytest.approx(0.25)
    assert r.metrics["AUC"] == pytest.approx((1 / 3 + 2 / 3) / 2)
    # global: positives -3, -6 vs negatives -1,-2,-10,-20,-21,-5 -> (4 + 3) / 12
    assert r.metrics["AUC_global"] == pytest.approx(7 / 12)
    r.save_ranks(tmp_path / "ranks.parquet")
    df = load_ranks(tmp_path / "ranks.parquet")
    assert df.columns == ["user", "target", "rank", "tied"] and df["rank"].to_list() == [2, 1]
    bad = cands.copy()
    bad[0, 0] = 4
    with pytest.raises(InputError):
        evaluate_ranking(_const, es, seqs, "candidates:3", candidates=bad, progress=False)
    with pytest.raises(InputError):
        evaluate_ranking(_const, es, seqs, "candidates:4", candidates=cands, progress=False)
