"""``seq-txt``: one line per user, ``user item item ...`` in time order (S3-Rec's data files).

There is no timestamp: the position in the file is the timestamp (file order).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from ...errors import InputError
from ..raw import RawData
from .base import ReaderOptions, read_whitespace_files

__all__ = ["read"]


def _rows(path: Path, parts: pl.DataFrame, offset: int) -> pl.DataFrame:
    bad = parts.filter(pl.col("p").list.len() < 2)
    if bad.height:
        raise InputError("a line needs a user id followed by at least one item id", file=path,
                         line=int(bad["lineno"][0]))
    df = parts.select(pl.col("p").list.first().alias("user_id"), pl.col("p").list.slice(1).alias("item_id"))
    df = df.explode("item_id", empty_as_null=True).with_row_index("timestamp", offset=offset)
    return df.select("user_id", "item_id", pl.col("timestamp").cast(pl.Int64))


def read(paths: list[Path], opts: ReaderOptions) -> RawData:
    return read_whitespace_files(paths, "seq-txt", _rows)
