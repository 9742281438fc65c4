"""``amazon2023``: Amazon Reviews 2023 (McAuley Lab) reviews JSONL(.gz) plus meta JSONL(.gz).

Review fields used: ``user_id``, ``parent_asin`` (the item), ``timestamp`` (ms), ``rating``. Meta fields:
``parent_asin``, ``title``, ``description`` and ``features`` (lists, joined by newlines), ``categories``
(joined by " > "), ``main_category``, ``store`` (-> ``brand``), ``price`` and ``images``: the ``large`` URL
(fallback ``hi_res``, then ``thumb``) of the first image whose ``variant`` is ``MAIN`` (else the first image).
Which file is which is sniffed from the first line (review files have ``user_id``). Reviews are streamed with
polars; only the four needed columns are materialised.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from ..raw import RawData
from ._amazon import join_list, parse_price, read_amazon
from .base import ReaderOptions, collect, reading

__all__ = ["META_SCHEMA", "read"]

_IMG = pl.List(pl.Struct({"thumb": pl.Utf8, "large": pl.Utf8, "variant": pl.Utf8, "hi_res": pl.Utf8}))
META_SCHEMA = {
    "parent_asin": pl.Utf8,
    "title": pl.Utf8,
    "main_category": pl.Utf8,
    "description": pl.List(pl.Utf8),
    "features": pl.List(pl.Utf8),
    "categories": pl.List(pl.Utf8),
    "store": pl.Utf8,
    "price": pl.Utf8,
    "images": _IMG,
}


def _image() -> pl.Expr:
    imgs = pl.col("images")
    main = imgs.list.eval(pl.element().filter(pl.element().struct.field("variant") == "MAIN")).list.first()
    first = imgs.list.first()
    fields = ("large", "hi_res", "thumb")
    return pl.coalesce(
        *[main.struct.field(f) for f in fields], *[first.struct.field(f) for f in fields]
    ).alias("image")


def read_meta(paths: list[Path]) -> pl.DataFrame | None:
    frames = []
    for p in paths:
        with reading(p.name):
            df = collect(pl.scan_ndjson(p, schema=META_SCHEMA), p, json_fields={"parent_asin": str})
        frames.append(df)
    if not frames:
        return None
    df = pl.concat(frames)
    return df.filter(pl.col("parent_asin").is_not_null()).select(
        pl.col("parent_asin").alias("item_id"),
        pl.col("title"),
        join_list("description", "\n"),
        join_list("features", "\n"),
        join_list("categories", " > "),
        pl.col("main_category"),
        pl.col("store").alias("brand"),
        parse_price("price"),
        _image(),
    )


def read(paths: list[Path], opts: ReaderOptions) -> RawData:
    return read_amazon(paths, "amazon2023", user="user_id", item="parent_asin", time="timestamp", rating="rating",
                       read_meta=read_meta, timestamp_unit="ms", options={"item_key": "parent_asin"})
