"""Paired tests vs scipy, seed aggregation, long-tail grouping, and the ``compare``/``report`` CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
import pytest
from scipy import stats
from typer.testing import CliRunner

from mmseqrec.cli import app, main
from mmseqrec.errors import InputError
from mmseqrec.evaluate import aggregate_seeds, longtail_table, mean_std, paired_test
from mmseqrec.evaluate.longtail import LongTailConfig, group_index, group_labels
from mmseqrec.evaluate.report import compare_runs, load_run_result


def _frame(users, targets, ranks):
    return pl.DataFrame({"user": users, "target": targets, "rank": ranks})


def test_paired_test_matches_scipy():
    rng = np.random.default_rng(0)
    n = 200
    users = np.arange(1, n + 1)
    targets = rng.integers(1, 50, n)
    ra = rng.integers(0, 30, n)
    rb = np.maximum(ra - rng.integers(-2, 6, n), 0)
    a = _frame(users, targets, ra)
    b = _frame(users, targets, rb).reverse()  # order must not matter (joined on user, target)
    res = paired_test(a, b, "NDCG@10")
    va = np.where(ra < 10, 1 / np.log2(ra + 2), 0.0)
    vb = np.where(rb < 10, 1 / np.log2(rb + 2), 0.0)
    assert res["n"] == n
    assert res["mean_a"] == pytest.approx(va.mean()) and res["mean_b"] == pytest.approx(vb.mean())
    assert res["delta"] == pytest.approx(vb.mean() - va.mean())
    assert res["p_wilcoxon"] == pytest.approx(stats.wilcoxon(vb, va).pvalue)
    assert res["p_ttest"] == pytest.approx(stats.ttest_rel(vb, va).pvalue)
    assert res["p_wilcoxon"] < 0.05
    same = paired_test(a, a, "HR@10")
    assert same["delta"] == 0 and same["p_wilcoxon"] == 1.0 and same["p_ttest"] == 1.0


def test_paired_test_refuses_different_cases_or_protocols():
    a = _frame([1, 2, 3], [5, 6, 7], [0, 1, 2])
    with pytest.raises(InputError, match="different"):
        paired_test(a, _frame([1, 2], [5, 6], [0, 1]))
    with pytest.raises(InputError, match="different"):
        paired_test(a, _frame([1, 2, 3], [5, 6, 8], [0, 1, 2]))
    with pytest.raises(InputError, match="protocols"):
        paired_test(a, a, protocol_a="full", protocol_b="sampled:100")


def test_mean_std_and_aggregate_seeds():
    m, s = mean_std([0.1, 0.2, 0.3])
    assert m == pytest.approx(0.2) and s == pytest.approx(0.1)
    assert mean_std([0.5]) == (0.5, 0.0)
    agg = aggregate_seeds([{"HR@10": 0.5, "NDCG@10": 0.3, "note": "x"}, {"HR@10": 0.7, "NDCG@10": 0.1}])
    assert set(agg) == {"HR@10", "NDCG@10"}
    assert agg["HR@10"][0] == pytest.approx(0.6) and agg["HR@10"][1] == pytest.approx(math.sqrt(0.02))


def test_group_index_and_labels():
    assert group_index(np.array([0, 4, 5, 9, 10, 19, 20, 100]), [5, 10, 15, 20]).tolist() == [0, 0, 1, 1, 2, 3, 4, 4]
    assert group_labels([5, 10]) == ["<5", "[5,10)", ">=10"]
    with pytest.raises(InputError):
        LongTailConfig.preset("nope")
    assert LongTailConfig.preset("llmesr-beauty").user_thresholds == [9]


def test_longtail_hand_example():
    ranks = _frame([1, 2, 3, 4], [1, 2, 3, 2], [0, 5, 20, 1])
    user_len = np.array([0, 3, 12, 20, 5])
    item_pop = np.array([0, 1, 13, 50])
    t = longtail_table(ranks, user_len, item_pop, "llmesr-yelp", ks=(10,))
    rows = {(r["by"], r["segment"]): r for r in t.to_dicts()}
    assert rows[("user_length", "tail")]["n"] == 2 and rows[("user_length", "tail")]["group"] == "<12"
    assert rows[("user_length", "tail")]["HR@10"] == pytest.approx(1.0)
    assert rows[("user_length", "tail")]["NDCG@10"] == pytest.approx((1 + 1 / math.log2(3)) / 2)
    assert rows[("user_length", "head")]["HR@10"] == pytest.approx(0.5)
    assert rows[("user_length", "head")]["NDCG@10"] == pytest.approx(1 / math.log2(7) / 2)
    assert rows[("item_popularity", "tail")]["n"] == 1 and rows[("item_popularity", "tail")]["NDCG@10"] == 1.0
    assert rows[("item_popularity", "head")]["HR@10"] == pytest.approx(2 / 3)
    assert rows[("item_popularity", "head")]["NDCG@10"] == pytest.approx((1 / math.log2(7) + 1 / math.log2(3)) / 3)
    five = longtail_table(ranks, user_len, item_pop, "llmesr-5group", ks=(10,))
    assert five.filter(pl.col("by") == "user_length")["n"].to_list() == [1, 1, 1, 0, 1]
    assert five.filter(pl.col("by") == "user_length")["HR@10"].to_list()[3] is None


def _write_run(path, protocol, ranks, exclude_history=False, seed=0, model="sasrec"):
    path.mkdir(parents=True)
    users = np.arange(1, len(ranks) + 1)
    _frame(users, users + 100, np.asarray(ranks)).write_parquet(path / "ranks.parquet")
    r = np.asarray(ranks)
    test = {"HR@10": float((r < 10).mean()), "NDCG@10": float(np.where(r < 10, 1 / np.log2(r + 2), 0).mean()),
            "n_cases": len(ranks)}
    (path / "metrics.json").write_text(json.dumps({"protocol": protocol, "exclude_history": exclude_history,
                                                   "seed": seed, "test": test}))
    (path / "config.yaml").write_text(f"seed: {seed}\nmodel:\n  name: {model}\n")


def test_cli_compare_and_report(tmp_path):
    rng = np.random.default_rng(3)
    ra = rng.integers(0, 40, 60)
    rb = np.maximum(ra - 8, 0)
    _write_run(tmp_path / "a", "sampled:100", ra)
    _write_run(tmp_path / "b", "sampled:100", rb, seed=1)
    rows = compare_runs(tmp_path / "a", tmp_path / "b")
    assert [r["metric"] for r in rows] == ["HR@10", "NDCG@10"]
    assert rows[0]["delta"] == pytest.approx((rb < 10).mean() - (ra < 10).mean())
    res = CliRunner().invoke(app, ["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--metric", "HR@10"])
    assert res.exit_code == 0, res.output
    assert "HR@10" in res.output and "p (Wilcoxon)" in res.output and "NDCG@10" not in res.output
    res = CliRunner().invoke(app, ["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--json"])
    data = json.loads(res.output)
    assert data["rows"][1]["metric"] == "NDCG@10" and data["rows"][1]["p_wilcoxon"] < 0.05
    # different protocol: refused with a clear one-line error and exit code 2
    _write_run(tmp_path / "c", "full", ra)
    with pytest.raises(SystemExit) as ei:
        main(["compare", str(tmp_path / "a"), str(tmp_path / "c")])
    assert ei.value.code == 2
    _write_run(tmp_path / "d", "sampled:100", ra, exclude_history=True)
    with pytest.raises(InputError, match="different protocols"):
        compare_runs(tmp_path / "a", tmp_path / "d")
    # --protocol: compare the re-scored eval-<slug>.json / ranks-<slug>.parquet of two runs trained under `full`
    for name, ranks in (("fa", ra), ("fb", rb)):
        _write_run(tmp_path / name, "full", ranks + 50)
        _frame(np.arange(1, 61), np.arange(101, 161), ranks).write_parquet(tmp_path / name / "ranks-sampled-100.parquet")
        (tmp_path / name / "eval-sampled-100.json").write_text(json.dumps(
            {"protocol": "sampled:100", "split": "test", "exclude_history": False,
             "metrics": {"HR@10": float((ranks < 10).mean())}}))
    rows = compare_runs(load_run_result(tmp_path / "fa", "sampled:100"), load_run_result(tmp_path / "fb", "sampled:100"))
    assert rows[0]["metric"] == "HR@10" and rows[0]["a"] == pytest.approx((ra < 10).mean())
    assert rows[0]["delta"] == pytest.approx((rb < 10).mean() - (ra < 10).mean())
    res = CliRunner().invoke(app, ["compare", str(tmp_path / "fa"), str(tmp_path / "fb"), "--protocol", "sampled:100",
                                   "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["protocol"].startswith("sampled:100")
    with pytest.raises(InputError, match="not scored on test under"):
        load_run_result(tmp_path / "fa", "sampled:50")
    # report: a and b differ only by seed -> one group; c is another protocol
    res = CliRunner().invoke(app, ["report", str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "c"),
                                   "--json"])
    assert res.exit_code == 0, res.output
    groups = json.loads(res.output)
    assert sorted(g["n_runs"] for g in groups) == [1, 2]
    g2 = next(g for g in groups if g["n_runs"] == 2)
    hr = [(ra < 10).mean(), (rb < 10).mean()]
    assert g2["metrics"]["HR@10"][0] == pytest.approx(np.mean(hr))
    assert g2["metrics"]["HR@10"][1] == pytest.approx(np.std(hr, ddof=1))
    res = CliRunner().invoke(app, ["report", str(tmp_path / "a"), str(tmp_path / "b")])
    assert res.exit_code == 0 and "±" in res.output


def test_longtail_for_split_counts_training_popularity():
    from mmseqrec.data import SequenceData, leave_one_out
    from mmseqrec.evaluate import longtail_for_split

    seqs = SequenceData.from_lists([[1, 1, 1, 2, 3], [1, 2, 3], [3, 3, 2, 1]], n_items=3)
    sp = leave_one_out(seqs)
    # training items: u1 [1,1,1], u2 [1], u3 [3,3] -> train pop 1:4, 2:0, 3:2; all-data pop 1:5, 2:3, 3:4
    ranks = _frame(sp.test.users, sp.test.targets, [0, 0, 0])  # targets 3, 3, 1
    cfg = LongTailConfig(user_thresholds=[2], item_thresholds=[3])
    t = longtail_for_split(ranks, sp, cfg)
    it = t.filter(pl.col("by") == "item_popularity")["n"].to_list()
    assert it == [2, 1]  # item 3 has 2 training interactions (< 3): tail twice; item 1 (4) head
    us = t.filter(pl.col("by") == "user_length")["n"].to_list()
    assert us == [1, 2]  # train lengths 3, 1, 2 -> only user 2 (1) is < 2
    t_all = longtail_for_split(ranks, sp, LongTailConfig(user_thresholds=[2], item_thresholds=[5],
                                                         popularity="all"))
    assert t_all.filter(pl.col("by") == "item_popularity")["n"].to_list() == [2, 1]  # 3:4 tail, 1:5 head
