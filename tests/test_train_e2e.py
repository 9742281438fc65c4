"""End-to-end: train / resume / determinism / checkpoints / CLI on a tiny synthetic dataset directory."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import yaml
from helpers import run_cli, write_cycle_dataset

from mmseqrec.cli.train import build_experiment
from mmseqrec.data.dataset import SequenceData
from mmseqrec.train import Trainer
from mmseqrec.train.batching import left_padded, window_matrix

torch.set_num_threads(1)
N_ITEMS, N_USERS, SEQ_LEN = 30, 120, 12


# ----------------------------------------------------------------------------- synthetic dataset
def write_dataset(root: Path) -> Path:
    return write_cycle_dataset(root, N_USERS, N_ITEMS, SEQ_LEN)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data") / "ds")


def _cfg(data_dir, model="sasrec", epochs=12, extra=()):
    sets = [f"train.epochs={epochs}", "train.batch_size=32", "train.lr=0.005", "train.max_len=10",
            "train.progress=false", "train.patience=0", "item_encoder.dim=32", "objective.name=ce",
            "model.dropout=0.1", "eval.ks=[1,5,10]", *extra]
    return build_experiment(data=data_dir, model=model, sets=sets, seed=7)


_cli = run_cli


def _state(path):
    from safetensors.torch import load_file

    return load_file(str(path))


# ----------------------------------------------------------------------------- tests
def test_window_matrix_is_left_padded_last_items():
    seqs = SequenceData.from_lists([[1, 2, 3, 4, 5], [6, 7]])
    train_end = np.array([0, 3, 7])  # user 1 trains on [1,2,3], user 2 on [6,7]
    mat, lens = window_matrix(seqs, train_end, 4)
    np.testing.assert_array_equal(mat, [[0, 0, 0, 0], [0, 1, 2, 3], [0, 0, 6, 7]])
    np.testing.assert_array_equal(lens, [0, 3, 2])
    np.testing.assert_array_equal(left_padded(seqs.items, np.array([0]), np.array([5]), 2), [[4, 5]])


def test_sasrec_trains_beats_random_and_writes_run(data_dir, tmp_path):
    run = tmp_path / "run"
    metrics = Trainer(_cfg(data_dir), run).fit()
    assert set(metrics) >= {"protocol", "valid", "test", "exclude_history", "seed", "n_params", "best_epoch"}
    assert metrics["protocol"] == "full" and metrics["seed"] == 7
    # random ranking of 30 items: HR@10 = 1/3, NDCG@10 about 0.15
    assert metrics["test"]["HR@10"] > 0.8 and metrics["test"]["NDCG@10"] > 0.5, metrics["test"]
    on_disk = json.loads((run / "metrics.json").read_text())
    assert on_disk["test"] == metrics["test"] and on_disk["valid"]["NDCG@10"] > 0.5
    log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == list(range(1, 13))
    assert all(r["targets_per_s"] > 0 and "rec" in r["loss"] and "NDCG@10" in r["valid"] for r in log)
    assert log[-1]["loss"]["rec"] < log[0]["loss"]["rec"]
    assert log[0]["targets"] == N_USERS * 9  # 10 training items per user -> 9 next-item targets
    assert pl.read_parquet(run / "ranks.parquet").height == N_USERS
    # no pickles: every file is safetensors / JSON / YAML / Parquet, and the safetensors parse as such
    from safetensors import safe_open

    suffixes = {p.suffix for p in run.iterdir()}
    assert suffixes <= {".safetensors", ".json", ".jsonl", ".yaml", ".parquet"}, suffixes
    for p in run.glob("*.safetensors"):
        with safe_open(str(p), framework="pt") as fh:
            assert len(list(fh.keys())) > 0
        header = int.from_bytes(p.read_bytes()[:8], "little")
        json.loads(p.read_bytes()[8:8 + header])
    # the resolved config round-trips
    again = build_experiment(config=run / "config.yaml")
    assert again.model_dump() == _cfg(data_dir).model_dump()


@pytest.mark.parametrize("model", ["bert4rec", "gru4rec"])
def test_other_backbones_learn(data_dir, tmp_path, model):
    extra = ["model.mask_prob=0.3"] if model == "bert4rec" else []
    metrics = Trainer(_cfg(data_dir, model, epochs=15 if model == "bert4rec" else 12, extra=extra),
                      tmp_path / model).fit()
    assert metrics["test"]["NDCG@10"] > 0.6, metrics["test"]  # random: about 0.15


def test_determinism_and_resume(data_dir, tmp_path):
    full = Trainer(_cfg(data_dir, epochs=3, extra=["objective.name=bce"]), tmp_path / "a").fit()
    same = Trainer(_cfg(data_dir, epochs=3, extra=["objective.name=bce"]), tmp_path / "b").fit()
    sa, sb = _state(tmp_path / "a" / "last.safetensors"), _state(tmp_path / "b" / "last.safetensors")
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert full == same
    # interrupted after 1 epoch, resumed to 3: identical to the uninterrupted run
    Trainer(_cfg(data_dir, epochs=1, extra=["objective.name=bce"]), tmp_path / "c").fit()
    resumed = Trainer(_cfg(data_dir, epochs=3, extra=["objective.name=bce"]), tmp_path / "c", resume=True).fit()
    sc = _state(tmp_path / "c" / "last.safetensors")
    for k in sa:
        torch.testing.assert_close(sa[k], sc[k])
    assert math.isclose(resumed["test"]["NDCG@10"], full["test"]["NDCG@10"], rel_tol=1e-6)
    log = [json.loads(x) for x in (tmp_path / "c" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3]
    # resuming with a changed model is refused; an existing run is not overwritten silently
    from mmseqrec.errors import InputError

    with pytest.raises(InputError, match="differs"):
        Trainer(_cfg(data_dir, epochs=3, extra=["objective.name=ce"]), tmp_path / "c", resume=True)
    with pytest.raises(InputError, match="overwrite"):
        Trainer(_cfg(data_dir, epochs=1), tmp_path / "c")


def test_cli_train_evaluate_recommend(data_dir, tmp_path, capsys):
    run = tmp_path / "cli-run"
    cfg_file = tmp_path / "exp.yaml"
    cfg_file.write_text("train:\n  epochs: 12\n  batch_size: 32\n  lr: 0.005\n  max_len: 10\n  progress: false\n"
                        "item_encoder:\n  dim: 32\nobjective:\n  name: ce\neval:\n  ks: [1, 5, 10]\n")
    assert 0 == _cli(["train", "--data", str(data_dir), "--model", "sasrec", "--out", str(run), "--config", str(cfg_file),
          "--set", "model.dropout=0.1", "--seed", "3"])
    m = json.loads((run / "metrics.json").read_text())
    assert m["seed"] == 3 and m["test"]["HR@10"] > 0.8
    assert 2 == _cli(["train", "--data", str(data_dir), "--out", str(run)])  # exists: refused
    assert 0 == _cli(["train", "--out", str(run), "--resume", "--set", "train.epochs=13"])
    assert len((run / "log.jsonl").read_text().splitlines()) == 13
    capsys.readouterr()
    assert 0 == _cli(["evaluate", str(run), "--protocol", "sampled:10"])
    out = json.loads((run / "eval-sampled-10.json").read_text())
    assert out["protocol"].startswith("sampled:10") and out["test"]["HR@10"] > 0.8  # the one eval schema
    assert pl.read_parquet(run / "ranks-sampled-10.parquet").height == N_USERS
    capsys.readouterr()
    # user walking with step 2: i3, i5, i7 -> next is i9
    assert 0 == _cli(["recommend", str(run), "--history", "i3,i5,nope,i7", "-k", "3", "--json"])
    rec = json.loads(capsys.readouterr().out)
    assert rec["unknown"] == ["nope"] and len(rec["items"]) == 3
    assert rec["items"][0]["item_id"] == "i9" and rec["items"][0]["title"] == "Item 9"
    assert all(i["item_id"] not in {"i3", "i5", "i7"} for i in rec["items"])
    # no usable history: a clear error naming the ids, or popularity when asked for (and labelled)
    assert 2 == _cli(["recommend", str(run), "--history", "zzz"])
    err = capsys.readouterr().err
    assert "none of the 1 history id(s) is in the catalogue (zzz)" in err and "--cold popularity" in err
    assert 2 == _cli(["recommend", str(run)])
    assert "no history given" in capsys.readouterr().err
    assert 2 == _cli(["recommend", str(run), "--history", " , "])
    assert "no history given" in capsys.readouterr().err
    assert 0 == _cli(["recommend", str(run), "--history", "zzz", "--cold", "popularity", "-k", "2", "--json"])
    pop = json.loads(capsys.readouterr().out)
    inter = pl.read_parquet(data_dir / "interactions.parquet")
    train_part = inter.filter(pl.int_range(pl.len()).over("user") < SEQ_LEN - 2)  # leave-one-out training prefixes
    counts = np.bincount(train_part["item"].to_numpy())
    best = np.argsort(-counts, kind="stable")[:2]
    assert pop["source"] == "popularity" and pop["unknown"] == ["zzz"]
    assert [i["score"] for i in pop["items"]] == counts[best].astype(float).tolist()
    assert 0 == _cli(["recommend", str(run), "--cold", "popularity", "-k", "2"])
    assert "POPULARITY" in capsys.readouterr().out
    for bad in ("-5", "0"):
        assert 2 == _cli(["recommend", str(run), "--history", "i3", "-k", bad])
        assert "k must be at least 1" in capsys.readouterr().err
    assert 2 == _cli(["recommend", str(run), "--history", "i3", "--cold", "random"])
    assert "unknown cold-start policy" in capsys.readouterr().err
    # user errors: one line, exit code 2
    assert 2 == _cli(["train", "--data", str(data_dir), "--model", "transformer", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert "unknown model 'transformer'" in err and all(m in err for m in ("bert4rec", "gru4rec", "sasrec"))


def test_content_and_initialised_id_encoders_from_embedding_stores(data_dir, tmp_path):
    from mmseqrec.embed.store import save_embedding
    from mmseqrec.models import ContentEmbedding, IdEmbedding

    rng = np.random.default_rng(1)
    text = rng.standard_normal((N_ITEMS + 1, 12)).astype(np.float32)
    text[0] = 0
    text = text.astype(np.float16).astype(np.float32)  # stores are float16
    save_embedding(data_dir, "text-test", text, {"encoder": "random"})
    save_embedding(data_dir, "pca-test", text[:, :8].repeat(4, 1), {"encoder": "random"})  # [31, 32]
    t = Trainer(_cfg(data_dir, epochs=2, extra=["item_encoder.name=content", "item_encoder.embedding=text-test"]),
                tmp_path / "content")
    enc = t.model.item_encoder
    assert isinstance(enc, ContentEmbedding) and enc.adapter[0].out_features == 6
    torch.testing.assert_close(enc.features, torch.from_numpy(text))
    assert not enc.features.requires_grad and "item_encoder.features" in t.model.state_dict()
    m = t.fit()
    assert m["test"]["HR@10"] > 0  # trains and scores end to end
    t2 = Trainer(_cfg(data_dir, epochs=1, extra=["item_encoder.init=pca-test"]), tmp_path / "init")
    assert isinstance(t2.model.item_encoder, IdEmbedding)
    w = t2.model.item_encoder.embedding.weight.detach()
    torch.testing.assert_close(w[1:], torch.from_numpy(text[1:, :8].repeat(4, 1)))
    assert (w[0] == 0).all()


def test_example_configs_validate():
    root = Path(__file__).resolve().parents[1] / "configs"
    files = [root / f"{n}.yaml" for n in ("sasrec", "sasrec-ce-full", "gsasrec", "bert4rec", "gru4rec",
                                          "llmemb-content")]
    names = set()
    for f in files:
        cfg = build_experiment(config=f)
        names.add(cfg.model.name)
    assert names >= {"sasrec", "bert4rec", "gru4rec"}


def test_registered_regularizer_is_built_logged_and_ignored_at_inference(data_dir, tmp_path, monkeypatch):
    from mmseqrec import registry
    from mmseqrec.config import Config
    from mmseqrec.serve.recommend import recommend

    class NormCfg(Config):
        name: str = "norm"
        weight: float = 0.5

    class Norm(torch.nn.Module):
        def __init__(self, cfg, windows):
            super().__init__()
            self.weight, self.scale = cfg.weight, torch.nn.Parameter(torch.ones(()))
            self.n_rows = windows.shape[0]

        def forward(self, model, batch, user_states):
            assert user_states.shape == (batch.seq.shape[0], 32)
            return {"norm": self.weight * self.scale * user_states.pow(2).mean()}

    monkeypatch.setitem(registry.REGULARIZERS, "norm",
                        registry.RegularizerSpec(NormCfg, lambda cfg, *, tensors, windows, n_users, n_items:
                                                 Norm(cfg, windows)))
    t = Trainer(_cfg(data_dir, epochs=2, extra=["regularizers=[{name: norm, weight: 0.25}]"]), tmp_path / "r")
    assert t.model.regularizers[0].n_rows == N_USERS + 1
    t.fit()
    log = [json.loads(x) for x in (tmp_path / "r" / "log.jsonl").read_text().splitlines()]
    assert log[0]["loss"]["norm"] > 0
    assert abs(log[0]["loss"]["loss"] - log[0]["loss"]["rec"] - log[0]["loss"]["norm"]) < 1e-4
    assert recommend(tmp_path / "r", ["i1", "i2"], k=2).items  # inference without the regulariser


def test_defaults_resolve_to_sasrec_with_id_table():
    from mmseqrec.models import IdEmbeddingConfig, SASRecConfig
    from mmseqrec.train import load_experiment

    cfg = load_experiment(None, ["train.max_len=30"])
    assert isinstance(cfg.model, SASRecConfig) and isinstance(cfg.item_encoder, IdEmbeddingConfig)
    assert cfg.model.max_len == 30 and cfg.model.causal and cfg.objective.name == "auto"
    assert cfg.eval.protocol == "full" and cfg.eval.ks == [5, 10, 20] and cfg.train.select_metric == "NDCG@10"


# ----------------------------------------------------------------------------- training windows (issue #9)
def test_all_windows_make_every_training_item_a_target_once():
    from mmseqrec.train.batching import TrainBatches, window_counts

    seqs = SequenceData.from_lists([[1, 2, 3, 4, 5, 6, 7, 8, 9], [10, 11], [12]])
    train_end = np.array([0, 7, 11, 12])  # user 1 trains on 1..7, user 2 on 10, 11, user 3 on 12 (too short)
    tb = TrainBatches(seqs, train_end, width=3, batch_size=100, windows="all")
    lens, batch = next(tb.epoch(0, 0))
    rows = {tuple(r) for r in batch.seq.tolist()}
    assert rows == {(5, 6, 7), (3, 4, 5), (1, 2, 3), (0, 10, 11)}  # stride width - 1: one shared item
    targets = sorted(r[i] for r in batch.seq.tolist() for i in range(1, 3) if r[i - 1])  # inputs are real
    assert targets == [2, 3, 4, 5, 6, 7, 11]  # every training item but each user's first, exactly once
    owner = dict(zip(map(tuple, batch.seq.tolist()), batch.users.tolist(), strict=True))
    assert owner[(1, 2, 3)] == owner[(5, 6, 7)] == 1 and owner[(0, 10, 11)] == 2
    assert sorted(lens.tolist()) == [2, 3, 3, 3] and tb.n_targets(lens, causal=True) == 7
    assert tb.matrix.shape == (4, 3) and tb.matrix[1].tolist() == [5, 6, 7]  # regularisers: one row per user
    # cloze (width L, stride L): every item inside exactly one window
    cl = TrainBatches(seqs, train_end, width=3, batch_size=100, min_items=1, windows="all")
    _, b = next(cl.epoch(0, 0))
    assert sorted(t for r in b.seq.tolist() for t in r if t) == [1, 2, 3, 4, 5, 6, 7, 10, 11, 12]
    np.testing.assert_array_equal(window_counts(np.array([0, 1, 2, 3, 4, 5]), 3, 2, 2), [0, 0, 1, 1, 2, 2])
    # last: one window per user (the previous behaviour); sampled: as many as all, random ends, reproducible
    last = TrainBatches(seqs, train_end, width=3, batch_size=100, windows="last")
    assert {tuple(r) for r in next(last.epoch(0, 0))[1].seq.tolist()} == {(5, 6, 7), (0, 10, 11)}
    sm = TrainBatches(seqs, train_end, width=3, batch_size=2, windows="sampled")
    ep = [torch.cat([b.seq for _, b in sm.epoch(0, e)]) for e in (0, 0, 1)]
    assert ep[0].shape == (4, 3) and torch.equal(ep[0], ep[1]) and not torch.equal(ep[0], ep[2])
    for r in ep[2].tolist():  # windows of consecutive training items of one user
        real = [t for t in r if t]
        assert len(real) >= 2 and (real == list(range(real[0], real[0] + len(real))))
        assert all(t <= 7 for t in real) or all(t in (10, 11) for t in real)


@pytest.mark.parametrize("windows", ["all", "sampled"])
def test_window_kinds_resume_bit_identically(data_dir, tmp_path, windows):
    extra = [f"train.windows={windows}", "train.max_len=4", "objective.name=bce"]
    Trainer(_cfg(data_dir, epochs=3, extra=extra), tmp_path / "a").fit()
    Trainer(_cfg(data_dir, epochs=1, extra=extra), tmp_path / "b").fit()
    Trainer(_cfg(data_dir, epochs=3, extra=extra), tmp_path / "b", resume=True).fit()
    sa, sb = _state(tmp_path / "a" / "last.safetensors"), _state(tmp_path / "b" / "last.safetensors")
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    if windows == "all":
        log = [json.loads(x) for x in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
        assert log[0]["targets"] == N_USERS * 9  # 10 training items, windows of 5: every item but the first


@pytest.mark.parametrize("model", ["sasrec", "bert4rec", "gru4rec"])
def test_demo_size_model_personalises(tmp_path, model):
    """Issue #9.4: a demo-size model (the demo's training section) must not return the same top-10 for very
    different histories (popularity would: both genres have the same popularity profile)."""
    from helpers import write_genre_dataset

    from mmseqrec.experiment.config import load_grid
    from mmseqrec.serve.recommend import recommend

    data = write_genre_dataset(tmp_path / "genres")
    grid = load_grid(Path(__file__).resolve().parents[1] / "configs" / "experiments" / "demo-backbones.yaml")
    sets = [f"train.{k}={json.dumps(v)}" for k, v in grid.base["train"].items() if k != "num_threads"]
    # the demo's own per-backbone options (e.g. BERT4Rec's mask_prob and max_len, GRU4Rec's lr), as the demo
    # trains them; windows of 20 unless the backbone's override sets its own max_len
    over = grid.backbone_overrides.get(model, {})
    sets += [f"train.epochs={4 if model != 'bert4rec' else 8}", "train.progress=false", "item_encoder.dim=32",
             f"objective.name={grid.base['objective']['name']}", "model.dropout=0.1"]
    sets += [] if "max_len" in (over.get("model") or {}) else ["train.max_len=20"]
    sets += [f"{sec}.{k}={json.dumps(v)}" for sec in ("model", "train") for k, v in (over.get(sec) or {}).items()]
    cfg = build_experiment(data=data, model=model, sets=sets, seed=0)
    assert cfg.train.windows != "last"
    Trainer(cfg, tmp_path / "run").fit()
    a = [i[0] for i in recommend(tmp_path / "run", [f"i{i}" for i in (1, 2, 3, 5, 8)], k=10).items]
    b = [i[0] for i in recommend(tmp_path / "run", [f"i{i}" for i in (41, 42, 43, 45, 48)], k=10).items]
    assert a != b
    assert sum(int(x[1:]) <= 40 for x in a) >= 8 and sum(int(x[1:]) > 40 for x in b) >= 8, (a, b)


def test_cli_train_epochs_and_device_flags(data_dir, tmp_path):
    run = tmp_path / "flags"
    assert 0 == _cli(["train", "--data", str(data_dir), "--model", "gru4rec", "--out", str(run), "--epochs", "2",
                      "--device", "cpu", "--set", "train.progress=false", "--set", "train.batch_size=64"])
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["train"]["epochs"] == 2 and cfg["train"]["device"] == "cpu"
    assert len((run / "log.jsonl").read_text().splitlines()) == 2
