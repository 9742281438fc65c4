"""Objectives on hand-computed cases."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mmseqrec.models import ObjectiveConfig, gbce_beta, next_item_loss

torch.set_num_threads(1)

# 4 items (+ padding row 0), width 2; rows: item vectors.
ITEMS = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.5]])
H = torch.tensor([[2.0, 1.0], [0.5, -1.0], [9.0, 9.0]])
T = torch.tensor([3, 1, 0])  # last row has no target: must be ignored


def _sig(x):
    return 1.0 / (1.0 + math.exp(-x))


def test_ce_equals_cross_entropy_on_known_logits():
    loss = next_item_loss(H, T, ITEMS, ObjectiveConfig(name="ce"))
    logits = H[:2] @ ITEMS[1:].T  # [[2,1,3,-1.5],[0.5,-1,-0.5,-1]]
    torch.testing.assert_close(logits, torch.tensor([[2.0, 1.0, 3.0, -1.5], [0.5, -1.0, -0.5, -1.0]]))
    torch.testing.assert_close(loss, F.cross_entropy(logits, torch.tensor([2, 0])))


def test_bce_one_negative_per_position():
    neg = torch.tensor([2, 4, 1])
    loss = next_item_loss(H, T, ITEMS, ObjectiveConfig(name="bce"), negatives=neg)
    # row 0: pos 3 -> 3.0, neg 2 -> 1.0 ; row 1: pos 1 -> 0.5, neg 4 -> -1.0
    expect = (-math.log(_sig(3.0)) - math.log(1 - _sig(1.0)) - math.log(_sig(0.5)) - math.log(1 - _sig(-1.0))) / 2
    assert abs(loss.item() - expect) < 1e-5


def test_sampled_softmax_shared_negatives_masks_accidental_hits():
    neg = torch.tensor([2, 3])  # item 3 is row 0's target: masked for row 0 only
    loss = next_item_loss(H, T, ITEMS, ObjectiveConfig(name="sampled-softmax"), negatives=neg)
    r0 = -3.0 + math.log(math.exp(3.0) + math.exp(1.0))
    r1 = -0.5 + math.log(math.exp(0.5) + math.exp(-1.0) + math.exp(-0.5))
    assert abs(loss.item() - (r0 + r1) / 2) < 1e-5


def test_gbce_formula():
    assert abs(gbce_beta(4, 101, 0.75) - 0.28) < 1e-12  # alpha = 0.04: 0.04 * (0.75 * -24 + 25)
    assert abs(gbce_beta(4, 101, 0.0) - 1.0) < 1e-12  # t = 0: plain BCE
    neg = torch.tensor([2, 4])
    cfg = ObjectiveConfig(name="gbce", gbce_t=0.5)
    beta = gbce_beta(2, 4, 0.5)  # alpha = 2/3 -> beta = 2/3 * (0.5 * -0.5 + 1.5) = 5/6
    assert abs(beta - 5 / 6) < 1e-12
    loss = next_item_loss(H, T, ITEMS, cfg, negatives=neg)
    r0 = (-beta * math.log(_sig(3.0)) - math.log(1 - _sig(1.0)) - math.log(1 - _sig(-1.5))) / 3
    r1 = (-beta * math.log(_sig(0.5)) - math.log(1 - _sig(-1.0)) - math.log(1 - _sig(-1.0))) / 3
    assert abs(loss.item() - (r0 + r1) / 2) < 1e-5


def test_sampled_negatives_are_real_items_and_loss_is_differentiable():
    h = torch.randn(8, 2, requires_grad=True)
    t = torch.randint(0, 5, (8,))
    for name in ("bce", "sampled-softmax", "ce", "gbce"):
        loss = next_item_loss(h, t, ITEMS, ObjectiveConfig(name=name, n_negatives=3))
        assert torch.isfinite(loss)
        (g,) = torch.autograd.grad(loss, h)
        assert (g[t == 0] == 0).all()  # ignored rows get no gradient


def test_padding_rows_are_dropped_without_changing_the_loss():
    """Eager ``ce``/``sampled-softmax``/``gbce`` skip padded rows; the value equals the dense formula."""
    import torch.nn.functional as F

    from mmseqrec.models.losses import ObjectiveConfig, next_item_loss

    torch.manual_seed(0)
    h, items = torch.randn(6, 4), torch.randn(8, 4)
    targets = torch.tensor([0, 3, 0, 0, 7, 1])
    got = next_item_loss(h, targets, items, ObjectiveConfig(name="ce"))
    keep = targets > 0
    want = F.cross_entropy(h[keep] @ items[1:].T, targets[keep] - 1)
    assert torch.allclose(got, want, atol=1e-6)
    negs = torch.tensor([2, 5])
    for name in ("sampled-softmax", "gbce"):
        cfg = ObjectiveConfig(name=name, n_negatives=2)
        full = next_item_loss(h[keep], targets[keep], items, cfg, negatives=negs)
        assert torch.allclose(next_item_loss(h, targets, items, cfg, negatives=negs), full, atol=1e-6)
