"""Backbones and the sequence model: shapes, padding/causal masks, scoring, registry."""

from __future__ import annotations

import pytest
import torch

from mmseqrec.errors import InputError
from mmseqrec.models import (
    BERT4Rec,
    BERT4RecConfig,
    GRU4Rec,
    GRU4RecConfig,
    IdEmbedding,
    ItemEncoder,
    SASRec,
    SASRecConfig,
    SequenceModel,
    cloze,
    cloze_batch,
)
from mmseqrec.models.item_encoders import ContentEmbedding
from mmseqrec.models.sequence import Batch
from mmseqrec.registry import item_encoder_spec, model_spec

torch.set_num_threads(1)
D, L = 16, 6


def _sasrec(causal=True, pre_ln=True):
    torch.manual_seed(0)
    return SASRec(SASRecConfig(n_layers=2, n_heads=2, dropout=0.0, max_len=L, causal=causal, pre_ln=pre_ln),
                  D).eval()


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("pre_ln", [True, False])
def test_padding_never_attends(causal, pre_ln):
    bb = _sasrec(causal, pre_ln)
    x = torch.randn(2, L, D)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1]], dtype=torch.bool)
    y = bb(x, mask)
    x2 = x.clone()
    x2[~mask] = torch.randn(int((~mask).sum()), D) * 100  # garbage at padding positions
    y2 = bb(x2, mask)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y[mask], y2[mask])
    assert (y[~mask] == 0).all()


def test_all_padding_row_is_finite():
    bb = _sasrec()
    y = bb(torch.randn(1, L, D), torch.zeros(1, L, dtype=torch.bool))
    assert torch.isfinite(y).all() and (y == 0).all()


def test_causal_no_future_leakage_and_bidirectional_sees_future():
    x = torch.randn(1, L, D)
    mask = torch.ones(1, L, dtype=torch.bool)
    x2 = x.clone()
    x2[0, 4:] = torch.randn(2, D)  # change the two latest items
    causal = _sasrec(True)
    torch.testing.assert_close(causal(x, mask)[0, :4], causal(x2, mask)[0, :4])
    assert not torch.allclose(causal(x, mask)[0, 4:], causal(x2, mask)[0, 4:])
    bidir = _sasrec(False)
    assert not torch.allclose(bidir(x, mask)[0, :4], bidir(x2, mask)[0, :4])


def test_positions_count_from_the_end_so_trimming_is_exact():
    bb = _sasrec()
    x = torch.randn(1, 3, D)
    short = bb(x, torch.ones(1, 3, dtype=torch.bool))
    padded = torch.cat([torch.zeros(1, L - 3, D), x], 1)
    full = bb(padded, torch.tensor([[0] * (L - 3) + [1] * 3], dtype=torch.bool))
    torch.testing.assert_close(short[0], full[0, -3:])


def test_gru_left_padding_keeps_zero_state():
    torch.manual_seed(0)
    g = GRU4Rec(GRU4RecConfig(dropout=0.0, max_len=L), D).eval()
    x = torch.randn(1, 3, D)
    short = g(x, torch.ones(1, 3, dtype=torch.bool))
    full = g(torch.cat([torch.zeros(1, 3, D), x], 1), torch.tensor([[0, 0, 0, 1, 1, 1]], dtype=torch.bool))
    torch.testing.assert_close(short[0], full[0, -3:])
    # causal: changing the last item leaves earlier states
    x2 = x.clone()
    x2[0, 2] += 1
    torch.testing.assert_close(g(x, torch.ones(1, 3, dtype=torch.bool))[0, :2],
                               g(x2, torch.ones(1, 3, dtype=torch.bool))[0, :2])


def test_sequence_model_scoring_contract():
    torch.manual_seed(0)
    n = 10
    m = SequenceModel(IdEmbedding(n, D), SASRec(SASRecConfig(max_len=L, dropout=0.0), D)).eval()
    ids = torch.tensor([[0, 0, 0, 3, 4, 5], [0, 1, 2, 3, 4, 9]])
    assert m.hidden(ids).shape == (2, L, D)
    s = m.score_all(ids)
    assert s.shape == (2, n + 1) and torch.isinf(s[:, 0]).all()
    cand = torch.tensor([[1, 2, 3], [9, 8, 7]])
    torch.testing.assert_close(m.score(ids, cand), s.gather(1, cand))
    # user state = last position; scores = dot products with the item table
    u = m.hidden(ids)[:, -1]
    torch.testing.assert_close(s[:, 1:], u @ m.item_encoder.embedding.weight[1:].T)
    # longer than max_len: the most recent max_len items are used
    long = torch.cat([torch.tensor([[7, 7], [7, 7]]), ids], 1)
    torch.testing.assert_close(m.score_all(long)[:, 1:], s[:, 1:])


