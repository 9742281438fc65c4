"""Closed-form baselines ``pop`` and ``itemknn``: hand-computed statistics, training-only counts, history
dependence, and the same train -> evaluate -> compare -> recommend path as neural models."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from helpers import run_cli, write_cycle_dataset

from mmseqrec.cli.train import build_experiment
from mmseqrec.data.dataset import SequenceData
from mmseqrec.data.split import leave_one_out
from mmseqrec.models.baselines import ItemKNN, ItemKNNConfig, Pop, _topk_rows, _topk_sparse
from mmseqrec.train import Trainer, load_run
from mmseqrec.train.run import item_popularity, training_sequences

torch.set_num_threads(1)
N_ITEMS, N_USERS, SEQ_LEN = 30, 120, 12

# Training sequences of the hand-computed example (items 1..5). Users per item (binary, user 4's repeat of
# item 1 counts once): U1 = {1,2,4}, U2 = {1,2,3}, U3 = {1,3}, U4 = {3}, U5 = {4}.
TRAIN = [[1, 2, 3], [1, 2], [2, 3, 4], [1, 1, 5]]
S3, S6, S2 = math.sqrt(3), math.sqrt(6), math.sqrt(2)


def _csr(lists):
    items = np.array([i for seq in lists for i in seq], dtype=np.int64)
    indptr = np.concatenate([[0], np.cumsum([len(s) for s in lists])]).astype(np.int64)
    return items, indptr


def _knn(**kw) -> ItemKNN:
    m = ItemKNN(ItemKNNConfig(**kw), 5)
    m.fit(*_csr(TRAIN))
    return m


def _neighbours(m: ItemKNN) -> dict[int, list[tuple[int, float]]]:
    return {i: [(int(j), float(v)) for j, v in zip(m.neighbours[i], m.similarities[i], strict=True) if j]
            for i in range(1, m.n_items + 1)}


def _assert_rows(got, want):
    assert got.keys() == want.keys()
    for i in want:
        assert [j for j, _ in got[i]] == [j for j, _ in want[i]], i
        np.testing.assert_allclose([v for _, v in got[i]], [v for _, v in want[i]], rtol=1e-6)


# ----------------------------------------------------------------------------- hand-computed values
def test_pop_counts_training_interactions():
    m = Pop(5)
    m.fit(*_csr(TRAIN))
    assert m.counts.tolist() == [0, 4, 3, 2, 1, 1]  # item 1: users 1, 2 and twice user 4
    h = torch.tensor([[0, 1, 3], [2, 4, 5]])
    s = m.score_all(h)
    assert s[:, 0].isinf().all() and s[0, 1:].tolist() == [4, 3, 2, 1, 1] and torch.equal(s[0], s[1])
    torch.testing.assert_close(m.score(h, torch.tensor([[4, 5, 1], [2, 2, 3]])),
                               torch.tensor([[1.0, 1.0, 4.0], [3.0, 3.0, 2.0]]))


def test_itemknn_cosine_shrinkage_and_topk_by_hand():
    # co-occurrence: (1,2) 2, (1,3) 1, (1,5) 1, (2,3) 2, (2,4) 1, (3,4) 1; |U| = 3, 3, 2, 1, 1
    _assert_rows(_neighbours(_knn(k=10)), {
        1: [(2, 2 / 3), (5, 1 / S3), (3, 1 / S6)],
        2: [(3, 2 / S6), (1, 2 / 3), (4, 1 / S3)],
        3: [(2, 2 / S6), (4, 1 / S2), (1, 1 / S6)],
        4: [(3, 1 / S2), (2, 1 / S3)],
        5: [(1, 1 / S3)],
    })
    # shrinkage: co / (sqrt(|U_i| |U_j|) + shrink)
    _assert_rows(_neighbours(_knn(k=10, shrink=1.0)), {
        1: [(2, 2 / 4), (5, 1 / (S3 + 1)), (3, 1 / (S6 + 1))],
        2: [(3, 2 / (S6 + 1)), (1, 2 / 4), (4, 1 / (S3 + 1))],
        3: [(2, 2 / (S6 + 1)), (4, 1 / (S2 + 1)), (1, 1 / (S6 + 1))],
        4: [(3, 1 / (S2 + 1)), (2, 1 / (S3 + 1))],
        5: [(1, 1 / (S3 + 1))],
    })
    # top-k pruning keeps each item's k best neighbours; shorter rows are padded with (0, 0.0)
    m = _knn(k=2)
    _assert_rows(_neighbours(m), {1: [(2, 2 / 3), (5, 1 / S3)], 2: [(3, 2 / S6), (1, 2 / 3)],
                                  3: [(2, 2 / S6), (4, 1 / S2)], 4: [(3, 1 / S2), (2, 1 / S3)], 5: [(1, 1 / S3)]})
    assert m.neighbours.shape == (6, 2) and m.neighbours[5, 1] == 0 and m.similarities[5, 1] == 0
    assert (m.neighbours[0] == 0).all() and (m.similarities[0] == 0).all()


def test_topk_ties_go_to_the_lower_item_id():
    sim = torch.tensor([[0.0, 0.5, 0.2, 0.5, 0.2, 0.2], [0.0, 0.1, 0.3, 0.3, 0.3, 0.0]], dtype=torch.float64)
    cols, vals = _topk_rows(sim, 3)
    assert cols.tolist() == [[1, 3, 2], [2, 3, 4]]
    assert vals.tolist() == [[0.5, 0.5, 0.2], [0.3, 0.3, 0.3]]
    r, c = sim.numpy().nonzero()
    rng = np.random.default_rng(0).permutation(r.size)  # the sparse path does not rely on the entries' order
    scols, svals = _topk_sparse(r[rng], c[rng], sim.numpy()[r, c][rng], 2, 3)
    assert scols.tolist() == cols.tolist() and svals.tolist() == vals.tolist()


def test_itemknn_scores_by_hand_sequential_decay_and_fallback():
    h = torch.tensor([[0, 0, 1, 3]])  # history 1 then 3
    s = _knn(k=2, fallback="none").score_all(h)[0]
    assert s[0] == float("-inf")
    # item 1 -> (2: 2/3, 5: 1/sqrt3); item 3 -> (2: 2/sqrt6, 4: 1/sqrt2)
    torch.testing.assert_close(s[1:], torch.tensor([0, 2 / 3 + 2 / S6, 0, 1 / S2, 1 / S3]))
    # popularity fallback for items with no similarity: pop / (max_pop + 1) - 1, below every positive score
    s = _knn(k=2).score_all(h)[0]
    torch.testing.assert_close(s[[1, 3]], torch.tensor([4 / 5 - 1, 2 / 5 - 1]))
    torch.testing.assert_close(s[[2, 4, 5]], torch.tensor([2 / 3 + 2 / S6, 1 / S2, 1 / S3]))
    # sequential variant: last 2 items, recency decay 0.5 (item 3 weighs 1, item 1 weighs 0.5)
    m = _knn(k=2, last_n=2, decay=0.5, fallback="none")
    torch.testing.assert_close(m.score_all(torch.tensor([[2, 4, 1, 3]]))[0, 1:],
                               torch.tensor([0, 0.5 * 2 / 3 + 2 / S6, 0, 1 / S2, 0.5 / S3]))
    # a repeated item counts once, at its most recent position: [3, 1, 3] scores like [1, 3]
    torch.testing.assert_close(m.score_all(torch.tensor([[0, 3, 1, 3]])), m.score_all(torch.tensor([[0, 0, 1, 3]])))
    # last_n = 1: only the most recent item
    m1 = _knn(k=2, last_n=1, fallback="none")
    torch.testing.assert_close(m1.score_all(h)[0, 1:], torch.tensor([0, 2 / S6, 0, 1 / S2, 0]))
    # score() is score_all() gathered: the same numbers under every protocol
    c = torch.tensor([[5, 2, 1, 4]])
    torch.testing.assert_close(m.score(h, c), m.score_all(h).gather(1, c), rtol=0, atol=0)


def test_itemknn_blocked_fit_and_chunked_scoring_match_one_pass(monkeypatch):
    from mmseqrec.models import baselines

    m = _knn(k=3, last_n=3, decay=0.7, shrink=2.0)
    h = torch.tensor([[0, 1, 3], [2, 4, 5], [0, 0, 0], [5, 5, 1]])
    full = m.score_all(h)
    monkeypatch.setattr(baselines, "_GATHER", 1)  # one history per chunk
    monkeypatch.setattr(baselines, "_BLOCK", 1)  # one item row per similarity block
    torch.testing.assert_close(m.score_all(h), full, rtol=0, atol=0)
    for dense in (0.0, 2.0):  # dense and sparse pruning of each block
        monkeypatch.setattr(baselines, "_DENSE", dense)
        m2 = _knn(k=3, last_n=3, decay=0.7, shrink=2.0)
        assert torch.equal(m2.neighbours, m.neighbours) and torch.equal(m2.similarities, m.similarities)


@pytest.mark.parametrize("dense", [0.0, 2.0])  # every block pruned as a dense tensor / on its non-zeros
def test_itemknn_matches_a_dense_reference_on_random_data(dense, monkeypatch):
    """Dense numpy re-computation (full similarity matrix, stable row sort, per-history loop) on random data."""
    from mmseqrec.models import baselines

    monkeypatch.setattr(baselines, "_DENSE", dense)
    rng = np.random.default_rng(3)
    n_items, k, shrink, last_n, decay = 25, 4, 3.0, 6, 0.7
    lists = [rng.integers(1, n_items + 1, rng.integers(1, 12)).tolist() for _ in range(40)]
    m = ItemKNN(ItemKNNConfig(k=k, shrink=shrink, last_n=last_n, decay=decay), n_items)
    m.fit(*_csr(lists))
    x = np.zeros((len(lists), n_items + 1))
    for u, seq in enumerate(lists):
        x[u, seq] = 1.0
    co, norm = x.T @ x, np.sqrt(x.sum(0))
    sim = np.where(co > 0, co / (np.outer(norm, norm) + shrink), 0.0)
    np.fill_diagonal(sim, 0.0)
    sim[:, 0] = 0.0
    pruned = np.zeros_like(sim)
    for i in range(1, n_items + 1):
        top = np.argsort(-sim[i], kind="stable")[:k]
        pruned[i, top] = sim[i, top]
    pop = np.bincount(np.concatenate(lists), minlength=n_items + 1)  # interactions, repeats included
    hist = [rng.integers(1, n_items + 1, 9).tolist() for _ in range(6)] + [[3, 3, 3]]
    h = torch.zeros(len(hist), 9, dtype=torch.long)
    for r, seq in enumerate(hist):
        h[r, 9 - len(seq):] = torch.tensor(seq)
    got = m.score_all(h).double().numpy()
    for r, seq in enumerate(hist):
        weights = {}
        for age, item in enumerate(reversed(seq[-last_n:])):
            weights.setdefault(item, decay ** age)  # most recent occurrence
        want = sum(w * pruned[i] for i, w in weights.items())
        want = np.where(want > 0, want, pop / (pop.max() + 1) - 1)
        np.testing.assert_allclose(got[r, 1:], want[1:], rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- training data only
def test_pop_and_itemknn_never_see_validation_or_test_items():
    # items 8 and 9 only ever appear as a user's last two items (validation, test)
    seqs = SequenceData.from_lists([[1, 2, 3, 8, 9], [2, 3, 4, 9, 8], [1, 5, 6, 7, 8, 9], [4, 5]])
    split = leave_one_out(seqs, min_len=3)
    items, indptr = training_sequences(split.seqs, split.train_end)
    assert sorted(items.tolist()) == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 7]  # user 4 (2 items) is train-only
    pop = Pop(seqs.n_items)
    pop.fit(items, indptr)
    assert pop.counts[8] == 0 and pop.counts[9] == 0
    np.testing.assert_array_equal(pop.counts.numpy(), item_popularity(split.seqs, split.train_end))
    knn = ItemKNN(ItemKNNConfig(), seqs.n_items)
    knn.fit(items, indptr)
    assert not torch.isin(knn.neighbours, torch.tensor([8, 9])).any()
    assert (knn.neighbours[8:] == 0).all()


# ----------------------------------------------------------------------------- through the one trainer
@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_cycle_dataset(tmp_path_factory.mktemp("data") / "ds", N_USERS, N_ITEMS, SEQ_LEN)


_cli = run_cli


def _top(run, history, capsys, *extra):
    capsys.readouterr()
    assert 0 == _cli(["recommend", str(run), "--history", history, "--json", *extra])
    return [i["item_id"] for i in json.loads(capsys.readouterr().out)["items"]]


def test_trainer_fits_pop_on_training_prefixes_and_reloads_identically(data_dir, tmp_path):
    cfg = build_experiment(data=data_dir, model="pop", sets=["train.progress=false", "eval.ks=[1,5,10]"])
    t = Trainer(cfg, tmp_path / "pop")
    m = t.fit()
    split = leave_one_out(t.ds.sequences, cfg.data.min_len)
    expected = np.zeros(N_ITEMS + 1, np.int64)
    for u in range(1, N_USERS + 1):  # independent per-user count of the training prefixes
        np.add.at(expected, split.train_sequence(u), 1)
    np.testing.assert_array_equal(t.model.counts.numpy(), expected)
    assert expected.sum() == N_USERS * (SEQ_LEN - 2)
    assert m["n_params"] == N_ITEMS + 1 and m["best_epoch"] == 1 and m["epochs_run"] == 1
    h = torch.tensor([[0, 3, 5, 7], [1, 2, 3, 4]])
    torch.testing.assert_close(load_run(tmp_path / "pop").model.score_all(h), t.model.score_all(h), rtol=0, atol=0)


def test_cli_itemknn_and_pop_train_evaluate_compare_recommend(data_dir, tmp_path, capsys):
    runs = {}
    for name, extra in (("pop", []), ("itemknn", ["--set", "model.last_n=2", "--set", "model.k=10"])):
        run = runs[name] = tmp_path / name
        assert 0 == _cli(["train", "--model", name, "--data", str(data_dir), "--out", str(run),
                          "--set", "train.progress=false", "--set", "eval.ks=[1,5,10]", *extra])
        for f in ("config.yaml", "model.safetensors", "metrics.json", "ranks.parquet", "log.jsonl"):
            assert (run / f).exists(), f
        m = json.loads((run / "metrics.json").read_text())
        assert m["protocol"] == "full" and {"valid", "test"} <= set(m) and m["valid"]["n_cases"] == N_USERS
        log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
        assert len(log) == 1 and log[0]["valid"] == m["valid"] and log[0]["targets"] == N_USERS * (SEQ_LEN - 2)
        assert pl.read_parquet(run / "ranks.parquet").height == N_USERS
        for proto, slug in (("full", "full"), ("sampled:10", "sampled-10"),
                            ("sampled:10:popularity", "sampled-10-popularity"), ("candidates:10", "candidates-10")):
            assert 0 == _cli(["evaluate", str(run), "--protocol", proto, "--split", "both"])
            out = json.loads((run / f"eval-{slug}.json").read_text())
            assert out["protocol"].startswith(proto) and 0 <= out["test"]["HR@10"] <= 1 and "HR@10" in out["valid"]
        full = json.loads((run / "eval-full.json").read_text())
        assert full["test"] == m["test"] and full["valid"] == m["valid"]  # re-scoring the saved run gives the trained run's numbers
    # the cycle walks with step 1 or 2, so the last two items pin the next one: ItemKNN on the last 2 items
    # beats popularity (uniform here: every item is equally frequent) by far
    knn = json.loads((runs["itemknn"] / "metrics.json").read_text())["test"]
    pop = json.loads((runs["pop"] / "metrics.json").read_text())["test"]
    assert knn["HR@10"] > 0.9 and knn["HR@10"] > pop["HR@10"] + 0.3, (knn, pop)
    capsys.readouterr()
    assert 0 == _cli(["compare", str(runs["itemknn"]), str(runs["pop"])])
    assert "HR@10" in capsys.readouterr().out
    # ItemKNN's top-10 depends on the history; Pop's does not (with the history's own items allowed)
    a, b = _top(runs["itemknn"], "i3,i5,i7", capsys), _top(runs["itemknn"], "i20,i21,i22", capsys)
    assert len(a) == len(b) == 10 and a != b and a[0] == "i9" and b[0] == "i23"
    pa, pb = (_top(runs["pop"], h, capsys, "--include-seen") for h in ("i3,i5,i7", "i20,i21,i22"))
    assert len(pa) == 10 and pa == pb
    # the loaded run scores exactly like the fitted model
    cfg = build_experiment(data=data_dir, model="itemknn", sets=["train.progress=false", "eval.ks=[1,5,10]",
                                                                "model.last_n=2", "model.k=10"])
    t = Trainer(cfg, tmp_path / "again")
    t.fit()
    h = torch.tensor([[0, 0, 3, 5], [1, 2, 3, 4], [0, 0, 0, 0]])
    torch.testing.assert_close(load_run(runs["itemknn"]).model.score_all(h), t.model.score_all(h), rtol=0, atol=0)


def test_grid_with_pop_and_itemknn_variants(data_dir, tmp_path):
    """Baselines as grid variants: the base's backbone options (dropout, max_len) do not reach them."""
    import yaml

    from mmseqrec.experiment import load_grid, run_grid, write_report

    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text(yaml.safe_dump(sort_keys=False, data={
        "name": "tiny", "datasets": {"cycle": str(data_dir)}, "backbones": ["sasrec"], "seeds": [1],
        "protocols": ["full", "sampled:5"], "metrics": ["HR@5"], "baseline": "ID",
        "base": {"model": {"dropout": 0.1, "max_len": 10}, "item_encoder": {"name": "id", "dim": 8},
                 "train": {"epochs": 1, "batch_size": 32, "progress": False}, "eval": {"ks": [5, 10]}},
        "backbone_overrides": {"itemknn": {"model": {"last_n": 2}}},
        "variants": {"ID": {}, "Pop": {}, "ItemKNN": {}},
        "variant_backbones": {"Pop": ["pop"], "ItemKNN": ["itemknn"]},
    }))
    runs = run_grid(load_grid(grid_file), tmp_path / "out", progress=False)
    assert [(r.variant, r.backbone) for r in runs] == [("ID", "sasrec"), ("Pop", "pop"), ("ItemKNN", "itemknn")]
    knn = yaml.safe_load((runs[2].run_dir / "config.yaml").read_text())["model"]
    assert knn["last_n"] == 2 and knn["max_len"] == 200
    for r in runs:
        assert (r.run_dir / "eval-sampled-5.json").exists()
    csv = pl.read_csv(write_report(load_grid(grid_file), tmp_path / "out")["csv"])
    assert {"pop", "itemknn", "sasrec"} <= set(csv["backbone"].to_list())


