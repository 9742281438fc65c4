"""Full-ranking evaluation with several targets per user (general recommendation, the MMRec protocol).

Every item ``1..n_items`` is a candidate except the items the user has in ``mask`` (the training part; at
test time the validation items stay candidates, as in MMRec). Each target's rank is the number of other
candidates scored ``>=`` it (ties count against the model; other targets compete too, exactly as in a
top-K list). Per user with ``n`` targets and target ranks ``r``:

* ``Recall@K = #{r < K} / n``;  ``Precision@K = #{r < K} / K``;
* ``NDCG@K = sum_{r < K} 1 / log2(r + 2)  /  sum_{i < min(n, K)} 1 / log2(i + 2)``;
* ``MAP@K = sum over hits, in rank order, of (hits so far) / (r + 1), divided by min(n, K)``.

The dataset figure is the mean over users with at least one target. All four are functions of the per-target
ranks, so ``ranks.parquet`` (``user, target, rank, tied``) is enough to recompute per-user values for paired
tests (:func:`user_values`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import polars as pl
import torch

from ..errors import InputError, MmseqrecError
from .evaluator import RankingResult

__all__ = ["MULTI_METRICS", "evaluate_multi", "multi_metric_names", "multi_metrics", "ranks_user_values",
           "user_values"]

MULTI_METRICS = ("Recall", "NDCG", "Precision", "MAP")

UserScoreFn = Callable[[torch.Tensor], torch.Tensor]


def multi_metric_names(ks: tuple[int, ...] | list[int]) -> list[str]:
    return [f"{m}@{k}" for k in ks for m in MULTI_METRICS]


def _parse(name: str) -> tuple[str, int]:
    kind, _, k = name.partition("@")
    canon = {m.lower(): m for m in MULTI_METRICS}.get(kind.lower())
    if canon is None or not k.isdigit() or int(k) < 1:
        raise InputError(f"unknown metric {name!r} ({', '.join(m + '@K' for m in MULTI_METRICS)})",
                         field="metric")
    return canon, int(k)


def user_values(users: np.ndarray, ranks: np.ndarray, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-user values of ``metric`` from per-target rows ``(users, ranks)`` -> ``(unique users, values)``."""
    kind, k = _parse(metric)
    users = np.asarray(users, dtype=np.int64)
    r = np.asarray(ranks, dtype=np.float64)
    order = np.lexsort((r, users))
    users, r = users[order], r[order]
    uniq, start, n = np.unique(users, return_index=True, return_counts=True)
    idx = np.searchsorted(uniq, users)
    hit = r < k
    hits = np.bincount(idx, weights=hit, minlength=uniq.size)
    if kind == "Recall":
        return uniq, hits / n
    if kind == "Precision":
        return uniq, hits / k
    if kind == "NDCG":
        dcg = np.bincount(idx, weights=np.where(hit, 1.0 / np.log2(r + 2.0), 0.0), minlength=uniq.size)
        ideal = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(k) + 2.0))])
        return uniq, dcg / ideal[np.minimum(n, k)]
    # MAP: hits so far / position, summed over hits (rows are sorted by rank within a user)
    hits_so_far = np.cumsum(hit) - np.repeat(np.cumsum(hit)[start] - hit[start], n)
    ap = np.bincount(idx, weights=np.where(hit, hits_so_far / (r + 1.0), 0.0), minlength=uniq.size)
    return uniq, ap / np.minimum(n, k)


def multi_metrics(users: np.ndarray, ranks: np.ndarray, ks: tuple[int, ...] | list[int]) -> dict[str, float]:
    """Mean over users of every metric in :func:`multi_metric_names` + ``n_cases`` (users) and ``n_targets``."""
    out: dict[str, float] = {}
    for name in multi_metric_names(ks):
        _, v = user_values(users, ranks, name)
        out[name] = float(v.mean()) if v.size else 0.0
    out["n_cases"] = int(np.unique(users).size)
    out["n_targets"] = int(np.asarray(users).size)
    return out


