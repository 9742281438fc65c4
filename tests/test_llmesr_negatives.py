"""``objective.negatives_exclude: history``: BCE negatives outside the user's training sequence (LLM-ESR's
``random_neq(1, item_num + 1, inter)`` in ``generators/data.py``), drawn for the whole batch at once."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from mmseqrec.models import SequenceModel
from mmseqrec.models.losses import ObjectiveConfig, history_keys, history_negatives
from mmseqrec.registry import item_encoder_spec, model_spec

torch.set_num_threads(1)
N = 6
# users 0 (padding, nothing), 1: {1, 2, 5}, 2: {3}, 3: every item (draws from all items)
ITEMS = torch.tensor([1, 2, 5, 2, 3, 1, 2, 3, 4, 5, 6])
INDPTR = torch.tensor([0, 0, 4, 5, 11])


def test_history_keys_hand_case():
    # user 1 -> 1*7 + {1, 2, 5}; user 2 -> 2*7 + 3; user 3 covers the catalogue and is left out
    assert history_keys(ITEMS, INDPTR, N).tolist() == [8, 9, 12, 17]


def test_history_negatives_avoid_the_history_and_are_uniform_otherwise():
    keys = history_keys(ITEMS, INDPTR, N)
    g = torch.Generator().manual_seed(0)
    draws = 30000
    users = torch.tensor([1, 2, 3]).repeat_interleave(draws).view(3, draws)
    neg = history_negatives(users, N, keys, g)
    assert neg.shape == users.shape and neg.min() >= 1 and neg.max() <= N
    allowed = {1: [3, 4, 6], 2: [1, 2, 4, 5, 6], 3: [1, 2, 3, 4, 5, 6]}
    for row, (u, ok) in enumerate(allowed.items()):
        counts = torch.bincount(neg[row], minlength=N + 1)[1:].double()
        banned = [i for i in range(1, N + 1) if i not in ok]
        assert counts[[i - 1 for i in banned]].sum() == 0, u
        share = counts[[i - 1 for i in ok]] / draws
        # uniform over the allowed items: each share within 5 standard errors of 1 / len(ok)
        p = 1.0 / len(ok)
        assert ((share - p).abs() <= 5 * (p * (1 - p) / draws) ** 0.5).all(), (u, share)


def test_only_bce_takes_history_negatives():
    assert ObjectiveConfig(name="bce", negatives_exclude="history").negatives_exclude == "history"
    with pytest.raises(ValidationError, match="bce"):
        ObjectiveConfig(name="ce", negatives_exclude="history")


def _model(backbone: str, positions: str = "all") -> SequenceModel:
    mspec = model_spec(backbone)
    enc = item_encoder_spec("id").build(item_encoder_spec("id").config_cls(name="id", dim=8), n_items=N,
                                        extra_tokens=mspec.extra_tokens, tensors={})
    bb = mspec.build(mspec.config_cls(name=backbone, max_len=6, dropout=0.0), 8)
    return SequenceModel(enc, bb, ObjectiveConfig(name="bce", negatives_exclude="history", positions=positions))


@pytest.mark.parametrize("backbone,positions", [("sasrec", "all"), ("gru4rec", "last"), ("bert4rec", "all")])
def test_training_step_draws_no_negative_from_the_users_sequence(monkeypatch, backbone, positions):
    """Through SequenceModel.loss: every drawn negative of a row is outside the training sequence of the row's
    user (BERT4Rec: cloze rows and the last-item copy)."""
    import mmseqrec.models.sequence as seqmod
    from mmseqrec.models.sequence import Batch

    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    real = seqmod.next_item_loss

    def spy(h, targets, items, cfg, **kw):
        seen.append((targets, kw["negatives"]))
        return real(h, targets, items, cfg, **kw)

    monkeypatch.setattr(seqmod, "next_item_loss", spy)
    torch.manual_seed(0)
    model = _model(backbone, positions)
    model.set_history(ITEMS, INDPTR)
    seq = torch.tensor([[0, 0, 1, 2, 5], [0, 0, 0, 0, 3]])
    users = torch.tensor([1, 2])
    history = {1: {1, 2, 5}, 2: {3}}
    for _ in range(20):
        seen.clear()
        total, _ = model.loss(Batch(seq=seq, users=users))
        assert torch.isfinite(total)
        (targets, neg), = seen
        assert neg.shape == targets.shape
        if backbone == "bert4rec":  # rows are the gathered cloze targets: recover each row's user from its item
            owners = [1 if int(t) in (1, 2, 5) else 2 for t in targets]
        elif positions == "last":
            owners = users.tolist()
        else:
            owners = users.repeat_interleave(seq.shape[1] - 1).tolist()
        for u, n in zip(owners, neg.tolist()):
            assert n not in history[u]


def test_without_history_negatives_the_loss_draws_its_own():
    model = _model("sasrec")
    model.objective = ObjectiveConfig(name="bce")
    assert model._negatives(torch.tensor([1]), None) is None
    model.objective = ObjectiveConfig(name="bce", negatives_exclude="history")
    with pytest.raises(RuntimeError, match="set_history"):
        model._negatives(torch.tensor([1]), None)