def test_every_results_grid_carries_pop_and_itemknn():
    """Every results table (and the demo) has Pop and ItemKNN rows (general-split grids: MostPop), and every
    planned run config validates."""
    from mmseqrec.experiment import load_grid
    from mmseqrec.experiment.runner import plan_runs
    from mmseqrec.train.config import load_experiment

    root = Path(__file__).resolve().parents[1] / "configs" / "experiments"
    validation_only = {"ablation-dmesr.yaml", "demo-dmesr.yaml"}  # options on validation / the multimodal demo
    files = sorted(p for p in root.glob("*.yaml") if p.name not in validation_only)
    assert {"table-movielens.yaml", "table-synthetic.yaml", "demo-backbones.yaml"} <= {p.name for p in files}
    for f in files:
        runs = plan_runs(load_grid(f), "/nonexistent")
        if f.name.startswith("general-"):  # general-split grids (issue #13): popularity on the same split
            assert "mostpop" in {r.backbone for r in runs}, f.name
        else:
            assert {"pop", "itemknn"} <= {r.backbone for r in runs}, f.name
        for r in runs:
            cfg = load_experiment(base=r.config)
            assert cfg.model.name == r.backbone


def test_bad_baseline_options_are_one_line_errors(data_dir, tmp_path, capsys):
    for model, opt in (("itemknn", "model.k=0"), ("itemknn", "model.decay=0"), ("itemknn", "model.shrink=-1"),
                       ("pop", "model.dropout=0.1")):
        capsys.readouterr()
        assert 2 == _cli(["train", "--model", model, "--data", str(data_dir), "--out", str(tmp_path / "x"),
                          "--set", opt])
        err = capsys.readouterr().err
        assert "model." in err and "Traceback" not in err, err
    assert not (tmp_path / "x").exists()


def test_closed_form_run_resumes_and_overwrites(data_dir, tmp_path):
    run = tmp_path / "r"
    assert 0 == _cli(["train", "--model", "itemknn", "--data", str(data_dir), "--out", str(run),
                      "--set", "train.progress=false"])
    first = json.loads((run / "metrics.json").read_text())
    assert 0 == _cli(["evaluate", str(run), "--protocol", "sampled:5"])
    assert 0 == _cli(["train", "--out", str(run), "--resume"])  # refits: the same numbers
    assert json.loads((run / "metrics.json").read_text())["test"] == first["test"]
    assert 0 == _cli(["train", "--model", "pop", "--data", str(data_dir), "--out", str(run), "--overwrite",
                      "--set", "train.progress=false"])
    assert not list(run.glob("eval-*.json"))  # the overwritten run's re-scores are gone
    assert "name: pop" in (run / "config.yaml").read_text()
