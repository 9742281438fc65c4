"""Evaluation: protocols, metrics, ranking evaluation, significance tests, long-tail breakdowns, reports."""

from .evaluator import RankingResult, evaluate_ranking
from .metrics import compute_metrics, hit_rate, mrr, ndcg, rank_from_scores
from .protocol import Protocol

__all__ = ["Protocol", "RankingResult", "evaluate_ranking", "compute_metrics", "hit_rate", "ndcg", "mrr",
           "rank_from_scores"]
