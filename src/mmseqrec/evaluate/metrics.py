"""Ranking metrics on 0-based target ranks (vectorised numpy), and ranks from scores (torch).

With one target per case HR@K equals Recall@K. ``NDCG@K = 1 / log2(rank + 2)`` when ``rank < K``;
``MRR@K = 1 / (rank + 1)`` when ``rank < K``. Ties count against the model by default (pessimistic rank =
number of *other* candidates scored ``>=`` the target). Under the ``random`` policy the stored rank is the
expected rank ``#greater + #tied / 2`` and per-case metrics are exact expectations over a uniformly random
order of the tied candidates (so a constant-score model scores exactly like a random one).
"""

from __future__ import annotations

import re

import numpy as np
import torch

from ..errors import InputError, MmseqrecError

__all__ = [
    "auc",
    "case_values",
    "compute_metrics",
    "hit_rate",
    "metric_names",
    "mrr",
    "ndcg",
    "parse_metric",
    "rank_from_scores",
    "rank_parts",
]

_METRIC_RE = re.compile(r"^(HR|RECALL|NDCG|MRR)@(\d+)$", re.IGNORECASE)


def _as_ranks(ranks: np.ndarray) -> np.ndarray:
    r = np.asarray(ranks)
    return r.astype(np.float64) if r.dtype.kind == "f" else r.astype(np.int64)


def hit_rate(ranks: np.ndarray, k: int) -> float:
    """Mean HR@k (= Recall@k for a single target) of 0-based ``ranks``."""
    r = _as_ranks(ranks)
    return float(np.mean(r < k)) if r.size else 0.0


def ndcg(ranks: np.ndarray, k: int) -> float:
    """Mean NDCG@k of 0-based ``ranks``: ``1 / log2(rank + 2)`` if ``rank < k`` else 0."""
    r = _as_ranks(ranks).astype(np.float64)
    return float(np.mean(np.where(r < k, 1.0 / np.log2(r + 2.0), 0.0))) if r.size else 0.0


def mrr(ranks: np.ndarray, k: int) -> float:
    """Mean MRR@k of 0-based ``ranks``: ``1 / (rank + 1)`` if ``rank < k`` else 0."""
    r = _as_ranks(ranks).astype(np.float64)
    return float(np.mean(np.where(r < k, 1.0 / (r + 1.0), 0.0))) if r.size else 0.0


def auc(ranks: np.ndarray, n_negatives: int) -> float:
    """Mean per-case AUC: fraction of the ``n_negatives`` scored below the positive, ``1 - rank / n_neg``.

    With pessimistic ranks ties count 0; with expected (random-policy) ranks they count 0.5.
    """
    r = _as_ranks(ranks).astype(np.float64)
    return float(np.mean(1.0 - r / n_negatives)) if r.size else 0.0


