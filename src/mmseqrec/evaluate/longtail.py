"""Long-tail breakdown: metrics per user-sequence-length group and per target-popularity group.

A value ``v`` falls in group ``i`` when ``thresholds[i-1] <= v < thresholds[i]`` (LLM-ESR's ``<`` convention:
tail users have a sequence length ``< ts_user``, tail items a popularity ``< ts_item``).

By default the user length is the training-sequence length and item popularity is counted on training
interactions only (no test information leaks into the grouping); ``popularity="all"`` counts over all
interactions as LLM-ESR does (train + valid + test).

Presets: ``llmesr-yelp`` (12/13), ``llmesr-fashion`` (3/4), ``llmesr-beauty`` (9/4) and ``llmesr-5group``
(length 5/10/15/20, popularity 10/30/60/100, the paper's curves).
"""

from __future__ import annotations

from itertools import pairwise
from typing import Literal

import numpy as np
import polars as pl
from pydantic import Field, field_validator

from ..config import Config
from ..data.dataset import SequenceData
from ..data.split import LeaveOneOut
from ..errors import InputError
from .metrics import case_values, metric_names

__all__ = [
    "PRESETS",
    "LongTailConfig",
    "group_index",
    "group_labels",
    "item_popularity",
    "longtail_for_split",
    "longtail_table",
]


class LongTailConfig(Config):
    """Group thresholds (strictly increasing) and how popularity is counted."""

    user_thresholds: list[int] = Field(default_factory=lambda: [12])
    item_thresholds: list[int] = Field(default_factory=lambda: [13])
    popularity: Literal["train", "all"] = "train"

    @field_validator("user_thresholds", "item_thresholds")
    @classmethod
    def _increasing(cls, v: list[int]) -> list[int]:
        if not v or any(b <= a for a, b in pairwise(v)):
            raise ValueError("thresholds must be a non-empty strictly increasing list")
        return v

    @classmethod
    def preset(cls, name: str, popularity: Literal["train", "all"] = "train") -> LongTailConfig:
        """One of :data:`PRESETS` by name."""
        if name not in PRESETS:
            raise InputError(f"unknown long-tail preset {name!r} ({', '.join(PRESETS)})", field="--preset")
        u, i = PRESETS[name]
        return cls(user_thresholds=list(u), item_thresholds=list(i), popularity=popularity)


PRESETS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "llmesr-yelp": ((12,), (13,)),
    "llmesr-fashion": ((3,), (4,)),
    "llmesr-beauty": ((9,), (4,)),
    "llmesr-5group": ((5, 10, 15, 20), (10, 30, 60, 100)),
}


def item_popularity(seqs: SequenceData, train_end: np.ndarray | None = None) -> np.ndarray:
    """Interactions per item id (``[n_items + 1]``, index 0 = 0).

    With ``train_end`` (absolute end of each user's training items, as in ``LeaveOneOut.train_end``) only
    training interactions are counted; without it, all of them (LLM-ESR's way).
    """
    items = seqs.items
    if train_end is not None:
        lengths = np.diff(seqs.indptr)
        owner = np.repeat(np.arange(lengths.size), lengths)
        items = items[np.arange(items.size) < np.asarray(train_end)[owner]]
    return np.bincount(items, minlength=seqs.n_items + 1).astype(np.int64)


def group_index(values: np.ndarray, thresholds: list[int] | tuple[int, ...]) -> np.ndarray:
    """Group of each value: 0 for ``v < t0``, i for ``t(i-1) <= v < t(i)``, ``len(t)`` for ``v >= t(-1)``."""
    return np.searchsorted(np.asarray(thresholds), np.asarray(values), side="right").astype(np.int64)


def group_labels(thresholds: list[int] | tuple[int, ...]) -> list[str]:
    """Readable labels: ``<5``, ``[5,10)``, ..., ``>=20``."""
    t = list(thresholds)
    return [f"<{t[0]}"] + [f"[{a},{b})" for a, b in pairwise(t)] + [f">={t[-1]}"]


def longtail_table(ranks: pl.DataFrame, user_lengths: np.ndarray, item_pop: np.ndarray,
                   config: LongTailConfig | str = "llmesr-yelp", ks: tuple[int, ...] | list[int] = (10,),
                   *, ties: str = "pessimistic") -> pl.DataFrame:
    """Metrics per user-length group and per target-popularity group.

    Parameters
    ----------
    ranks : polars.DataFrame
        ``user, target, rank[, tied]`` (:meth:`RankingResult.to_frame` or a ``ranks.parquet``).
    user_lengths : ndarray
        Sequence length per user id (e.g. ``LeaveOneOut.train_lengths``).
    item_pop : ndarray [n_items + 1]
        Popularity per item id (:func:`item_popularity`).
    config : LongTailConfig or preset name

    Returns
    -------
    polars.DataFrame
        Columns ``by`` (``user_length`` / ``item_popularity``), ``group`` (label), ``segment`` (``tail`` /
        ``head`` for two groups, else the label), ``n``, then ``HR@K``, ``NDCG@K``, ``MRR@K``. Empty groups
        are kept with ``n = 0`` and null metrics.
    """
    cfg = LongTailConfig.preset(config) if isinstance(config, str) else config
    users = ranks["user"].to_numpy().astype(np.int64)
    targets = ranks["target"].to_numpy().astype(np.int64)
    ul = np.asarray(user_lengths)
    ip = np.asarray(item_pop)
    if users.size and (users.max() >= ul.size or targets.max() >= ip.size):
        raise InputError("user_lengths / item_pop do not cover every user / target id", field="ranks")
    names = metric_names(ks)
    tied = ranks["tied"].to_numpy() if "tied" in ranks.columns else None
    vals = {m: case_values(m, ranks["rank"].to_numpy(), tied, ties) for m in names}
    rows: list[dict[str, object]] = []
    for by, values, th in (("user_length", ul[users], cfg.user_thresholds),
                           ("item_popularity", ip[targets], cfg.item_thresholds)):
        g = group_index(values, th)
        labels = group_labels(th)
        counts = np.bincount(g, minlength=len(labels))
        sums = {m: np.bincount(g, weights=v, minlength=len(labels)) for m, v in vals.items()}
        for i, lab in enumerate(labels):
            seg = ("tail" if i == 0 else "head") if len(labels) == 2 else lab
            row: dict[str, object] = {"by": by, "group": lab, "segment": seg, "n": int(counts[i])}
            for m in names:
                row[m] = float(sums[m][i] / counts[i]) if counts[i] else None
            rows.append(row)
    schema = {"by": pl.Utf8, "group": pl.Utf8, "segment": pl.Utf8, "n": pl.Int64, **{m: pl.Float64 for m in names}}
    return pl.DataFrame(rows, schema=schema)


def longtail_for_split(ranks: pl.DataFrame, split: LeaveOneOut, config: LongTailConfig | str = "llmesr-yelp",
                       ks: tuple[int, ...] | list[int] = (10,), *, ties: str = "pessimistic") -> pl.DataFrame:
    """:func:`longtail_table` with lengths = training-sequence lengths and popularity counted as configured
    (``train``: training interactions only; ``all``: every interaction, LLM-ESR's way)."""
    cfg = LongTailConfig.preset(config) if isinstance(config, str) else config
    pop = item_popularity(split.seqs, split.train_end if cfg.popularity == "train" else None)
    return longtail_table(ranks, split.train_lengths, pop, cfg, ks, ties=ties)
