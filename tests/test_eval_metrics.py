"""Metric functions, ranks from scores and protocol strings, against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from mmseqrec.errors import InputError, MmseqrecError
from mmseqrec.evaluate import Protocol, case_values, compute_metrics, hit_rate, mrr, ndcg, rank_from_scores
from mmseqrec.evaluate.metrics import parse_metric


def test_metrics_hand_computed():
    ranks = np.array([0, 1, 4, 9, 10])
    assert hit_rate(ranks, 1) == pytest.approx(1 / 5)
    assert hit_rate(ranks, 5) == pytest.approx(3 / 5)
    assert hit_rate(ranks, 10) == pytest.approx(4 / 5)
    # NDCG@5: 1/log2(2)=1, 1/log2(3)=0.63093, 1/log2(6)=0.38685
    assert ndcg(ranks, 5) == pytest.approx((1 + 0.6309297535714575 + 0.38685280723454163) / 5)
    assert ndcg(ranks, 10) == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(6) + 1 / math.log2(11)) / 5)
    assert mrr(ranks, 5) == pytest.approx((1 + 0.5 + 0.2) / 5)
    assert mrr(ranks, 10) == pytest.approx((1 + 0.5 + 0.2 + 0.1) / 5)
    m = compute_metrics(ranks, (5,))
    assert set(m) == {"HR@5", "NDCG@5", "MRR@5", "n_cases"} and m["n_cases"] == 5


def test_rank_from_scores_ties_are_pessimistic():
    scores = torch.tensor([[0.5, 0.9, 0.5, 0.1],     # target col 0: one greater (0.9), one tie -> 2
                           [1.0, 1.0, 1.0, 1.0],     # constant: all 3 others tie -> 3
                           [0.2, 0.1, 0.0, -1.0]])   # best -> 0
    tcol = torch.tensor([0, 2, 0])
    assert rank_from_scores(scores, tcol).tolist() == [2, 3, 0]
    assert rank_from_scores(scores, tcol, ties="random").tolist() == [1.5, 1.5, 0.0]
    excl = torch.zeros_like(scores, dtype=torch.bool)
    excl[0, 1] = True  # masked candidate no longer counts
    assert rank_from_scores(scores, tcol, exclude=excl).tolist() == [1, 3, 0]


def test_nan_scores_raise():
    with pytest.raises(MmseqrecError, match="NaN"):
        rank_from_scores(torch.tensor([[float("nan"), 0.0]]), torch.tensor([0]))


def test_random_ties_give_exact_expected_metrics():
    # target tied with 3 others, 1 strictly greater: positions 1..4 equally likely.
    ranks = np.array([1 + 3 / 2])
    tied = np.array([3])
    hr2 = case_values("HR@2", ranks, tied, "random")
    assert hr2[0] == pytest.approx(1 / 4)  # only position 1 is < 2
    nd = case_values("NDCG@3", ranks, tied, "random")
    assert nd[0] == pytest.approx((1 / math.log2(3) + 1 / math.log2(4)) / 4)
    mr = case_values("MRR@10", ranks, tied, "random")
    assert mr[0] == pytest.approx((1 / 2 + 1 / 3 + 1 / 4 + 1 / 5) / 4)
    # pessimistic rank 4 -> HR@2 = 0
    assert case_values("HR@2", np.array([4]), tied)[0] == 0.0
    # AUC per case: 10 negatives, pessimistic rank 2 -> 0.8; random expected rank 1.5 -> 0.85
    assert case_values("AUC", np.array([2]), n_negatives=10)[0] == pytest.approx(0.8)
    assert case_values("AUC", np.array([1.5]), np.array([1]), "random", n_negatives=10)[0] == pytest.approx(0.85)


def test_parse_metric():
    assert parse_metric("HR@10") == ("HR", 10)
    assert parse_metric("recall@5") == ("HR", 5)
    assert parse_metric("NDCG@20") == ("NDCG", 20)
    assert parse_metric("AUC") == ("AUC", None)
    with pytest.raises(InputError):
        parse_metric("P@10")


@pytest.mark.parametrize("text", ["full", "sampled:100", "sampled:100:popularity", "candidates:20",
                                  "sampled:5:seed=42:ties=random", "full:ties=random"])
def test_protocol_round_trip(text):
    p = Protocol.parse(text)
    assert str(p) == text
    assert Protocol.parse(str(p)) == p


def test_protocol_fields_and_errors():
    p = Protocol.parse("sampled:100:popularity")
    assert (p.kind, p.n, p.sampler, p.seed, p.ties) == ("sampled", 100, "popularity", 0, "pessimistic")
    assert Protocol.parse("Sampled:100:UNIFORM") == Protocol(kind="sampled", n=100)
    for bad in ["", "fulll", "sampled", "sampled:x", "sampled:0", "full:10", "candidates:20:ties=best",
                "sampled:10:zipf"]:
        with pytest.raises(InputError) as ei:
            Protocol.parse(bad)
        assert ei.value.field == "--protocol"
    with pytest.raises(ValidationError):
        p.n = 5  # frozen
