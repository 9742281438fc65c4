"""``amazon2018``: Amazon review data (2018, Ni et al.) per-category reviews json(.gz) plus meta json(.gz).

Reviews: ``reviewerID``, ``asin``, ``unixReviewTime`` (s), ``overall``. Meta (one JSON object per line):
``asin``, ``title``, ``description`` and ``feature`` (lists, joined by newlines), ``category`` (" > "),
``brand``, ``price`` ("$12.99" -> 12.99) and ``imageURLHighRes`` (fallback ``imageURL``): the first URL.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from ..raw import RawData
from ._amazon import join_list, parse_price, read_amazon
from .base import ReaderOptions, collect, reading

__all__ = ["META_SCHEMA", "read"]

META_SCHEMA = {
    "asin": pl.Utf8,
    "title": pl.Utf8,
    "description": pl.List(pl.Utf8),
    "feature": pl.List(pl.Utf8),
    "category": pl.List(pl.Utf8),
    "brand": pl.Utf8,
    "price": pl.Utf8,
    "imageURLHighRes": pl.List(pl.Utf8),
    "imageURL": pl.List(pl.Utf8),
    "main_cat": pl.Utf8,
}


def read_meta(paths: list[Path]) -> pl.DataFrame | None:
    frames = []
    for p in paths:
        with reading(p.name):
            frames.append(collect(pl.scan_ndjson(p, schema=META_SCHEMA), p, json_fields={"asin": str}))
    if not frames:
        return None
    return (
        pl.concat(frames)
        .filter(pl.col("asin").is_not_null())
        .select(
            pl.col("asin").alias("item_id"),
            pl.col("title"),
            join_list("description", "\n"),
            join_list("feature", "\n").alias("features"),
            join_list("category", " > ").alias("categories"),
            pl.col("main_cat").alias("main_category"),
            pl.col("brand"),
            parse_price("price"),
            pl.coalesce(pl.col("imageURLHighRes").list.first(), pl.col("imageURL").list.first()).alias(
                "image"
            ),
        )
    )


def read(paths: list[Path], opts: ReaderOptions) -> RawData:
    return read_amazon(paths, "amazon2018", user="reviewerID", item="asin", time="unixReviewTime", rating="overall",
                       read_meta=read_meta, timestamp_unit="s")
