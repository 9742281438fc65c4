"""Paired significance tests between two variants' per-case ranks, multiple-testing corrections, and mean +- std
across seeds.

The unit of a paired test is the evaluation case (a user and their target): each case's metric value is first
averaged over a variant's seeds, then the two variants are paired on ``(user, target)``. Seeds are never pooled
as extra cases (k identical copies of a run give exactly the p of one copy); the spread over seeds is reported
separately as mean +- std of the per-seed metrics. Per-case seed means are rounded to 12 decimals so that float
noise neither creates nor breaks ties in the signed-rank test.

Two variants are comparable only when they evaluated the same cases under the same protocol: any mismatch is an
error, never a silent inner join. With ``ties="random"`` per-case values are exact expectations over random
orders of the tied candidates (they need the ``tied`` column).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import polars as pl

from ..errors import InputError
from .metrics import case_values

__all__ = ["adjust_pvalues", "aggregate_seeds", "case_means", "mean_std", "paired_test", "paired_values"]

_KEY = ["user", "target"]
_DECIMALS = 12


def _frames(x: pl.DataFrame | Sequence[pl.DataFrame], name: str) -> list[pl.DataFrame]:
    frames = [x] if isinstance(x, pl.DataFrame) else list(x)
    if not frames:
        raise InputError(f"variant {name} has no ranks to test", field="ranks")
    for f in frames:
        missing = {"user", "target", "rank"} - set(f.columns)
        if missing:
            raise InputError(f"ranks of run {name} lack columns {sorted(missing)}", field="ranks")
    return frames


def _per_user(frames: list[pl.DataFrame], metric: str) -> list[pl.DataFrame]:
    """Multi-target runs (general recommendation): one case per user, ``target = 0``, ``rank`` replaced by the
    user's metric value (see :mod:`.multitarget`)."""
    from .multitarget import user_values

    out = []
    for f in frames:
        u, v = user_values(f["user"].to_numpy(), f["rank"].to_numpy(), metric)
        out.append(pl.DataFrame({"user": u, "target": np.zeros(u.size, np.int64), "value": v}))
    return out


def case_means(frames: pl.DataFrame | Sequence[pl.DataFrame], metric: str = "NDCG@10", *,
               ties: str = "pessimistic", n_negatives: int | None = None, name: str = "A",
               per_user: bool = False) -> pl.DataFrame:
    """Per-case value of ``metric`` averaged over seeds: ``user, target, value`` sorted by ``(user, target)``.

    Parameters
    ----------
    frames : DataFrame or sequence of DataFrames
        One ``user, target, rank[, tied]`` frame per seed of the variant (as written by
        :meth:`RankingResult.save_ranks`).
    per_user : bool
        Multi-target runs (general models): the case is the user (``target`` = 0) and ``metric`` is one of
        ``Recall@K``, ``NDCG@K``, ``Precision@K``, ``MAP@K`` over the user's targets.

    Raises
    ------
    InputError
        When the seeds did not evaluate exactly the same cases (or a case appears twice in one run).
    """
    frames = _frames(frames, name)
    k = len(frames)
    if per_user:
        frames = _per_user(frames, metric)
        stacked = pl.concat(frames)
        out = stacked.group_by(_KEY).agg(pl.col("value").mean(), pl.len().alias("n")).sort(_KEY)
        if len({f.height for f in frames}) != 1 or out.height != frames[0].height or (out["n"] != k).any():
            raise InputError(f"the runs of variant {name} did not evaluate the same users; compare runs of the "
                             "same dataset and split", field="ranks")
        return out.select(*_KEY, pl.col("value").round(_DECIMALS))
    cols = [pl.col("user").cast(pl.Int64), pl.col("target").cast(pl.Int64), pl.col("rank").cast(pl.Float64)]
    stacked = pl.concat([f.select(*cols, (pl.col("tied").cast(pl.Int64) if "tied" in f.columns
                                          else pl.lit(None, pl.Int64).alias("tied")))
                         for f in frames])
    tied = stacked["tied"]
    values = case_values(metric, stacked["rank"].to_numpy(), None if tied.null_count() else tied.to_numpy(),
                         ties, n_negatives)
    out = (stacked.select(_KEY).with_columns(pl.Series("value", values))
           .group_by(_KEY).agg(pl.col("value").mean(), pl.len().alias("n")).sort(_KEY))
    heights = {f.height for f in frames}
    if len(heights) != 1 or out.height != frames[0].height or (out["n"] != k).any():
        raise InputError(f"the runs of variant {name} did not evaluate the same (user, target) cases (or a case "
                         "is listed twice); compare runs of the same dataset, split and protocol", field="ranks")
    return out.select(*_KEY, pl.col("value").round(_DECIMALS))