def rank_parts(scores: torch.Tensor, target_col: torch.Tensor,
               exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Count, per row, the other candidates scored strictly above and exactly equal to the target.

    Parameters
    ----------
    scores : Tensor [B, C]
    target_col : LongTensor [B]
        Column of the target in each row.
    exclude : BoolTensor [B, C], optional
        Candidates that do not take part (masked history, padding column). The target is never excluded.

    Returns
    -------
    (greater, tied) : LongTensor [B] each

    Raises
    ------
    MmseqrecError
        If any score is NaN (a diverged model must not silently get a perfect rank).
    """
    if scores.dim() != 2:
        raise MmseqrecError(f"scores must be [batch, candidates], got shape {tuple(scores.shape)}")
    if torch.isnan(scores.sum()) and torch.isnan(scores).any():  # one cheap reduction first
        raise MmseqrecError("score function returned NaN scores; cannot rank (did training diverge?)")
    rows = torch.arange(scores.shape[0], device=scores.device)
    tcol = target_col.to(scores.device).long()
    tgt = scores[rows, tcol].unsqueeze(1)
    if exclude is None:
        greater = (scores > tgt).sum(1)
        tied = (scores >= tgt).sum(1) - greater - 1  # minus the target itself
    else:
        keep = ~exclude.to(scores.device)
        greater = ((scores > tgt) & keep).sum(1)
        tied = ((scores == tgt) & keep).sum(1) - 1 + exclude.to(scores.device)[rows, tcol].long()
    return greater.long(), tied.long().clamp_min(0)


def rank_from_scores(scores: torch.Tensor, target_col: torch.Tensor, ties: str = "pessimistic",
                     exclude: torch.Tensor | None = None) -> torch.Tensor:
    """0-based rank of the target column in each row of ``scores``.

    ``ties="pessimistic"``: ``#greater + #tied`` (int64). ``ties="random"``: ``#greater + #tied / 2``
    (float64, the expected rank under random tie-breaking).
    """
    greater, tied = rank_parts(scores, target_col, exclude)
    if ties == "pessimistic":
        return greater + tied
    if ties == "random":
        return greater.double() + tied.double() / 2.0
    raise InputError(f"unknown ties policy {ties!r} (pessimistic | random)", field="ties")


def parse_metric(name: str) -> tuple[str, int | None]:
    """``"HR@10"`` -> ``("HR", 10)``; ``"Recall@10"`` is an alias of HR; ``"AUC"`` -> ``("AUC", None)``."""
    if name.strip().upper() == "AUC":
        return "AUC", None
    m = _METRIC_RE.match(name.strip())
    if not m:
        raise InputError(f"unknown metric {name!r} (HR@K, Recall@K, NDCG@K, MRR@K, AUC)", field="--metric")
    kind = m.group(1).upper()
    return ("HR" if kind == "RECALL" else kind), int(m.group(2))


def _gain_prefix(kind: str, k: int) -> np.ndarray:
    """``P[m] = sum_{r < m} gain(r)`` for m in 0..k."""
    r = np.arange(k, dtype=np.float64)
    if kind == "HR":
        g = np.ones(k)
    elif kind == "NDCG":
        g = 1.0 / np.log2(r + 2.0)
    else:
        g = 1.0 / (r + 1.0)
    return np.concatenate([[0.0], np.cumsum(g)])


def case_values(name: str, ranks: np.ndarray, tied: np.ndarray | None = None, ties: str = "pessimistic",
                n_negatives: int | None = None) -> np.ndarray:
    """Per-case values of metric ``name`` (for means and paired tests).

    Parameters
    ----------
    name : str
        ``HR@K`` / ``Recall@K`` / ``NDCG@K`` / ``MRR@K`` / ``AUC``.
    ranks : ndarray
        Ranks under the ``ties`` policy (pessimistic ints, or expected ranks for ``random``).
    tied : ndarray, optional
        Number of other candidates tied with the target. With ``ties="random"`` the value is the exact
        expectation over random tie orders; without it the metric is evaluated at ``ranks``.
    n_negatives : int, optional
        Needed for ``AUC``.
    """
    kind, k = parse_metric(name)
    r = _as_ranks(ranks).astype(np.float64)
    if kind == "AUC":
        if not n_negatives:
            raise InputError("AUC needs the number of negatives (sampled/candidates protocols only)",
                             field="--metric")
        return 1.0 - r / n_negatives
    assert k is not None
    if ties == "random" and tied is not None:
        t = np.asarray(tied, dtype=np.int64)
        g = np.rint(r - t / 2.0).astype(np.int64)  # number of strictly greater candidates
        pref = _gain_prefix(kind, k)
        hi = np.clip(g + t + 1, 0, k)
        lo = np.clip(g, 0, k)
        return (pref[hi] - pref[lo]) / (t + 1.0)
    if kind == "HR":
        return (r < k).astype(np.float64)
    if kind == "NDCG":
        return np.where(r < k, 1.0 / np.log2(r + 2.0), 0.0)
    return np.where(r < k, 1.0 / (r + 1.0), 0.0)


def metric_names(ks: tuple[int, ...] | list[int], with_auc: bool = False) -> list[str]:
    """Canonical metric names in report order: HR@K, NDCG@K, MRR@K for each K (+ AUC)."""
    names = [f"{m}@{k}" for k in ks for m in ("HR", "NDCG", "MRR")]
    return names + (["AUC"] if with_auc else [])


def compute_metrics(ranks: np.ndarray, ks: tuple[int, ...] | list[int], tied: np.ndarray | None = None,
                    ties: str = "pessimistic", n_negatives: int | None = None) -> dict[str, float]:
    """Mean of every metric in :func:`metric_names` (AUC when ``n_negatives`` is given) + ``n_cases``."""
    out: dict[str, float] = {}
    r = np.asarray(ranks)
    for name in metric_names(ks, with_auc=n_negatives is not None):
        v = case_values(name, r, tied, ties, n_negatives)
        out[name] = float(v.mean()) if v.size else 0.0
    out["n_cases"] = int(r.size)
    return out
