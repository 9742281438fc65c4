"""``sasrec-txt``: SASRec's data files: one interaction ``user item`` per line, a user's lines in time order.

There is no timestamp: the line number is the timestamp (file order). Ids are kept as strings; since internal
ids are assigned in numeric order of the original ids, SASRec's contiguous 1..N ids are preserved.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from ...errors import InputError
from ..raw import RawData
from .base import ReaderOptions, read_whitespace_files

__all__ = ["read"]


def _rows(path: Path, parts: pl.DataFrame, offset: int) -> pl.DataFrame:
    bad = parts.filter(pl.col("p").list.len() != 2)
    if bad.height:
        raise InputError(f"expected 2 fields 'user item', found {bad['p'][0].len()}", file=path,
                         line=int(bad["lineno"][0]))
    return parts.select(pl.col("p").list.get(0).alias("user_id"), pl.col("p").list.get(1).alias("item_id"),
                        (pl.col("lineno") + offset).alias("timestamp"))


def read(paths: list[Path], opts: ReaderOptions) -> RawData:
    return read_whitespace_files(paths, "sasrec-txt", _rows)