def evaluate_multi(score_fn: UserScoreFn, targets, mask, n_items: int, ks: tuple[int, ...] | list[int] = (10, 20),
                   *, batch_size: int = 1024, device: str | torch.device = "cpu",
                   max_cells: int = 1 << 24) -> RankingResult:
    """Rank every target of every user of ``targets`` (a :class:`~mmseqrec.data.general_split.UserItems`).

    Parameters
    ----------
    score_fn : ``score_fn(users LongTensor [B]) -> [B, n_items + 1]`` float32 scores (column 0 = padding).
    targets, mask : ``UserItems``; users without targets are not evaluated; ``mask`` items are not candidates.
    batch_size : users per ``score_fn`` call.
    max_cells : bound on the ``targets x items`` comparison block (memory).

    Returns
    -------
    RankingResult with protocol ``full``, ``exclude_history=True`` (training items masked), one row per target.
    """
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise InputError("cut-offs must be positive integers", field="eval.ks")
    dev = torch.device(device)
    V = n_items + 1
    users = targets.users()
    t_counts, m_counts = targets.counts, mask.counts
    out_u, out_t, out_r, out_tied = [], [], [], []
    with torch.inference_mode():
        for b0 in range(0, users.size, batch_size):
            bu = users[b0:b0 + batch_size]
            scores = score_fn(torch.from_numpy(bu).to(dev))
            if tuple(scores.shape) != (bu.size, V):
                raise MmseqrecError(f"score function returned {tuple(scores.shape)}, expected {(bu.size, V)}")
            if scores.dtype != torch.float32:
                raise MmseqrecError(f"evaluation scores must be float32, got {scores.dtype}")
            if torch.isnan(scores).any():
                raise MmseqrecError("score function returned NaN scores; cannot rank (did training diverge?)")
            scores = scores.clone()
            scores[:, 0] = -torch.inf
            mrows = np.repeat(np.arange(bu.size), m_counts[bu])
            mitems = _gather(mask, bu)
            scores[torch.from_numpy(mrows).to(dev), torch.from_numpy(mitems).to(dev)] = -torch.inf
            trows = np.repeat(np.arange(bu.size), t_counts[bu])
            titems = _gather(targets, bu)
            tr, ti = torch.from_numpy(trows).to(dev), torch.from_numpy(titems).to(dev)
            tscore = scores[tr, ti]
            if torch.isinf(tscore).any():
                raise MmseqrecError("a target is also a masked (training) item; the split is inconsistent")
            step = max(1, max_cells // V)
            greater = torch.empty(tr.numel(), dtype=torch.long, device=dev)
            ge = torch.empty_like(greater)
            for c0 in range(0, tr.numel(), step):
                rows = scores[tr[c0:c0 + step]]
                t = tscore[c0:c0 + step, None]
                greater[c0:c0 + step] = (rows > t).sum(1)
                ge[c0:c0 + step] = (rows >= t).sum(1)
            tied = ge - greater - 1
            out_u.append(bu[trows])
            out_t.append(titems)
            out_r.append((greater + tied).cpu().numpy())
            out_tied.append(tied.cpu().numpy())
    cat = (lambda xs: np.concatenate(xs).astype(np.int64) if xs else np.zeros(0, np.int64))
    u, t, r, tied = cat(out_u), cat(out_t), cat(out_r), cat(out_tied)
    return RankingResult(protocol="full", exclude_history=True, ks=ks, metrics=multi_metrics(u, r, ks),
                         ranks=r, users=u, targets=t, tied=tied)


def _gather(ui, users: np.ndarray) -> np.ndarray:
    """Items of ``users`` concatenated in user order (vectorised CSR gather)."""
    starts, counts = ui.indptr[users], ui.counts[users]
    total = int(counts.sum())
    offs = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts) + np.repeat(starts, counts)
    return ui.items[offs]


def ranks_user_values(frame: pl.DataFrame, metric: str) -> pl.DataFrame:
    """``ranks.parquet`` of a multi-target run -> ``user, value`` per user (for paired tests)."""
    u, v = user_values(frame["user"].to_numpy(), frame["rank"].to_numpy(), metric)
    return pl.DataFrame({"user": u, "value": v})
