"""Graph models: LightGCN against a dense reference, MLLMRec's item graph on a hand-built 6-item example
(and against a dense re-implementation of the released code), training beats popularity, CLI + recommend."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from typer.testing import CliRunner

from mmseqrec.data.general_split import UserItems
from mmseqrec.embed.store import save_embedding
from mmseqrec.evaluate.multitarget import evaluate_multi
from mmseqrec.models.graph import (
    LightGCN,
    LightGCNConfig,
    MLLMRec,
    MLLMRecConfig,
    jaccard_topk,
    mllmrec_item_graph,
)

# ------------------------------------------------------------------------------------------ LightGCN


def test_lightgcn_propagation_equals_dense_reference():
    torch.manual_seed(0)
    n_users, n_items = 3, 4
    users = torch.tensor([1, 1, 2, 2, 2, 3])
    items = torch.tensor([1, 2, 2, 3, 4, 4])
    from mmseqrec.models.graph import bipartite_adjacency

    model = LightGCN(LightGCNConfig(dim=5, n_layers=3), n_users, n_items,
                     bipartite_adjacency(users, items, n_users, n_items))
    U, I = model.embeddings()
    n = n_users + 1 + n_items + 1
    A = torch.zeros(n, n, dtype=torch.float64)
    A[users, items + n_users + 1] = 1
    A[items + n_users + 1, users] = 1
    d = A.sum(1)
    dinv = torch.where(d > 0, d.pow(-0.5), torch.zeros_like(d))
    Ahat = dinv[:, None] * A * dinv[None, :]
    E = torch.cat([model.user.weight, model.item.weight]).double()
    layers = [E]
    for _ in range(3):
        layers.append(Ahat @ layers[-1])
    ref = torch.stack(layers).mean(0)
    assert torch.allclose(torch.cat([U, I]).double(), ref, atol=1e-6)


# ------------------------------------------------------------------------------------ MLLMRec graph

FEATS = torch.tensor([
    [0.0, 0.0, 0.0],  # padding row
    [1.0, 0.0, 0.0],  # 1: nearest 2 (.80)
    [0.8, 0.6, 0.0],  # 2: nearest 3 (.96)
    [0.6, 0.8, 0.0],  # 3: nearest 2 (.96)
    [0.0, 0.0, 1.0],  # 4: nearest 6 (.866)
    [0.0, 0.6, 0.8],  # 5: nearest 4 (.80)
    [0.5, 0.0, math.sqrt(0.75)],  # 6: nearest 4 (.866)
])
# training users: {1,2} {1,2,3} {3,4} {5,6} {5}
TR_U = torch.tensor([1, 1, 2, 2, 2, 3, 3, 4, 4, 5])
TR_I = torch.tensor([1, 2, 1, 2, 3, 3, 4, 5, 6, 5])


def test_jaccard_by_hand():
    r, c, v = jaccard_topk(TR_U, TR_I, 6, k=1)
    got = {(int(a) + 1, int(b) + 1): round(float(x), 4) for a, b, x in zip(r, c, v, strict=True)}
    # J(1,2) = 2/2 = 1 is zeroed (identical user sets, as MLLMRec does); J(1,3) = J(2,3) = 1/3; J(3,4) = 1/2
    # J(5,6) = 1/2; top-1 per row
    assert got == {(1, 3): 0.3333, (2, 3): 0.3333, (3, 4): 0.5, (4, 3): 0.5, (5, 6): 0.5, (6, 5): 0.5}


def test_mllmrec_item_graph_by_hand():
    g = mllmrec_item_graph(FEATS, TR_U, TR_I, knn_k=2, pure=0.85, jac_k=1).to_dense()
    # kNN (self + 1 neighbour), denoised at 0.85: 1->2 (.80) and 5->4 (.80) dropped, 2<->3 and 4<->6 kept;
    # plus Jaccard top-1. Row sums: 1: 1 + 1/3; 3: 1 + 1 + 1/2
    deg = {1: 4 / 3, 2: 1 + 1 + 1 / 3, 3: 2.5, 4: 1 + 1 + 0.5, 5: 1.5, 6: 2.5}
    assert g[1, 3].item() == pytest.approx((1 / 3) / math.sqrt(deg[1] * deg[3]), rel=1e-5)
    assert g[1, 2].item() == 0.0  # denoised away; J(1,2) = 1 zeroed
    assert g[2, 3].item() == pytest.approx((1 + 1 / 3) / math.sqrt(deg[2] * deg[3]), rel=1e-5)
    assert g[1, 1].item() == pytest.approx(1 / deg[1], rel=1e-5)
    assert g[0].abs().sum() == 0 and g[:, 0].abs().sum() == 0  # padding has no edges
    # switches
    nod = mllmrec_item_graph(FEATS, TR_U, TR_I, knn_k=2, pure=0.85, jac_k=1, denoise=False).to_dense()
    assert nod[1, 2] > 0  # kept with its cosine weight
    noc = mllmrec_item_graph(FEATS, TR_U, TR_I, knn_k=2, pure=0.85, jac_k=1, cooccurrence=False).to_dense()
    assert noc[1, 3] == 0 and noc[1, 1].item() == pytest.approx(1.0)


def _reference_mllmrec_graph(feats: torch.Tensor, inter: np.ndarray, knn_k: int, pure: float, jac_k: int):
    """Dense re-implementation of MLLMRec's get_knn_adj_mat_adv (0-based items, no padding)."""
    def knn(adj, k):
        v, i = torch.topk(adj, k, dim=-1)
        return torch.zeros_like(adj).scatter_(-1, i, v)

    x = feats / feats.norm(dim=-1, keepdim=True)
    adj = knn(x @ x.T, knn_k)
    adj[adj < pure] = 0
    adj[adj >= pure] = 1.0
    A = torch.tensor(inter).T.float()
    inter_ = A @ A.T
    s = A.sum(1, keepdim=True)
    jac = inter_ / (s + s.T - inter_ + 1e-7)
    jac[jac == 1.0] = 0
    mat = adj + knn(jac, jac_k)
    d = mat.sum(-1).pow(-0.5)
    d[torch.isinf(d)] = 0
    return torch.diagflat(d) @ mat @ torch.diagflat(d)


