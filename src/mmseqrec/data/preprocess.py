"""Preprocessing on integer-coded interactions: rating threshold, duplicate policy and k-core filters.

All functions are vectorised (numpy / polars) and return the filtered frame plus a manifest record. Defaults
change nothing: no filter and no de-duplication unless asked.

``kcore="iterative"`` repeats "drop users with < ``min_user_inter`` and items with < ``min_item_inter``
interactions" until nothing changes (a true k-core: running it again removes nothing).
``kcore="single-pass"`` is LLM-ESR's ``filter_common`` + ``filter_minmum``: counts are computed *once* on the
input, every interaction whose user or item is below its threshold is dropped, then users whose remaining
sequence is shorter than ``single_pass_min_len`` (default: ``min_user_inter``) are dropped.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import polars as pl
from pydantic import Field

from ..config import Config
from ..errors import InputError

__all__ = ["PrepareConfig", "apply_rating_threshold", "deduplicate", "kcore_filter", "preprocess"]


class PrepareConfig(Config):
    """What ``prepare`` does between reading and writing; recorded in the manifest.

    Attributes
    ----------
    min_rating
        Keep interactions with ``rating >= min_rating`` (needs a rating column). ``None``: keep all.
    dedup
        Repeated (user, item) pairs: ``all`` keeps every one; ``first``/``last`` keep the chronologically first
        or last (ties broken by file order).
    min_user_inter, min_item_inter
        k-core thresholds (0 = off).
    kcore
        ``iterative`` (repeat until stable) or ``single-pass`` (LLM-ESR's filter).
    single_pass_min_len
        Minimum remaining sequence length after the single pass (``None``: ``min_user_inter``).
    """

    min_rating: float | None = None
    dedup: Literal["all", "first", "last"] = "all"
    min_user_inter: int = Field(0, ge=0)
    min_item_inter: int = Field(0, ge=0)
    kcore: Literal["iterative", "single-pass"] = "iterative"
    single_pass_min_len: int | None = Field(None, ge=0)


def apply_rating_threshold(df: pl.DataFrame, min_rating: float) -> tuple[pl.DataFrame, dict[str, Any]]:
    if "rating" not in df.columns:
        raise InputError("a rating threshold needs a rating column, and this input has none", field="rating")
    out = df.filter(pl.col("rating") >= min_rating)
    return out, {
        "name": "rating_threshold",
        "min_rating": min_rating,
        "rows_before": df.height,
        "rows_after": out.height,
    }


def deduplicate(df: pl.DataFrame, keep: Literal["first", "last"]) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Keep the chronologically first/last interaction of each (user, item) pair (file order breaks ties)."""
    ordered = df.sort(["user", "timestamp", "_row"])
    out = ordered.unique(subset=["user", "item"], keep=keep, maintain_order=True)
    return out, {
        "name": "dedup",
        "keep": keep,
        "key": ["user", "item"],
        "rows_before": df.height,
        "rows_after": out.height,
    }


def _kcore_iterative(
    u: np.ndarray, i: np.ndarray, nu: int, ni: int, mu: int, mi: int
) -> tuple[np.ndarray, int]:
    idx = np.arange(u.size)
    rounds = 0
    while True:
        uu, ii = u[idx], i[idx]
        ok = np.ones(idx.size, dtype=bool)
        if mu > 0:
            ok &= np.bincount(uu, minlength=nu)[uu] >= mu
        if mi > 0:
            ok &= np.bincount(ii, minlength=ni)[ii] >= mi
        rounds += 1
        if ok.all():
            return idx, rounds
        idx = idx[ok]


def _kcore_single(
    u: np.ndarray, i: np.ndarray, nu: int, ni: int, mu: int, mi: int, min_len: int
) -> np.ndarray:
    ok = np.ones(u.size, dtype=bool)
    if mu > 0:
        ok &= np.bincount(u, minlength=nu)[u] >= mu
    if mi > 0:
        ok &= np.bincount(i, minlength=ni)[i] >= mi
    idx = np.nonzero(ok)[0]
    if min_len > 0:
        uu = u[idx]
        idx = idx[np.bincount(uu, minlength=nu)[uu] >= min_len]
    return idx


def kcore_filter(df: pl.DataFrame, cfg: PrepareConfig) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Apply the k-core filter of ``cfg`` to a frame with integer ``user``/``item`` codes (order is kept)."""
    u = df["user"].to_numpy().astype(np.int64, copy=False)
    i = df["item"].to_numpy().astype(np.int64, copy=False)
    nu = int(u.max(initial=-1)) + 1
    ni = int(i.max(initial=-1)) + 1
    mu, mi = cfg.min_user_inter, cfg.min_item_inter
    rec: dict[str, Any] = {
        "name": "kcore",
        "mode": cfg.kcore,
        "min_user_inter": mu,
        "min_item_inter": mi,
        "rows_before": df.height,
    }
    if cfg.kcore == "iterative":
        idx, rounds = _kcore_iterative(u, i, nu, ni, mu, mi)
        rec["rounds"] = rounds
    else:
        min_len = mu if cfg.single_pass_min_len is None else cfg.single_pass_min_len
        idx = _kcore_single(u, i, nu, ni, mu, mi, min_len)
        rec["min_len"] = min_len
    out = df if idx.size == df.height else df[pl.Series(idx)]
    rec["rows_after"] = out.height
    return out, rec


def preprocess(df: pl.DataFrame, cfg: PrepareConfig) -> tuple[pl.DataFrame, list[dict[str, Any]]]:
    """Threshold -> de-duplication -> k-core, each recorded. ``df`` has ``user``, ``item`` (int codes),
    ``timestamp``, ``_row`` (file order) and maybe ``rating``."""
    filters: list[dict[str, Any]] = []
    if cfg.min_rating is not None:
        df, rec = apply_rating_threshold(df, cfg.min_rating)
        filters.append(rec)
    if cfg.dedup != "all":
        df, rec = deduplicate(df, cfg.dedup)
        filters.append(rec)
    if cfg.min_user_inter > 0 or cfg.min_item_inter > 0:
        df, rec = kcore_filter(df, cfg)
        filters.append(rec)
    return df, filters
