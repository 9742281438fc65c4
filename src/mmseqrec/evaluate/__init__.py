"""Evaluation: protocols, metrics, ranking evaluation, significance tests, long-tail breakdowns, reports.

Imports only :mod:`mmseqrec.data` from the rest of the package.
"""

from .evaluator import RankingResult, build_histories, evaluate_ranking, load_ranks, sample_negatives
from .longtail import PRESETS, LongTailConfig, item_popularity, longtail_for_split, longtail_table
from .metrics import auc, case_values, compute_metrics, hit_rate, mrr, ndcg, parse_metric, rank_from_scores
from .protocol import Protocol
from .significance import aggregate_seeds, mean_std, paired_test

__all__ = [
    "PRESETS",
    "LongTailConfig",
    "Protocol",
    "RankingResult",
    "aggregate_seeds",
    "auc",
    "build_histories",
    "case_values",
    "compute_metrics",
    "evaluate_ranking",
    "hit_rate",
    "item_popularity",
    "load_ranks",
    "longtail_for_split",
    "longtail_table",
    "mean_std",
    "mrr",
    "ndcg",
    "paired_test",
    "parse_metric",
    "rank_from_scores",
    "sample_negatives",
]
