"""``seq-txt``: one line per user, ``user item item ...`` in time order (S3-Rec's data files).

There is no timestamp: the position in the file is the timestamp (file order).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from ...errors import InputError
from ..raw import RawData
from .base import ReaderOptions, expand_paths, read_lines, reading, split_whitespace_lines

__all__ = ["read"]


def read(paths: list[Path], opts: ReaderOptions) -> RawData:
    files = expand_paths(paths, "seq-txt")
    frames = []
    offset = 0
    for p in files:
        with reading(p.name):
            lines = read_lines(p)
        parts = split_whitespace_lines(lines)
        bad = parts.filter(pl.col("p").list.len() < 2)
        if bad.height:
            raise InputError(
                "a line needs a user id followed by at least one item id", file=p, line=int(bad["lineno"][0])
            )
        df = parts.select(
            pl.col("p").list.first().alias("user_id"), pl.col("p").list.slice(1).alias("item_id")
        )
        df = df.explode("item_id", empty_as_null=True).with_row_index("timestamp", offset=offset)
        df = df.select("user_id", "item_id", pl.col("timestamp").cast(pl.Int64))
        offset += df.height
        frames.append(df)
    inter = (
        pl.concat(frames)
        if frames
        else pl.DataFrame(schema={"user_id": pl.Utf8, "item_id": pl.Utf8, "timestamp": pl.Int64})
    )
    return RawData(
        interactions=inter, source_files=files, format="seq-txt", options={"timestamp": "file order"}
    )
