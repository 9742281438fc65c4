"""General models in ``mmseqrec experiment`` and ``compare``: one model per variant with MLLMRec as the baseline
across backbones, paired tests with the user as the unit (each user's value averaged over seeds first, Holm over
the table), MostPop, and MLLMRec's item-mean profile stand-in with and without the leak."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import torch
from scipy import stats
from test_graph_models import _pop_metrics, write_cluster_dataset

from mmseqrec.errors import InputError

GRID = """
name: general
datasets: {c: DS}
backbones: [mostpop, bpr, mllmrec]
seeds: [0, 1]
protocols: [full]
metrics: [Recall@20, NDCG@10]
baseline: MLLMRec
references: [Pop]
base:
  train: {epochs: 3, lr: 0.01, batch_size: 256, progress: false, device: cpu}
variants:
  MLLMRec: {model: {embedding: feat, profile_stand_in: item-mean, pure: 0.5}}
  MLLMRec-leaky: {model: {embedding: feat, profile_stand_in: item-mean, profile_source: all-interactions,
                          pure: 0.5}}
  Pop: {}
  BPR: {}
variant_backbones: {MLLMRec: [mllmrec], MLLMRec-leaky: [mllmrec], Pop: [mostpop], BPR: [bpr]}
"""


@pytest.fixture(scope="module")
def cluster_dir(tmp_path_factory):
    return write_cluster_dataset(tmp_path_factory.mktemp("gx") / "ds")


def _grid(tmp_path, ds, text=GRID):
    from mmseqrec.experiment import load_grid

    p = tmp_path / "grid.yaml"
    p.write_text(text.replace("DS", str(ds)))
    return load_grid(p)


def _user_recall(run_dir, k=20) -> dict[int, float]:
    r = pl.read_parquet(run_dir / "ranks.parquet")
    per = r.group_by("user").agg(((pl.col("rank") < k).sum() / pl.len()).alias("v"))
    return dict(zip(per["user"].to_list(), per["v"].to_list(), strict=True))


def _seed_mean(runs) -> dict[int, float]:
    vals = [_user_recall(r.run_dir) for r in runs]
    return {u: float(np.mean([v[u] for v in vals])) for u in vals[0]}


def test_general_grid_pairs_users_with_seed_means_and_holm(cluster_dir, tmp_path):
    from mmseqrec.experiment import plan_runs, run_grid, summarise, write_report

    grid = _grid(tmp_path, cluster_dir)
    out = tmp_path / "out"
    runs = run_grid(grid, out, progress=False)
    assert len(runs) == 8
    by = {}
    for r in runs:
        m = json.loads((r.run_dir / "metrics.json").read_text())
        assert m["targets"] == "multi" and m["protocol"] == "full" and m["split"] == "random:8:1:1"
        by.setdefault(r.variant, []).append(r)
    assert json.loads((by["MLLMRec-leaky"][0].run_dir / "metrics.json").read_text())["profile_source"] == \
        "all-interactions"
    summary = summarise(grid, out)
    row = summary.filter((pl.col("variant") == "BPR") & (pl.col("metric") == "Recall@20")).row(0, named=True)
    # the paired unit is the user: per-user Recall@20 averaged over the 2 seeds, then Wilcoxon vs MLLMRec
    a, b = _seed_mean(by["MLLMRec"]), _seed_mean(by["BPR"])
    users = sorted(a)
    assert row["n_cases"] == len(users)  # users with a test item, not users x seeds
    va = np.round(np.array([a[u] for u in users]), 12)
    vb = np.round(np.array([b[u] for u in users]), 12)
    assert row["p_wilcoxon"] == pytest.approx(stats.wilcoxon(vb, va).pvalue, rel=1e-9)
    # Holm over every comparison of the table (baseline columns and the vs-Pop column together)
    raw = [*summary["p_wilcoxon"].drop_nulls().to_list(), *summary["p_vs_Pop"].drop_nulls().to_list()]
    adj = [*summary["p_adj"].drop_nulls().to_list(), *summary["p_adj_vs_Pop"].drop_nulls().to_list()]
    m = len(raw)
    assert m == 3 * 2 + 3  # 3 models x 2 metrics vs MLLMRec, + Recall@20 of MLLMRec / leaky / BPR vs Pop
    order = np.argsort(raw, kind="stable")
    holm = np.minimum(1, np.maximum.accumulate([(m - i) * raw[j] for i, j in enumerate(order)]))
    assert np.allclose(np.array(adj)[order], holm)
    # MostPop: no parameters, fitted once, deterministic, equals training popularity
    pop = summary.filter((pl.col("variant") == "Pop") & (pl.col("metric") == "Recall@20")).row(0, named=True)
    assert pop["std"] == 0.0
    from mmseqrec.train.general import load_general_run

    run = load_general_run(by["Pop"][0].run_dir)
    assert json.loads((by["Pop"][0].run_dir / "metrics.json").read_text())["test"]["Recall@20"] == \
        pytest.approx(_pop_metrics(run.split)["Recall@20"])
    md = write_report(grid, out)["markdown"].read_text()
    assert "the unit is the user" in md and "| mostpop | Pop |" in md
    assert len(plan_runs(grid, out)) == 8


def test_compare_two_general_runs_pairs_users(cluster_dir, tmp_path):
    from mmseqrec.evaluate.report import compare_runs
    from mmseqrec.experiment import run_grid

    text = ("datasets: {c: DS}\nbackbones: [mostpop, bpr]\nseeds: [0]\nbaseline: Pop\n"
            "base: {train: {epochs: 2, batch_size: 256, progress: false, device: cpu}}\n"
            "variants: {Pop: {}, BPR: {}}\nvariant_backbones: {Pop: [mostpop], BPR: [bpr]}\n")
    grid = _grid(tmp_path, cluster_dir, text)
    runs = {r.variant: r.run_dir for r in run_grid(grid, tmp_path / "o", progress=False)}
    rows = compare_runs(runs["Pop"], runs["BPR"])
    assert {r["metric"] for r in rows} == {f"{m}@{k}" for m in ("Recall", "NDCG", "Precision", "MAP") for k in (10, 20)}
    rec = next(r for r in rows if r["metric"] == "Recall@20")
    n_users = pl.read_parquet(runs["BPR"] / "ranks.parquet")["user"].n_unique()
    assert rec["n"] == n_users and rec["b"] == pytest.approx(
        json.loads((runs["BPR"] / "metrics.json").read_text())["test"]["Recall@20"])


def test_item_mean_profiles_read_training_items_only(cluster_dir):
    from mmseqrec.cli.train import build_experiment
    from mmseqrec.data.dataset import DatasetDir
    from mmseqrec.data.general_split import general_split
    from mmseqrec.embed.store import load_embedding
    from mmseqrec.train.general import stand_in_profiles

    ds = DatasetDir(cluster_dir)
    split = general_split(ds.interactions, ds.n_users, ds.n_items, "random:8:1:1")
    feat = torch.from_numpy(np.asarray(load_embedding(cluster_dir, "feat").matrix, dtype=np.float32))

    def profiles(source, f):
        cfg = build_experiment(None, cluster_dir, "mllmrec", None, 0,
                               ["model.embedding=feat", "model.profile_stand_in=item-mean",
                                f"model.profile_source={source}"])
        (key, value), = stand_in_profiles(cfg, split, ds.interactions, {"feat": f}).items()
        assert key == f"item-mean:{source}"
        return value

    train, leaky = profiles("training", feat), profiles("all-interactions", feat)
    for u in range(1, ds.n_users + 1):
        own = torch.from_numpy(split.train.of(u))
        every = torch.from_numpy(np.concatenate([split.part(p).of(u) for p in ("train", "valid", "test")]))
        assert torch.allclose(train[u], feat[own].mean(0), atol=1e-6)  # training items only
        assert torch.allclose(leaky[u], feat[every].mean(0), atol=1e-6)  # the leak: valid + test items too
    # a user's own test items change the leaky profile, never the training-only one
    u = int(split.test.users()[0])
    poisoned = feat.clone()
    poisoned[torch.from_numpy(split.test.of(u))] = 1e6
    assert torch.equal(profiles("training", poisoned)[u], train[u])
    assert profiles("all-interactions", poisoned)[u].max() > 1e4
    with pytest.raises(InputError, match="either model.profiles"):
        build_experiment(None, cluster_dir, "mllmrec", None, 0,
                         ["model.embedding=feat", "model.profile_stand_in=item-mean", "model.profiles=prof"])


def test_general_grid_refuses_sampled_protocols_and_splits_without_test_targets(cluster_dir, tmp_path):
    from mmseqrec.cli.train import build_experiment
    from mmseqrec.experiment.runner import check_runs, plan_runs
    from mmseqrec.train.general import GeneralTrainer

    grid = _grid(tmp_path, cluster_dir, GRID.replace("protocols: [full]", "protocols: [full, sampled:100]"))
    with pytest.raises(InputError, match="full ranking"):
        check_runs(grid, plan_runs(grid, tmp_path / "o"))
    one = write_cluster_dataset(tmp_path / "one", n_users=20, per_user=2)  # 2 items each: all training
    cfg = build_experiment(None, one, "bpr", None, 0, ["train.progress=false"])
    with pytest.raises(InputError, match="leaves no test targets"):
        GeneralTrainer(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()
