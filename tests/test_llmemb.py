"""LLMEmb stage 2 (RAT): the alignment term equals a small re-implementation of the reference computation
(``models/LLMEmb.py`` + ``models/utils.py::Contrastive_Loss2``, written here from the code's equations) with
copied adapter weights; argument order, target positions with duplicates, store checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmseqrec.errors import InputError
from mmseqrec.models.alignment import soft_contrastive
from mmseqrec.models.llmemb import LlmEmbConfig, LlmEmbEncoder, build_llmemb, target_items

torch.set_num_threads(1)
N, D_LLM, D = 12, 16, 8


def _ref_contrastive_loss2(X, Y, tau):
    """Reference ``Contrastive_Loss2(tau)(X, Y)``: logits X Y^T / tau, targets softmax((Y Y^T + X X^T)/2 * tau),
    soft cross-entropy of the rows and of the columns, averaged."""
    logits = (X @ Y.T) / tau
    targets = F.softmax(((Y @ Y.T) + (X @ X.T)) / 2 * tau, dim=-1)
    x_loss = (-targets * nn.LogSoftmax(dim=-1)(logits)).sum(1)
    y_loss = (-targets.T * nn.LogSoftmax(dim=-1)(logits.T)).sum(1)
    return ((y_loss + x_loss) / 2.0).mean()


def _ref_align(pos, llm_table, srs_table, fc1, fc2, tau, alpha):
    """Reference ``LLMEmbSASRec.forward`` alignment part: ``pos[pos != 0]`` (duplicates kept), SRS embeddings
    first, adapter(LLM embeddings) second."""
    adapter = nn.Sequential(nn.Linear(fc1.in_features, fc1.out_features), nn.Linear(fc2.in_features, fc2.out_features))
    with torch.no_grad():
        adapter[0].weight.copy_(fc1.weight)
        adapter[0].bias.copy_(fc1.bias)
        adapter[1].weight.copy_(fc2.weight)
        adapter[1].bias.copy_(fc2.bias)
    indices = pos != 0
    srs_embs = nn.Embedding.from_pretrained(srs_table)(pos[indices])
    llm_embs = adapter(nn.Embedding.from_pretrained(llm_table)(pos[indices]))
    return alpha * _ref_contrastive_loss2(srs_embs, llm_embs, tau)


def _tables(seed=0):
    g = torch.Generator().manual_seed(seed)
    llm = torch.randn(N + 1, D_LLM, generator=g)
    srs = torch.randn(N + 1, D, generator=g) * 0.5
    llm[0] = 0
    srs[0] = 0
    return llm, srs


def test_alignment_equals_reference_computation_through_the_sequence_model():
    from mmseqrec.models.sasrec import SASRec, SASRecConfig
    from mmseqrec.models.sequence import Batch, SequenceModel

    torch.manual_seed(0)
    llm, srs = _tables()
    enc = LlmEmbEncoder(LlmEmbConfig(dim=D, collab="c", alpha=0.01, tau=2.0), llm, collab=srs)
    model = SequenceModel(enc, SASRec(SASRecConfig(max_len=6, dropout=0.0), D))
    # repeated items (3 twice in a row, 5 in both users) and a first window item (1) that is never a target
    seq = torch.tensor([[0, 0, 1, 3, 3, 5, 7], [2, 4, 5, 6, 8, 9, 11]])
    _, parts = model.loss(Batch(seq, torch.tensor([1, 2])))
    pos = seq[:, 1:].masked_fill(seq[:, :-1] == 0, 0)  # the reference's pos: set only where the input is
    ref = _ref_align(pos, llm, srs, enc.adapter.fc1, enc.adapter.fc2, 2.0, 0.01)
    assert abs(parts["align"].item() - ref.item()) <= 1e-5
    # the window's unique items (the previous behaviour) give another value
    uniq = torch.unique(seq[seq > 0])
    t = enc.table()
    old = 0.01 * soft_contrastive(t[0, uniq], srs[uniq], 2.0)
    assert abs(old.item() - ref.item()) > 1e-4


def test_argument_order_matters_and_follows_the_reference():
    torch.manual_seed(1)
    llm, srs = _tables(1)
    enc = LlmEmbEncoder(LlmEmbConfig(dim=D, collab="c", alpha=1.0, tau=2.0), llm, collab=srs)
    targets = torch.tensor([[1, 2, 0, 4], [5, 5, 7, 0]])
    got = enc.target_losses(targets)["align"]
    items = torch.tensor([1, 2, 4, 5, 5, 7])
    adapted = enc.table()[0, items]
    ref = _ref_contrastive_loss2(srs[items], adapted, 2.0)
    swapped = _ref_contrastive_loss2(adapted, srs[items], 2.0)
    assert abs(got.item() - ref.item()) <= 1e-5
    assert abs(swapped.item() - ref.item()) > 1e-3  # not symmetric: the order is part of the method


def test_target_items_keep_duplicates_and_cap():
    t = torch.tensor([[0, 3, 3], [2, 0, 99]])
    assert target_items(t, n_items=10).tolist() == [3, 3, 2]  # 99 (e.g. a mask token id) is no item
    torch.manual_seed(0)
    assert target_items(torch.arange(1, 11).view(2, 5), 10, max_items=4).numel() == 4


def test_no_collab_no_alignment_and_store_checks():
    llm, _ = _tables()
    enc = LlmEmbEncoder(LlmEmbConfig(dim=D), llm, extra_tokens=1)
    assert enc.n_views == 1 and enc.table().shape == (1, N + 2, D)
    assert enc.target_losses(torch.tensor([[1, 2]])) == {}
    assert enc.table()[0, 0].abs().sum() == 0
    with pytest.raises(InputError, match="collaborative"):
        LlmEmbEncoder(LlmEmbConfig(dim=D), llm, collab=torch.zeros(N + 1, D + 1))
    with pytest.raises(InputError, match="n_items"):
        build_llmemb(LlmEmbConfig(dim=D, embedding="e"), n_items=N + 1, extra_tokens=0, tensors={"e": llm})
    with pytest.raises(InputError, match="not loaded"):
        build_llmemb(LlmEmbConfig(dim=D, embedding="e", collab="c"), n_items=N, extra_tokens=0, tensors={"e": llm})
    assert LlmEmbConfig(embedding="e", collab="c").embeddings() == ["e", "c"]
    assert LlmEmbConfig().dim == 128  # LLMEmb scripts: --hidden_size 128
