"""Full ranking in item chunks: identical ranks and ties to the one-piece path, running top-K, memory bound."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmseqrec.data import SequenceData, leave_one_out
from mmseqrec.evaluate import evaluate_ranking
from mmseqrec.evaluate.chunked import chunked_rank_parts
from mmseqrec.evaluate.metrics import rank_parts
from mmseqrec.models import IdEmbedding, SASRec, SASRecConfig, SequenceModel
from mmseqrec.train import make_score_fn

torch.set_num_threads(1)
N_ITEMS, D = 97, 8


def _data(n_users=60, seed=3):
    rng = np.random.default_rng(seed)
    lists = [list(rng.integers(1, N_ITEMS + 1, size=rng.integers(3, 15))) for _ in range(n_users)]
    return SequenceData.from_lists(lists, n_items=N_ITEMS)


def _model_with_duplicates():
    torch.manual_seed(0)
    m = SequenceModel(IdEmbedding(N_ITEMS, D), SASRec(SASRecConfig(max_len=20, dropout=0.0), D)).eval()
    with torch.no_grad():
        w = m.item_encoder.embedding.weight
        # duplicated item vectors inside one chunk and across chunk boundaries (for chunks of 7, 16 and 32)
        for src, dups in {5: [6, 40, 96], 17: [33, 34, 97], 60: [61, 2]}.items():
            w[dups] = w[src].clone()
    return m


@pytest.mark.parametrize("chunk", [1, 7, 16, 32, 200])
@pytest.mark.parametrize("exclude_history", [False, True])
def test_chunked_full_ranking_identical_to_one_piece(chunk, exclude_history):
    seqs = _data()
    sp = leave_one_out(seqs)
    model = _model_with_duplicates()
    fn = make_score_fn(model, torch.device("cpu"))
    ref = evaluate_ranking(fn, sp.test, seqs, "full", exclude_history=exclude_history, max_len=20,
                           batch_size=16, progress=False, item_chunk=0)
    got = evaluate_ranking(fn, sp.test, seqs, "full", exclude_history=exclude_history, max_len=20,
                           batch_size=16, progress=False, item_chunk=chunk)
    np.testing.assert_array_equal(got.ranks, ref.ranks)
    np.testing.assert_array_equal(got.tied, ref.tied)
    assert got.metrics == ref.metrics
    # targets whose item vector is duplicated really tie (the test exercises ties)
    assert ref.tied.max() >= 1


def test_chunked_rank_parts_hand_values_and_running_topk():
    items = torch.tensor([[0.0], [1.0], [3.0], [2.0], [3.0], [-1.0], [3.0], [0.5]])  # ids 1..7
    users = torch.tensor([[1.0], [-1.0]])
    targets = torch.tensor([4, 3])
    # row 0 scores 1,3,2,3,-1,3,0.5 target 4 (3): greater 0, tied 2 (ids 2, 6); history id 6 excluded -> tied 1
    # row 1 scores -1,-3,-2,-3,1,-3,-0.5 target 3 (-2): greater 3 (ids 1, 5, 7), tied 0
    for chunk in (1, 2, 3, 7, 100):
        g, t, ts, ti = chunked_rank_parts(users, items, targets, chunk=chunk, k=3,
                                          exclude=(np.array([0, 1]), np.array([6, 3])))
        assert g.tolist() == [0, 3] and t.tolist() == [1, 0]
        assert ts.tolist() == [[3.0, 3.0, 2.0], [1.0, -0.5, -1.0]]
        assert ti[1].tolist() == [5, 7, 1] and set(ti[0, :2].tolist()) == {2, 4}


def test_chunked_matches_rank_parts_on_random_scores():
    g0 = torch.Generator().manual_seed(5)
    items = torch.randn(1001, 4, generator=g0).round()  # coarse values: many exact ties
    users = torch.randn(33, 4, generator=g0).round()
    targets = torch.randint(1, 1001, (33,), generator=g0)
    full = users @ items.T
    excl = torch.zeros(full.shape, dtype=torch.bool)
    excl[:, 0] = True
    ref_g, ref_t = rank_parts(full, targets, excl)
    g, t, ts, ti = chunked_rank_parts(users, items, targets, chunk=64, k=10)
    assert torch.equal(g, ref_g) and torch.equal(t, ref_t)
    torch.testing.assert_close(ts, torch.topk(full[:, 1:], 10, dim=1).values)
    torch.testing.assert_close(torch.gather(full, 1, ti), ts)


def test_chunked_path_never_scores_all_items_at_once():
    """With ``user_item`` the full matrix is never requested; the largest score block is [batch, chunk]."""
    seqs = _data()
    sp = leave_one_out(seqs)
    g0 = torch.Generator().manual_seed(1)
    items = torch.randn(N_ITEMS + 1, 4, generator=g0)
    users = torch.randn(seqs.n_users + 1, 4, generator=g0)
    shapes = []

    def fn(h, c):
        raise AssertionError("the one-piece path was used")

    def user_item(h):
        return users[: h.shape[0]], items

    fn.user_item = user_item
    import mmseqrec.evaluate.chunked as ch

    orig = ch._product

    def spy(u, w, chunk):
        out = orig(u, w, chunk)
        shapes.append(tuple(out.shape))
        return out

    ch._product = spy
    try:
        res = evaluate_ranking(fn, sp.test, seqs, "full", max_len=20, batch_size=16, progress=False, item_chunk=10)
    finally:
        ch._product = orig
    assert res.metrics["n_cases"] == len(sp.test)
    assert max(s[1] for s in shapes) == 10 and max(s[0] for s in shapes) == 16
