"""Evaluation edge cases: fp32 scoring, exact ties of equal item vectors under every protocol, negatives that
avoid the user's whole sequence, and explicit candidate files."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from mmseqrec.data import SequenceData, leave_one_out
from mmseqrec.errors import InputError
from mmseqrec.evaluate import evaluate_ranking, item_popularity, read_candidates, write_candidates
from mmseqrec.fileio import sha256_file
from mmseqrec.train.config import load_experiment
from mmseqrec.train.run import build_model
from mmseqrec.train.trainer import evaluate_model, make_score_fn

torch.set_num_threads(1)


# ------------------------------------------------------------------------------------------ a. fp32 scoring

class _Recorder(torch.nn.Module):
    """Scores ``u @ items.T``; records the dtype its matmuls ran in."""

    def __init__(self, n_items: int) -> None:
        super().__init__()
        self.items = torch.nn.Parameter(torch.randn(n_items + 1, 8))
        self.dtypes: list[torch.dtype] = []

    def _u(self, h):
        return self.items[h].mean(1)

    def score_all(self, h):
        s = self._u(h) @ self.items.T
        self.dtypes.append(s.dtype)
        return s.float()  # what a model that upcasts would return: float32 tensor, bf16 arithmetic

    def score(self, h, c):
        s = (self._u(h).unsqueeze(1) * self.items[c]).sum(-1)
        self.dtypes.append(s.dtype)
        return s.float()


def test_evaluation_scores_in_float32_even_with_bf16_training():
    seqs = SequenceData.from_lists([[1, 2, 3, 4, 5], [6, 7, 8, 9]], n_items=20)
    sp = leave_one_out(seqs)
    cfg = load_experiment(overrides=["train.bf16=true", "train.max_len=5"])
    assert cfg.train.bf16
    model = _Recorder(20)
    # even inside a bf16 autocast region (as a training step would be), evaluation runs in float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for proto in ("full", "sampled:3"):
            res = evaluate_model(model, sp.test, sp, cfg, torch.device("cpu"), protocol=proto)
            assert res.scoring_dtype == "float32" and res.to_dict()["scoring_dtype"] == "float32"
    assert model.dtypes and set(model.dtypes) == {torch.float32}
    assert make_score_fn(model, torch.device("cpu")).scoring_dtype == "float32"


# ------------------------------------------------------------------------- b. equal vectors tie exactly

N_ITEMS = 300


@pytest.fixture(scope="module")
def constant_model():
    """A real SASRec whose item vectors are all equal: every candidate ties with the target."""
    cfg = load_experiment(overrides=["model.name=sasrec", "item_encoder.dim=50", "train.max_len=20",
                                     "model.dropout=0.0"])
    torch.manual_seed(0)
    model = build_model(cfg, N_ITEMS)
    with torch.no_grad():
        w = model.item_encoder.embedding.weight
        w[1:N_ITEMS + 1] = torch.randn(1, w.shape[1])
    model.eval()
    rng = np.random.default_rng(0)
    lists = [rng.choice(np.arange(1, N_ITEMS + 1), size=int(rng.integers(4, 15)), replace=False).tolist()
             for _ in range(400)]
    seqs = SequenceData.from_lists(lists, n_items=N_ITEMS)
    return model, seqs, leave_one_out(seqs)


@pytest.mark.parametrize("proto,n_cand", [("full", N_ITEMS), ("sampled:100", 101), ("candidates:100", 101),
                                          ("sampled:100:popularity", 101)])
def test_constant_model_ties_exactly_under_every_protocol(constant_model, proto, n_cand):
    model, seqs, sp = constant_model
    fn = make_score_fn(model, torch.device("cpu"))
    pop = item_popularity(sp.seqs, sp.train_end) + 1  # every item drawable
    r = evaluate_ranking(fn, sp.test, seqs, proto, ks=(10,), max_len=20, item_popularity=pop, progress=False)
    assert (r.tied == n_cand - 1).all()  # every other candidate ties, bit for bit
    assert r.metrics["HR@10"] == 0.0 and r.metrics["NDCG@10"] == 0.0
    if proto != "full":
        assert r.metrics["AUC"] == 0.0  # (AUC_global pools pairs across users, whose scores differ)
    rr = evaluate_ranking(fn, sp.test, seqs, proto + ":ties=random", ks=(10,), max_len=20, item_popularity=pop,
                          progress=False)
    assert rr.metrics["HR@10"] == pytest.approx(10 / n_cand, abs=1e-12)
    assert rr.metrics["NDCG@10"] == pytest.approx(sum(1 / np.log2(i + 2) for i in range(10)) / n_cand, abs=1e-12)
    if proto != "full":
        assert rr.metrics["AUC"] == pytest.approx(0.5, abs=1e-12)


# ---------------------------------------------------------- e. negatives avoid the user's whole sequence

def test_validation_negatives_never_contain_the_later_test_item():
    # items 1..6; the user's sequence is 1..5: valid target 4, test target 5. Only item 6 was never seen.
    seqs = SequenceData.from_lists([[1, 2, 3, 4, 5], [6, 1, 2]], n_items=6)
    sp = leave_one_out(seqs)
    seen = []

    def rec(h, c):
        seen.append(c.clone())
        return torch.zeros(c.shape)

    for seed in range(20):
        for proto in (f"sampled:1:seed={seed}", f"candidates:1:seed={seed}"):
            seen.clear()
            evaluate_ranking(rec, sp.valid, seqs, proto, ks=(1,), progress=False)
            lists = torch.cat(seen)
            assert sorted(lists[0].tolist()) == [4, 6]  # user 1: target 4 + the one unseen item, never 5
            other = set(lists[1].tolist()) - {1}  # user 2 (6, 1, 2): target 1; 2 comes later, 6 earlier
            assert len(other) == 1 and other <= {3, 4, 5}
    with pytest.raises(InputError, match="only 1 eligible"):
        evaluate_ranking(rec, sp.valid, seqs, "sampled:2", ks=(1,), progress=False)


# ---------------------------------------------------------------------------------- g. candidate files

@pytest.fixture()
def cases():
    seqs = SequenceData.from_lists([[1, 2, 3, 4, 5], [6, 7, 8], [2, 9, 10, 11]], n_items=12)
    return seqs, leave_one_out(seqs)


def test_candidate_file_round_trip_and_identical_lists(cases, tmp_path):
    seqs, sp = cases
    t = sp.test
    lists = np.array([[7, int(t.targets[0]), 12], [int(t.targets[1]), 1, 2], [3, 4, int(t.targets[2])]])
    path = tmp_path / "cands.parquet"
    sha = write_candidates(path, t.users, t.targets, lists, n_items=12)
    assert sha == sha256_file(path)
    assert pl.read_parquet(path).columns == ["user", "target", "candidates"]
    got = read_candidates(path, t.users[::-1], t.targets[::-1], n_users=3, n_items=12)  # aligned with the cases
    assert got.items.tolist() == lists[::-1].tolist() and got.target_col.tolist() == [2, 0, 1]
    seen = []

    def neg_id(h, c):
        seen.append(c.clone())
        return -c.float()

    r = evaluate_ranking(neg_id, t, seqs, f"candidates:file={path}", ks=(1, 2), progress=False)
    assert torch.cat(seen).tolist() == lists.tolist()  # the file's lists, in the file's order, unshuffled
    # score = -id: targets 5, 8, 11 rank below the smaller ids in their lists
    assert r.ranks.tolist() == [0, 2, 2] and r.metrics["AUC"] == pytest.approx((1 + 0 + 0) / 3)
    d = r.to_dict()
    assert d["protocol"] == f"candidates:file={path}"
    assert d["candidates_file"] == {"path": str(path), "sha256": sha, "n_negatives": 2}


@pytest.mark.parametrize("mutate,field,msg", [
    (lambda df: df.with_columns(pl.lit(9).alias("user")), "user", "unknown user"),
    (lambda df: df.with_columns(pl.lit([1, 2, 99]).alias("candidates")), "candidates", "unknown item"),
    (lambda df: df.with_columns(pl.lit(99).alias("target")), "target", "unknown item"),
    (lambda df: df.with_columns(pl.Series("candidates", [[1, 2, 3]] * 3)), "candidates", "not in its candidate"),
    (lambda df: df.with_columns(pl.Series("candidates", [[5, 7, 7], [8, 1, 1], [11, 3, 3]])), "candidates",
     "duplicate item"),
    (lambda df: pl.concat([df, df.head(1)]), "user", "duplicate row"),
    (lambda df: df.head(2), "user", "no candidate list"),
    (lambda df: df.with_columns(pl.Series("candidates", [[5, 7, 1], [8, 1], [11, 3, 4]])), "candidates",
     "same length"),
    (lambda df: df.drop("target"), "target", "missing column"),
    (lambda df: df.with_columns(pl.col("candidates").list.first()), "candidates", "list of item ids"),
])
def test_candidate_file_errors_name_the_field(cases, tmp_path, mutate, field, msg):
    seqs, sp = cases
    t = sp.test
    good = pl.DataFrame({"user": t.users, "target": t.targets,
                         "candidates": [[5, 7, 1], [8, 1, 2], [11, 3, 4]]})
    path = tmp_path / "bad.parquet"
    mutate(good).write_parquet(path)
    with pytest.raises(InputError, match=msg) as ei:
        evaluate_ranking(lambda h, c: -c.float(), t, seqs, f"candidates:file={path}", ks=(1,), progress=False)
    assert ei.value.field == field and ei.value.file == str(path)
    with pytest.raises(InputError, match="target 5 is not in"):
        write_candidates(tmp_path / "w.parquet", t.users, t.targets, [[1, 2], [8, 1], [11, 3]])
    assert not (tmp_path / "w.parquet").exists()  # nothing half-written


def test_candidate_file_protocol_parsing():
    from mmseqrec.evaluate import Protocol
    from mmseqrec.evaluate.protocol import protocol_slug

    p = Protocol.parse("candidates:file=/x/llm-lists.parquet:ties=random")
    assert p.file == "/x/llm-lists.parquet" and p.n is None and p.ties == "random"
    assert str(Protocol.parse(str(p))) == str(p)
    assert protocol_slug(p) == "candidates-file-llm-lists-ties-random"
    for bad in ("candidates:file=", "sampled:file=x.parquet", "candidates:file=x.parquet:seed=3"):
        with pytest.raises(InputError):
            Protocol.parse(bad)