def test_mllmrec_item_graph_equals_released_dense_computation():
    rng = np.random.default_rng(1)
    n_users, n_items = 30, 12
    inter = (rng.random((n_users, n_items)) < 0.3).astype(np.float32)
    inter[np.arange(n_users), rng.integers(0, n_items, n_users)] = 1
    feats = torch.from_numpy(rng.normal(size=(n_items, 8)).astype(np.float32))
    u, i = np.nonzero(inter)
    ours = mllmrec_item_graph(torch.cat([torch.zeros(1, 8), feats]), torch.from_numpy(u + 1),
                              torch.from_numpy(i + 1), knn_k=4, pure=0.2, jac_k=3).to_dense()[1:, 1:]
    ref = _reference_mllmrec_graph(feats, inter, 4, 0.2, 3)
    assert torch.allclose(ours, ref, atol=1e-5)


def test_mllmrec_model_shapes_and_no_profile_switch():
    torch.manual_seed(0)
    prof = torch.randn(6, 5)
    m = MLLMRec(MLLMRecConfig(embedding="x", profiles="p", dim=4, knn_k=2, pure=0.5, jac_k=1), 5, 6, TR_U, TR_I,
                FEATS, prof)
    U, I = m.embeddings()
    assert U.shape == (6, 4) and I.shape == (7, 4)
    total, parts = m.loss(torch.tensor([1, 2]), torch.tensor([1, 3]), torch.tensor([4, 5]))
    total.backward()
    assert set(parts) == {"bpr"} and m.item_mlp[0].weight.grad is not None
    m2 = MLLMRec(MLLMRecConfig(embedding="x", dim=4, knn_k=2, pure=0.5, jac_k=1), 5, 6, TR_U, TR_I, FEATS, None)
    assert m2.embeddings()[0].shape == (6, 4)


# ------------------------------------------------------------------------------- training end to end