def test_bert4rec_appends_mask_token_and_never_scores_it():
    torch.manual_seed(0)
    n = 10
    enc = IdEmbedding(n, D, extra_tokens=1)
    m = SequenceModel(enc, BERT4Rec(BERT4RecConfig(max_len=L, dropout=0.0, n_heads=2), D)).eval()
    assert m.mask_id == n + 1
    ids = torch.tensor([[0, 0, 0, 3, 4, 5]])
    s = m.score_all(ids)
    assert s.shape == (1, n + 1)
    expect = m.hidden(torch.tensor([[0, 0, 3, 4, 5, n + 1]]))[:, -1]
    torch.testing.assert_close(m.user_states(ids), expect)
    loss, parts = m.train().loss(Batch(seq=torch.tensor([[0, 1, 2, 3, 4, 5]]), users=torch.tensor([1])))
    assert torch.isfinite(loss) and set(parts) == {"rec"}


class _TwoView(ItemEncoder):
    """A fake 2-view encoder: views = ID table and its negation; adds an aux loss."""

    def __init__(self, n):
        super().__init__()
        self.n_items, self.dim, self.n_views = n, D, 2
        self.w = torch.nn.Parameter(torch.randn(n + 1, D))

    def table(self):
        w = self.w * (torch.arange(self.n_items + 1) > 0).float()[:, None]
        return torch.stack([w, 2 * w])

    def aux_losses(self, ids, table=None):
        return {"align": 0.1 * table[0, ids].pow(2).mean()}


def test_multi_view_concatenated_scoring_and_aux_parts():
    torch.manual_seed(0)
    enc = _TwoView(10)
    bb = SASRec(SASRecConfig(max_len=L, dropout=0.0), D)
    m = SequenceModel(enc, bb).eval()
    ids = torch.tensor([[0, 0, 1, 2, 3, 4]])
    h = m.hidden(ids)
    assert h.shape == (1, L, 2 * D)
    mask = ids != 0
    torch.testing.assert_close(h[..., :D], bb(enc.table()[0][ids], mask))
    torch.testing.assert_close(h[..., D:], bb(enc.table()[1][ids], mask))
    items = torch.cat([enc.table()[0], enc.table()[1]], 1)
    torch.testing.assert_close(m.score_all(ids)[:, 1:], h[:, -1] @ items[1:].T)
    total, parts = m.train().loss(Batch(seq=torch.tensor([[0, 1, 2, 3, 4, 5, 6]]), users=torch.tensor([1])))
    assert set(parts) == {"rec", "align"}
    torch.testing.assert_close(total, parts["rec"] + parts["align"])


def test_content_embedding_adapter_and_padding_row():
    torch.manual_seed(0)
    feats = torch.randn(6, 8)
    enc = ContentEmbedding(feats, dim=4, extra_tokens=1)
    t = enc.table()
    assert t.shape == (1, 7, 4) and (t[0, 0] == 0).all()
    lin1, lin2 = enc.adapter[0], enc.adapter[1]
    assert lin1.out_features == 4  # D / 2
    torch.testing.assert_close(t[0, 1:6], lin2(lin1(feats[1:])))
    assert not any(n == "features" for n, _ in enc.named_parameters())


def test_cloze_masking():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 50, (400, 50))
    ids[:, :10] = 0
    inputs, targets = cloze(ids, 0.5, 50, 51, g)
    sel = targets != 0
    assert not sel[:, :10].any()
    torch.testing.assert_close(targets[sel], ids[sel])
    assert abs(sel.float().sum().item() / (400 * 40) - 0.5) < 0.02
    frac_mask = (inputs[sel] == 51).float().mean().item()
    frac_kept = (inputs[sel] == ids[sel]).float().mean().item()
    assert abs(frac_mask - 0.8) < 0.02 and 0.08 < frac_kept < 0.13  # 10 % kept + random hits
    assert (inputs[~sel] == ids[~sel]).all()