def paired_values(ranks_a: pl.DataFrame | Sequence[pl.DataFrame], ranks_b: pl.DataFrame | Sequence[pl.DataFrame],
                  metric: str = "NDCG@10", *, ties: str = "pessimistic", n_negatives: int | None = None,
                  per_user: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Per-case seed-mean values of both variants, aligned on ``(user, target)``.

    Raises
    ------
    InputError
        When the two variants do not hold exactly the same cases.
    """
    a = case_means(ranks_a, metric, ties=ties, n_negatives=n_negatives, name="A", per_user=per_user)
    b = case_means(ranks_b, metric, ties=ties, n_negatives=n_negatives, name="B", per_user=per_user)
    if a.height != b.height:
        raise InputError(f"runs evaluated different cases ({a.height} vs {b.height}); compare runs of the same "
                         "dataset, split and protocol", field="ranks")
    if not a.select(_KEY).equals(b.select(_KEY)):
        raise InputError("runs evaluated different (user, target) cases; compare runs of the same dataset, "
                         "split and protocol", field="ranks")
    return a["value"].to_numpy(), b["value"].to_numpy()


def paired_test(ranks_a: pl.DataFrame | Sequence[pl.DataFrame], ranks_b: pl.DataFrame | Sequence[pl.DataFrame],
                metric: str = "NDCG@10", *, ties: str = "pessimistic", n_negatives: int | None = None,
                protocol_a: str | None = None, protocol_b: str | None = None, per_user: bool = False
                ) -> dict[str, float]:
    """Two-sided paired Wilcoxon signed-rank and paired t-test of ``metric`` between variants A and B (B - A).

    The one implementation behind ``mmseqrec compare`` (one run per side) and ``mmseqrec experiment`` reports
    (one run per seed per side): per-case values are averaged over each side's seeds, then paired on
    ``(user, target)``; ``n`` is the number of cases, whatever the number of seeds.

    Parameters
    ----------
    ranks_a, ranks_b : DataFrame or sequence of DataFrames
        ``user, target, rank[, tied]``, one frame per seed.
    metric : str
        ``HR@K``, ``NDCG@K``, ``MRR@K`` or ``AUC`` (AUC needs ``n_negatives``).
    ties : str
        The protocol's ties policy (``random``: exact expected per-case values from ``tied``).
    protocol_a, protocol_b : str, optional
        When given they must be equal.
    per_user : bool
        Multi-target runs of general models: the user is the case (see :func:`case_means`).

    Returns
    -------
    dict
        ``mean_a, mean_b, delta (= mean_b - mean_a), p_wilcoxon, p_ttest, n, n_seeds_a, n_seeds_b``. p-values
        are 1.0 when the two variants agree on every case (no evidence of a difference).
    """
    from scipy import stats

    if protocol_a is not None and protocol_b is not None and str(protocol_a) != str(protocol_b):
        raise InputError(f"runs used different protocols ({protocol_a} vs {protocol_b}); their numbers are "
                         "not comparable", field="protocol")
    va, vb = paired_values(ranks_a, ranks_b, metric, ties=ties, n_negatives=n_negatives, per_user=per_user)
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
    return {"mean_a": ma, "mean_b": mb, "delta": mb - ma, "p_wilcoxon": p_w, "p_ttest": p_t, "n": n,
            "n_seeds_a": len(_frames(ranks_a, "A")), "n_seeds_b": len(_frames(ranks_b, "B"))}


def adjust_pvalues(p: Sequence[float] | np.ndarray, method: str = "holm") -> np.ndarray:
    """Adjust the p-values of one family of comparisons (one results table) for multiple testing.

    ``holm``: Holm-Bonferroni step-down (controls the family-wise error rate); ``bh``: Benjamini-Hochberg
    (false discovery rate, :func:`scipy.stats.false_discovery_control`); ``none``: unchanged. NaN entries
    (no test) stay NaN and do not count as comparisons.
    """
    from scipy import stats

    p = np.asarray(p, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    m = int(ok.sum())
    if m == 0 or method == "none":
        return p.copy()
    q = p[ok]
    if method == "holm":
        order = np.argsort(q, kind="stable")
        adj = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * q[order]))
        res = np.empty(m)
        res[order] = adj
    elif method == "bh":
        res = stats.false_discovery_control(q, method="bh")
    else:
        raise InputError(f"unknown p-value adjustment {method!r} (holm | bh | none)", field="p_adjust")
    out[ok] = res
    return out


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
