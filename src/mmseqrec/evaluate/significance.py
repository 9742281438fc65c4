"""Paired significance tests between two runs' per-case ranks, and mean +- std across seeds.

Two runs are comparable only when they evaluated the same cases under the same protocol: cases are joined on
``(user, target)`` and any mismatch is an error, never a silent inner join.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import polars as pl

from ..errors import InputError
from .metrics import case_values

__all__ = ["aggregate_seeds", "mean_std", "paired_test", "paired_values"]


def _values(frame: pl.DataFrame, metric: str, ties: str, n_negatives: int | None) -> np.ndarray:
    tied = frame["tied"].to_numpy() if "tied" in frame.columns else None
    return case_values(metric, frame["rank"].to_numpy(), tied, ties, n_negatives)


def paired_values(ranks_a: pl.DataFrame, ranks_b: pl.DataFrame, metric: str = "NDCG@10", *,
                  ties: str = "pessimistic", n_negatives: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-case metric values of both runs, aligned on ``(user, target)``.

    Raises
    ------
    InputError
        When the two frames do not hold exactly the same cases.
    """
    for name, f in (("A", ranks_a), ("B", ranks_b)):
        missing = {"user", "target", "rank"} - set(f.columns)
        if missing:
            raise InputError(f"ranks of run {name} lack columns {sorted(missing)}", field="ranks")
    key = ["user", "target"]
    if ranks_a.height != ranks_b.height:
        raise InputError(f"runs evaluated different cases ({ranks_a.height} vs {ranks_b.height}); "
                         "compare runs of the same dataset, split and protocol", field="ranks")
    a = ranks_a.sort(key, maintain_order=True)
    b = ranks_b.sort(key, maintain_order=True)
    if not (a.select(key).equals(b.select(key))):
        raise InputError("runs evaluated different (user, target) cases; compare runs of the same dataset, "
                         "split and protocol", field="ranks")
    return _values(a, metric, ties, n_negatives), _values(b, metric, ties, n_negatives)


def paired_test(ranks_a_frame: pl.DataFrame, ranks_b_frame: pl.DataFrame, metric: str = "NDCG@10", *,
                ties: str = "pessimistic", n_negatives: int | None = None,
                protocol_a: str | None = None, protocol_b: str | None = None) -> dict[str, float]:
    """Paired Wilcoxon signed-rank and paired t-test of ``metric`` between two runs (B minus A).

    Parameters
    ----------
    ranks_a_frame, ranks_b_frame : polars.DataFrame
        ``user, target, rank[, tied]`` as written by :meth:`RankingResult.save_ranks`.
    metric : str
        ``HR@K``, ``NDCG@K``, ``MRR@K`` or ``AUC`` (AUC needs ``n_negatives``).
    protocol_a, protocol_b : str, optional
        When given they must be equal.

    Returns
    -------
    dict
        ``mean_a, mean_b, delta (= mean_b - mean_a), p_wilcoxon, p_ttest, n``. p-values are 1.0 when the
        two runs agree on every case (no evidence of a difference).
    """
    from scipy import stats

    if protocol_a is not None and protocol_b is not None and str(protocol_a) != str(protocol_b):
        raise InputError(f"runs used different protocols ({protocol_a} vs {protocol_b}); their numbers are "
                         "not comparable", field="protocol")
    va, vb = paired_values(ranks_a_frame, ranks_b_frame, metric, ties=ties, n_negatives=n_negatives)
    n = int(va.size)
    diff = vb - va
    if n == 0 or not np.any(diff != 0):
        p_w = p_t = 1.0
    else:
        p_w = float(stats.wilcoxon(vb, va).pvalue)
        p_t = float(stats.ttest_rel(vb, va).pvalue) if n > 1 else float("nan")
        if math.isnan(p_t) and np.all(diff == diff[0]):
            p_t = 0.0  # a constant non-zero difference: zero variance, certain direction
    ma = float(va.mean()) if n else 0.0
    mb = float(vb.mean()) if n else 0.0
    return {"mean_a": ma, "mean_b": mb, "delta": mb - ma, "p_wilcoxon": p_w, "p_ttest": p_t, "n": n}


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0.0 for a single value)."""
    v = np.asarray(list(values), dtype=np.float64)
    if v.size == 0:
        raise InputError("no values to aggregate")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def aggregate_seeds(metrics: Sequence[Mapping[str, object]]) -> dict[str, tuple[float, float]]:
    """``{metric: (mean, std)}`` over the numeric metrics present in every dict (e.g. one per seed)."""
    if not metrics:
        raise InputError("no runs to aggregate")
    keys = [k for k, v in metrics[0].items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
            and all(isinstance(m.get(k), (int, float)) and not isinstance(m.get(k), bool) for m in metrics)]
    return {k: mean_std(float(m[k]) for m in metrics) for k in keys}  # type: ignore[arg-type]
