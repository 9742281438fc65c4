"""General-recommendation protocol: multi-target splits and Recall / NDCG / Precision / MAP by hand."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
import torch

from mmseqrec.data.general_split import UserItems, general_split, parse_split, profile_histories
from mmseqrec.errors import InputError
from mmseqrec.evaluate.multitarget import evaluate_multi, multi_metrics, user_values


def _frame(users, items, ts=None, **extra):
    ts = list(range(len(users))) if ts is None else ts
    return pl.DataFrame({"user": users, "item": items, "timestamp": ts, **extra})


def _random_interactions(n_users=40, n_items=30, seed=0):
    rng = np.random.default_rng(seed)
    users, items = [], []
    for u in range(1, n_users + 1):
        n = int(rng.integers(1, 25))
        users += [u] * n
        items += rng.integers(1, n_items + 1, size=n).tolist()  # repeats on purpose
    return _frame(users, items), n_users, n_items


def _sets(ui: UserItems, u: int) -> set[int]:
    return set(ui.of(u).tolist())


@pytest.mark.parametrize("spec", ["random:8:1:1", "random:8:1:1:seed=3", "time:8:1:1"])
def test_split_never_puts_an_item_in_two_parts_and_keeps_every_pair(spec):
    df, nu, ni = _random_interactions()
    sp = general_split(df, nu, ni, spec)
    for u in range(1, nu + 1):
        tr, va, te = _sets(sp.train, u), _sets(sp.valid, u), _sets(sp.test, u)
        assert not (tr & va) and not (tr & te) and not (va & te)
        assert tr | va | te == set(df.filter(pl.col("user") == u)["item"].to_list())
        for part in (sp.train, sp.valid, sp.test):  # no repeats within a part either
            assert len(part.of(u)) == len(set(part.of(u).tolist()))


def test_random_split_proportions_seed_and_determinism():
    df = _frame([1] * 10 + [2] * 5 + [3] * 1, list(range(1, 11)) + list(range(1, 6)) + [7])
    sp = general_split(df, 3, 10, "random:8:1:1")
    assert [len(p.of(1)) for p in (sp.train, sp.valid, sp.test)] == [8, 1, 1]
    assert [len(p.of(2)) for p in (sp.train, sp.valid, sp.test)] == [4, 1, 0]  # floor(4.5 + .5) = 5
    assert [len(p.of(3)) for p in (sp.train, sp.valid, sp.test)] == [1, 0, 0]  # training keeps one
    again = general_split(df, 3, 10, "random:8:1:1")
    assert np.array_equal(again.test.items, sp.test.items)
    other = general_split(df, 3, 10, "random:8:1:1:seed=1")
    assert other.spec == "random:8:1:1:seed=1"
    assert not all(np.array_equal(a.items, b.items) for a, b in ((other.test, sp.test), (other.valid, sp.valid)))


def test_time_split_is_a_global_cut_and_x_label_is_read():
    df = _frame([1, 1, 1, 2, 2, 2, 2, 2, 2, 2], [1, 2, 3, 1, 2, 3, 4, 5, 6, 7], ts=[0, 9, 8, 1, 2, 3, 4, 5, 6, 7])
    sp = general_split(df, 2, 7, "time:8:1:1")
    assert _sets(sp.test, 1) == {2} and _sets(sp.valid, 1) == {3}  # ts 9 and 8: the latest 10 % each
    assert len(sp.train) == 8
    xl = _frame([1, 1, 1], [1, 2, 3], x_label=[0, 2, 1])
    sp = general_split(xl, 1, 3, "x_label")
    assert (_sets(sp.train, 1), _sets(sp.valid, 1), _sets(sp.test, 1)) == ({1}, {3}, {2})
    with pytest.raises(InputError, match="x_label"):
        general_split(_frame([1], [1]), 1, 1, "x_label")
    with pytest.raises(InputError, match="unknown split"):
        parse_split("random:8:1")


def test_profiles_read_training_interactions_only():
    df, nu, ni = _random_interactions(seed=4)
    sp = general_split(df, nu, ni, "random:8:1:1")
    hist = profile_histories(sp, df, "training")
    leaky = profile_histories(sp, df, "all-interactions")
    n_held = 0
    for u in range(1, nu + 1):
        held = _sets(sp.valid, u) | _sets(sp.test, u)
        n_held += len(held)
        assert not held & set(hist.get(u, []))  # no validation or test item reaches the prompt
        assert set(hist.get(u, [])) == _sets(sp.train, u)
        assert held <= set(leaky.get(u, []))
    assert n_held > 0
    # chronological order of the training items is kept
    u1 = df.filter(pl.col("user") == 1)["item"].unique(maintain_order=True).to_list()
    assert hist[1] == [i for i in u1 if i in _sets(sp.train, 1)]


def test_multi_target_metrics_by_hand():
    # user 1: two targets at ranks 0 and 3; user 2: one target at rank 1
    users, ranks = np.array([1, 1, 2]), np.array([3, 0, 1])
    m = multi_metrics(users, ranks, [2])
    idcg2 = 1 + 1 / math.log2(3)
    assert m["Recall@2"] == pytest.approx((0.5 + 1.0) / 2)
    assert m["Precision@2"] == pytest.approx((0.5 + 0.5) / 2)
    assert m["NDCG@2"] == pytest.approx((1 / idcg2 + 1 / math.log2(3)) / 2)
    assert m["MAP@2"] == pytest.approx((1 / 2 + (1 / 2) / 1) / 2)
    assert m["n_cases"] == 2 and m["n_targets"] == 3
    # MAP with two hits: ranks 0 and 2 at K = 5 -> (1/1 + 2/3) / min(2, 5)
    assert user_values(np.array([7, 7]), np.array([2, 0]), "MAP@5")[1][0] == pytest.approx((1 + 2 / 3) / 2)
    # NDCG ideal is capped at K: three targets, K = 2, hits at 0 and 1 -> 1.0
    assert user_values(np.array([1, 1, 1]), np.array([0, 1, 9]), "NDCG@2")[1][0] == pytest.approx(1.0)


def test_evaluate_multi_masks_training_items_and_counts_ties_against_the_model():
    scores = torch.tensor([[0.0, 0.9, 0.8, 0.7, 0.7, 0.5]])  # items 1..5
    train = UserItems.from_pairs(np.array([1]), np.array([1]), 1)
    targets = UserItems.from_pairs(np.array([1, 1]), np.array([3, 5]), 1)
    res = evaluate_multi(lambda u: scores.expand(len(u), -1), targets, train, 5, [1, 2])
    r = dict(zip(res.targets.tolist(), res.ranks.tolist(), strict=True))
    # item 1 (score .9) is masked; item 3 is beaten by item 2 and tied with item 4 -> rank 2
    assert r == {3: 2, 5: 3}
    assert res.tied.tolist() == [1, 0]
    assert res.metrics["Recall@2"] == 0.0 and res.protocol == "full" and res.exclude_history


def test_paired_test_per_user_on_multi_target_ranks():
    from mmseqrec.evaluate.significance import paired_test

    a = pl.DataFrame({"user": [1, 1, 2, 3], "target": [5, 6, 7, 8], "rank": [0, 30, 40, 50]})
    b = pl.DataFrame({"user": [1, 1, 2, 3], "target": [5, 6, 7, 8], "rank": [0, 1, 0, 3]})
    r = paired_test(a, b, "Recall@10", per_user=True)
    assert r["n"] == 3  # the user is the unit, not the target
    assert r["mean_a"] == pytest.approx(0.5 / 3) and r["mean_b"] == pytest.approx(1.0)


def test_x_label_of_a_recbole_inter_file_reaches_the_split(tmp_path):
    from mmseqrec.data.build import prepare

    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "baby.inter").write_text(
        "userID:token\titemID:token\trating:float\ttimestamp:float\tx_label:token\n"
        "1\t10\t5\t1\t0\n1\t11\t5\t2\t0\n1\t12\t5\t3\t2\n2\t10\t4\t1\t0\n2\t12\t4\t2\t1\n")
    ds = prepare("recbole", [tmp_path / "raw"], tmp_path / "out", user_col="userID", item_col="itemID")
    assert "x_label" in ds.interactions.columns
    sp = general_split(ds.interactions, ds.n_users, ds.n_items, "x_label")
    assert len(sp.train) == 3 and len(sp.valid) == 1 and len(sp.test) == 1


def test_mmrec_inter_file_with_untyped_header_is_read(tmp_path):
    """MMRec's own .inter files have plain headers (no ``:token``); they read like typed ones, x_label included."""
    from mmseqrec.data.build import prepare

    rows = "1\t10\t5\t1\t0\n1\t11\t5\t2\t0\n1\t12\t5\t3\t2\n2\t10\t4\t1\t0\n2\t12\t4\t2\t1\n"
    (tmp_path / "mm").mkdir()
    (tmp_path / "mm" / "baby.inter").write_text("userID\titemID\trating\ttimestamp\tx_label\n" + rows)
    ds = prepare("recbole", [tmp_path / "mm"], tmp_path / "out", user_col="userID", item_col="itemID")
    assert ds.n_users == 2 and ds.n_items == 3 and ds.interactions.height == 5
    assert ds.interactions["x_label"].to_list() == [0, 0, 2, 0, 1]
    sp = general_split(ds.interactions, ds.n_users, ds.n_items, "x_label")
    assert len(sp.train) == 3 and len(sp.valid) == 1 and len(sp.test) == 1
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "x.inter").write_text("user_id\titem_id\trating\ttimestamp\n" + "1\t10\t5\t1\n2\t11\t3\t2\n")
    ds2 = prepare("recbole", [tmp_path / "plain"], tmp_path / "out2")
    assert ds2.interactions["timestamp"].to_list() == [1, 2] and ds2.n_items == 2
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.inter").write_text("user_id:token\titem_id\n1\t10\n")
    with pytest.raises(InputError, match="not of the form name:type"):
        prepare("recbole", [tmp_path / "bad"], tmp_path / "out3")
    (tmp_path / "nohead").mkdir()
    (tmp_path / "nohead" / "x.inter").write_text(rows)
    with pytest.raises(InputError, match="looks like a data row"):
        prepare("recbole", [tmp_path / "nohead"], tmp_path / "out4")
