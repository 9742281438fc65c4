"""Large-catalogue objectives: ``ce-chunked`` equals ``ce`` (value and gradients); ``sampled-softmax-logq``
against a hand computation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mmseqrec.models import ObjectiveConfig, next_item_loss
from mmseqrec.models.losses import chunked_cross_entropy, logq_from_counts

torch.set_num_threads(1)


def _grads(name: str, h: torch.Tensor, t: torch.Tensor, w: torch.Tensor, **kw):
    h = h.clone().requires_grad_(True)
    w = w.clone().requires_grad_(True)
    loss = next_item_loss(h, t, w, ObjectiveConfig(name=name, **kw))
    loss.backward()
    return loss.detach(), h.grad, w.grad


@pytest.mark.parametrize("chunk", [1, 3, 7, 50, 1000])
def test_ce_chunked_equals_ce_value_and_gradients(chunk):
    g = torch.Generator().manual_seed(0)
    n_items, d, m = 50, 8, 13
    w = torch.randn(n_items + 1, d, generator=g, dtype=torch.float64)
    h = torch.randn(m, d, generator=g, dtype=torch.float64) * 3
    t = torch.randint(1, n_items + 1, (m,), generator=g)
    t[[2, 5]] = 0  # padding rows: ignored by both
    ref = _grads("ce", h, t, w)
    got = _grads("ce-chunked", h, t, w, chunk_size=chunk)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0, check_dtype=False)
    assert got[2][0].abs().max() == 0  # the padding row never receives a gradient


def test_ce_chunked_float32_and_dense_padding_path():
    """float32 within 1e-5; padding rows kept (the torch.compile path) give the same value/grads."""
    g = torch.Generator().manual_seed(1)
    w = torch.randn(301, 16, generator=g)
    h = torch.randn(40, 16, generator=g)
    t = torch.randint(1, 301, (40,), generator=g)
    t[:5] = 0
    ref = _grads("ce", h, t, w)
    got = _grads("ce-chunked", h, t, w, chunk_size=64)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # direct per-row function with the padding rows present (targets clamped to 1, weight 0)
    hh, ww = h.clone().requires_grad_(True), w.clone().requires_grad_(True)
    valid = (t > 0).float()
    per = chunked_cross_entropy(hh, t.clamp(min=1), ww, 64)
    ((per * valid).sum() / valid.sum()).backward()
    torch.testing.assert_close(hh.grad, ref[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ww.grad, ref[2], atol=1e-5, rtol=1e-5)
    ref_per = F.cross_entropy(h @ w[1:].T, t.clamp(min=1) - 1, reduction="none")
    torch.testing.assert_close(per.detach(), ref_per, atol=1e-5, rtol=1e-5)


def test_ce_chunked_gradcheck():
    g = torch.Generator().manual_seed(2)
    w = torch.randn(9, 3, generator=g, dtype=torch.float64, requires_grad=True)
    h = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([1, 8, 3, 3])
    assert torch.autograd.gradcheck(lambda a, b: chunked_cross_entropy(a, t, b, 3), (h, w))


def test_logq_from_counts_add_one():
    lq = logq_from_counts(torch.tensor([0, 3, 0, 1]))
    assert lq[0] == float("-inf")
    torch.testing.assert_close(lq[1:].exp(), torch.tensor([4 / 7, 1 / 7, 2 / 7]))


def test_sampled_softmax_logq_hand_computed():
    items = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.5]])
    h = torch.tensor([[2.0, 1.0], [0.5, -1.0], [9.0, 9.0]])
    t = torch.tensor([3, 1, 0])  # last row ignored
    counts = torch.tensor([0, 5, 1, 1, 0])  # Q = (6, 2, 2, 1) / 11
    lq = logq_from_counts(counts)
    neg = torch.tensor([2, 3, 1])  # 3 negatives (item 3 is row 0's target: masked there)
    loss = next_item_loss(h, t, items, ObjectiveConfig(name="sampled-softmax-logq"), negatives=neg, log_q=lq)
    q = {1: 6 / 11, 2: 2 / 11, 3: 2 / 11, 4: 1 / 11}

    def corr(s, i):
        return s - math.log(3 * q[i])

    # row 0: scores item1 2, item2 1, item3 3; target 3; negatives 2, 1 (3 masked)
    r0 = [corr(3.0, 3), corr(1.0, 2), corr(2.0, 1)]
    # row 1: scores item1 0.5, item2 -1, item3 -0.5; target 1; negatives 2, 3 (1 masked)
    r1 = [corr(0.5, 1), corr(-1.0, 2), corr(-0.5, 3)]

    def nll(r):
        return -(r[0] - math.log(sum(math.exp(x) for x in r)))

    assert abs(loss.item() - (nll(r0) + nll(r1)) / 2) < 1e-5


def test_sampled_softmax_logq_samples_by_popularity_and_needs_counts():
    items = torch.randn(5, 2)
    h, t = torch.randn(3, 2), torch.tensor([1, 2, 3])
    with pytest.raises(ValueError, match="log_q"):
        next_item_loss(h, t, items, ObjectiveConfig(name="sampled-softmax-logq"))
    lq = logq_from_counts(torch.tensor([0, 0, 0, 0, 10_000]))
    gen = torch.Generator().manual_seed(0)
    loss = next_item_loss(h, t, items, ObjectiveConfig(name="sampled-softmax-logq", n_negatives=4), log_q=lq,
                          generator=gen)
    assert torch.isfinite(loss)
    draws = torch.multinomial(lq.exp(), 2000, replacement=True, generator=torch.Generator().manual_seed(0))
    assert (draws == 4).float().mean() > 0.99 and (draws == 0).sum() == 0