def write_cluster_dataset(root: Path, n_users=80, n_items=48, n_clusters=4, per_user=12, seed=0) -> Path:
    """Users of cluster c interact mostly with items of cluster c (+ a few popular items): collaborative
    signal that popularity cannot capture. Item features (``feat``) carry the cluster, plus noise."""
    rng = np.random.default_rng(seed)
    users, items = [], []
    size = n_items // n_clusters
    for u in range(1, n_users + 1):
        c = u % n_clusters
        own = rng.choice(np.arange(c * size, (c + 1) * size) + 1, size=per_user - 2, replace=False)
        pop = rng.choice(np.arange(1, 5), size=2, replace=False)
        chosen = list(dict.fromkeys(own.tolist() + pop.tolist()))
        users += [u] * len(chosen)
        items += chosen
    root.mkdir(parents=True, exist_ok=True)
    pl.DataFrame({"user": pl.Series(users, dtype=pl.Int32), "item": pl.Series(items, dtype=pl.Int32),
                  "timestamp": pl.Series(range(len(users)), dtype=pl.Int64)}).write_parquet(root / "interactions.parquet")
    pl.DataFrame({"item": pl.Series(range(1, n_items + 1), dtype=pl.Int32),
                  "item_id": [f"i{i}" for i in range(1, n_items + 1)],
                  "title": [f"Item {i}" for i in range(1, n_items + 1)]}).write_parquet(root / "items.parquet")
    pl.DataFrame({"user": pl.Series(range(1, n_users + 1), dtype=pl.Int32),
                  "user_id": [f"u{u}" for u in range(1, n_users + 1)]}).write_parquet(root / "users.parquet")
    (root / "manifest.json").write_text(json.dumps({"format": "synthetic", "n_users": n_users, "n_items": n_items,
                                                    "n_interactions": len(items)}))
    cl = (np.arange(n_items) // size)
    feat = np.zeros((n_items + 1, 8), np.float32)
    feat[1:, :n_clusters] = np.eye(n_clusters)[cl] + rng.normal(scale=0.3, size=(n_items, n_clusters))
    feat[1:, n_clusters:] = rng.normal(scale=0.3, size=(n_items, 8 - n_clusters))
    save_embedding(root, "feat", feat, {"source": "test"})
    uf = np.zeros((n_users + 1, 8), np.float32)
    uf[1:, :n_clusters] = np.eye(n_clusters)[np.arange(1, n_users + 1) % n_clusters]
    save_embedding(root, "prof", uf, {"source": "test"})
    return root


@pytest.fixture(scope="module")
def cluster_dir(tmp_path_factory):
    return write_cluster_dataset(tmp_path_factory.mktemp("cluster") / "ds")


def _pop_metrics(split):
    pop = np.bincount(split.train.items, minlength=split.n_items + 1).astype(np.float32)
    pop[0] = 0
    s = torch.from_numpy(pop)
    return evaluate_multi(lambda u: s.expand(len(u), -1).clone(), split.test, split.train, split.n_items,
                          [10, 20]).metrics


@pytest.mark.parametrize("model,sets", [
    ("bpr", []),
    ("lightgcn", []),
    ("vbpr", ["model.embeddings=[feat]"]),
    ("freedom", ["model.embeddings=[feat]"]),
    ("mllmrec", ["model.embedding=feat", "model.profiles=prof", "model.pure=0.5"]),
])
def test_general_models_train_and_beat_popularity(cluster_dir, tmp_path, model, sets):
    from mmseqrec.cli.train import build_experiment
    from mmseqrec.train.general import GeneralTrainer

    cfg = build_experiment(None, cluster_dir, model, None, 0,
                           ["train.epochs=25", "train.lr=0.01", "train.progress=false", "train.device=cpu",
                            "train.batch_size=256", *sets])
    assert cfg.data.split == "random:8:1:1" and cfg.train.select_metric == "Recall@20"
    tr = GeneralTrainer(cfg, tmp_path / "run")
    m = tr.fit()
    pop = _pop_metrics(tr.split)
    assert m["test"]["Recall@10"] > pop["Recall@10"] + 0.1, (m["test"], pop)
    assert m["protocol"] == "full" and m["split"] == "random:8:1:1" and m["targets"] == "multi"
    for f in ("config.yaml", "model.safetensors", "metrics.json", "ranks.parquet", "log.jsonl"):
        assert (tmp_path / "run" / f).exists()
    ranks = pl.read_parquet(tmp_path / "run" / "ranks.parquet")
    assert ranks.height == len(tr.split.test)


def test_cli_train_and_recommend_by_user_and_items(cluster_dir, tmp_path):
    from mmseqrec.cli import app

    run = tmp_path / "lgcn"
    r = CliRunner().invoke(app, ["train", "--data", str(cluster_dir), "--model", "lightgcn", "--split",
                                 "random:8:1:1", "--out", str(run), "--set", "train.epochs=3",
                                 "--set", "train.progress=false", "--set", "train.device=cpu"])
    assert r.exit_code == 0, r.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["test"]) >= {"Recall@20", "NDCG@20", "Precision@10", "MAP@10"}
    r = CliRunner().invoke(app, ["recommend", str(run), "--user", "u1", "-k", "5", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert len(out["items"]) == 5
    from mmseqrec.serve.general import GeneralRecommender

    rec = GeneralRecommender(run)
    seen = {f"i{i}" for i in rec.run.split.train.of(1).tolist()}
    assert not seen & {i for i, _, _ in rec(user="u1", k=40).items}
    res = rec(["i1", "i2", "nope"], k=3)
    assert res.unknown == ["nope"] and len(res.items) == 3 and not {"i1", "i2"} & {i for i, _, _ in res.items}
    r = CliRunner().invoke(app, ["train", "--data", str(cluster_dir), "--model", "sasrec", "--split",
                                 "random:8:1:1", "--out", str(tmp_path / "bad")])
    assert r.exit_code == 2 and "leave-one-out" in r.output


def test_trained_split_masks_only_training_items_at_test():
    # a valid item stays a candidate at test time (MMRec): the mask is the training part
    train = UserItems.from_pairs(np.array([1]), np.array([1]), 1)
    test = UserItems.from_pairs(np.array([1]), np.array([3]), 1)
    scores = torch.tensor([[0.0, 5.0, 4.0, 1.0]])  # item 2 (a validation item, say) outranks the target
    res = evaluate_multi(lambda u: scores, test, train, 3, [1])
    assert res.ranks.tolist() == [1]


def test_general_resume_continues_like_an_uninterrupted_run(cluster_dir, tmp_path):
    from mmseqrec.cli.train import build_experiment
    from mmseqrec.train.general import GeneralTrainer

    sets = ["train.lr=0.01", "train.progress=false", "train.device=cpu", "train.batch_size=256",
            "train.patience=0"]
    full = GeneralTrainer(build_experiment(None, cluster_dir, "freedom", None, 3,
                                           ["train.epochs=4", "model.embeddings=[feat]", *sets]), tmp_path / "a").fit()
    GeneralTrainer(build_experiment(None, cluster_dir, "freedom", None, 3,
                                    ["train.epochs=2", "model.embeddings=[feat]", *sets]), tmp_path / "b").fit()
    resumed = GeneralTrainer(build_experiment(None, cluster_dir, "freedom", None, 3,
                                              ["train.epochs=4", "model.embeddings=[feat]", *sets]),
                             tmp_path / "b", resume=True).fit()
    assert resumed["test"] == full["test"] and resumed["epochs_run"] == 4


def test_general_run_is_served_through_the_one_recommend_seam(cluster_dir, tmp_path):
    """``mmseqrec serve`` answers a general (BPR) run like a sequential one: same call, same cold-start and k
    rules, same HTTP contract (POST /recommend, 400 on an empty history, labelled popularity)."""
    pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")
    from fastapi.testclient import TestClient

    from mmseqrec.cli import app
    from mmseqrec.errors import InputError
    from mmseqrec.serve.app import create_app
    from mmseqrec.serve.general import GeneralRecommender
    from mmseqrec.serve.index import attach_index

    run = tmp_path / "bpr"
    r = CliRunner().invoke(app, ["train", "--data", str(cluster_dir), "--model", "bpr", "--split", "random:8:1:1",
                                 "--out", str(run), "--set", "train.epochs=2", "--set", "train.progress=false",
                                 "--set", "train.device=cpu"])
    assert r.exit_code == 0, r.output
    rec = GeneralRecommender(run)
    assert attach_index(rec, "auto") == {"kind": "exact"}
    with pytest.raises(InputError, match="no history given"):
        rec([], k=5)
    with pytest.raises(InputError, match="k must be at least 1"):
        rec(["i1"], k=0)
    pop = rec([], k=3, cold="popularity")
    counts = np.bincount(rec.run.split.train.items, minlength=rec.run.dataset.n_items + 1)
    assert pop.source == "popularity" and [s for _, _, s in pop.items] == sorted(counts[1:].tolist())[::-1][:3]
    client = TestClient(create_app({"bpr": rec}, api_key=""), raise_server_exceptions=False)
    got = client.post("/recommend", json={"history": ["i1", "i2", "nope"], "k": 4})
    assert got.status_code == 200, got.text
    body = got.json()
    assert [c["item_id"] for c in body["items"]] == [i for i, _, _ in rec(["i1", "i2"], k=4).items]
    assert body["unknown"] == ["nope"]
    assert client.post("/recommend", json={"history": [], "k": 4}).status_code == 400
    cold = client.post("/recommend", json={"history": [], "k": 2, "cold": "popularity"}).json()
    assert cold["source"] == "popularity" and len(cold["items"]) == 2
    assert client.get("/runs").json()["runs"]["bpr"]["model"] == "bpr"
