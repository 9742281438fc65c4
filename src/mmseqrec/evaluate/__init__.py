"""Evaluation: protocols, metrics, ranking evaluation, significance tests, long-tail breakdowns, reports.

Imports only :mod:`mmseqrec.data` from the rest of the package.
"""

from .candidates import CandidateLists, read_candidates, write_candidates
from .evaluator import RankingResult, build_histories, evaluate_ranking, load_ranks, sample_negatives
from .longtail import PRESETS, LongTailConfig, item_popularity, longtail_for_split, longtail_table
from .metrics import auc, case_values, compute_metrics, hit_rate, mrr, ndcg, parse_metric, rank_from_scores
from .protocol import Protocol
from .runfiles import EvalRecord, eval_stem, find_eval, write_eval
from .significance import adjust_pvalues, aggregate_seeds, case_means, mean_std, paired_test

__all__ = [
    "PRESETS",
    "CandidateLists",
    "EvalRecord",
    "LongTailConfig",
    "Protocol",
    "RankingResult",
    "adjust_pvalues",
    "aggregate_seeds",
    "auc",
    "build_histories",
    "case_means",
    "case_values",
    "compute_metrics",
    "eval_stem",
    "evaluate_ranking",
    "find_eval",
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
    "read_candidates",
    "sample_negatives",
    "write_candidates",
    "write_eval",
]