def test_cloze_batch_last_item_copy_masks_only_the_last_real_item():
    """The copy rows are the windows with only their last item masked (its position = where inference appends
    the mask token) and that item as the only target; the cloze rows are :func:`cloze` with the same stream."""
    ids = torch.tensor([[0, 0, 3, 4, 5], [1, 2, 3, 4, 6], [0, 0, 0, 0, 0]])
    inputs, targets = cloze_batch(ids, 0.5, 9, 10, True, torch.Generator().manual_seed(1))
    c_in, c_t = cloze(ids, 0.5, 9, 10, torch.Generator().manual_seed(1))
    assert torch.equal(inputs[:3], c_in) and torch.equal(targets[:3], c_t)
    assert inputs[3:].tolist() == [[0, 0, 3, 4, 10], [1, 2, 3, 4, 10], [0, 0, 0, 0, 0]]
    assert targets[3:].tolist() == [[0, 0, 0, 0, 5], [0, 0, 0, 0, 6], [0, 0, 0, 0, 0]]
    only, only_t = cloze_batch(ids, 0.5, 9, 10, False, torch.Generator().manual_seed(1))
    assert torch.equal(only, c_in) and torch.equal(only_t, c_t)


def test_bert4rec_loss_is_the_mean_ce_over_cloze_and_last_item_targets():
    """SequenceModel.loss for BERT4Rec = full-softmax CE at exactly the cloze_batch targets (recomputed here)."""
    from mmseqrec.models.losses import ObjectiveConfig

    torch.manual_seed(0)
    n = 12
    m = SequenceModel(IdEmbedding(n, D, extra_tokens=1), BERT4Rec(BERT4RecConfig(max_len=L, dropout=0.0, n_heads=2),
                                                                  D), ObjectiveConfig(name="ce")).train()
    seq = torch.tensor([[0, 0, 1, 2, 3, 4], [5, 6, 7, 8, 9, 10]])
    loss, _ = m.loss(Batch(seq=seq, users=torch.tensor([1, 2])), torch.Generator().manual_seed(3))
    inputs, targets = cloze_batch(seq, m.backbone.mask_prob, n, n + 1, True, torch.Generator().manual_seed(3))
    h = m.hidden(inputs)
    sel = targets != 0
    logits = h[sel] @ m.item_encoder.embedding.weight[1:n + 1].T  # the mask token (row n + 1) is no class
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits, targets[sel] - 1))


def test_registry_errors_list_names():
    with pytest.raises(InputError, match="bert4rec, .*gru4rec, .*itemknn, .*pop, .*sasrec"):
        model_spec("transformer")
    with pytest.raises(InputError, match="content, .*id"):
        item_encoder_spec("nope")
    assert model_spec("bert4rec").extra_tokens == 1


@pytest.mark.parametrize("objective", ["bce", "sampled-softmax", "ce", "gbce"])
def test_causal_loss_traces_as_one_graph(objective):
    """No graph breaks in the causal training step (a prerequisite of torch.compile + CUDA graphs)."""
    from mmseqrec.models import ObjectiveConfig

    torch.manual_seed(0)
    m = SequenceModel(IdEmbedding(50, D), SASRec(SASRecConfig(max_len=20), D),
                      ObjectiveConfig(name=objective, n_negatives=8))
    b = Batch(seq=torch.randint(0, 51, (4, 21)), users=torch.arange(4))
    total, _ = torch.compile(m.loss, backend="eager", fullgraph=True)(b)
    total.backward()
    assert torch.isfinite(total) and m.item_encoder.embedding.weight.grad is not None


def test_fast_cpu_dropout_matches_f_dropout_distribution():
    from mmseqrec.models.base import Dropout, dropout

    torch.manual_seed(0)
    x = torch.ones(200_000, requires_grad=True)
    y = dropout(x, 0.3)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.7) < 0.005  # keep probability 1 - p
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / 0.7))  # inverted scaling
    y.sum().backward()
    torch.testing.assert_close(x.grad, y.detach())  # gradient = mask / (1 - p)
    assert dropout(x, 0.3, training=False) is x and dropout(x, 0.0) is x
    m = Dropout(0.5).eval()
    assert torch.equal(m(x), x) and m.state_dict() == {}
