"""``sasrec-txt``: SASRec's data files: one interaction ``user item`` per line, a user's lines in time order.

There is no timestamp: the line number is the timestamp (file order). Ids are kept as strings; since internal
ids are assigned in numeric order of the original ids, SASRec's contiguous 1..N ids are preserved.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from ...errors import InputError
from ..raw import RawData
from .base import ReaderOptions, expand_paths, read_lines, reading, split_whitespace_lines

__all__ = ["read"]


def read(paths: list[Path], opts: ReaderOptions) -> RawData:
    files = expand_paths(paths, "sasrec-txt")
    frames = []
    offset = 0
    for p in files:
        with reading(p.name):
            lines = read_lines(p)
        parts = split_whitespace_lines(lines)
        bad = parts.filter(pl.col("p").list.len() != 2)
        if bad.height:
            raise InputError(
                f"expected 2 fields 'user item', found {bad['p'][0].len()}",
                file=p,
                line=int(bad["lineno"][0]),
            )
        frames.append(
            parts.select(
                pl.col("p").list.get(0).alias("user_id"),
                pl.col("p").list.get(1).alias("item_id"),
                (pl.col("lineno") + offset).alias("timestamp"),
            )
        )
        offset += int(lines.height)
    inter = (
        pl.concat(frames)
        if frames
        else pl.DataFrame(schema={"user_id": pl.Utf8, "item_id": pl.Utf8, "timestamp": pl.Int64})
    )
    return RawData(
        interactions=inter, source_files=files, format="sasrec-txt", options={"timestamp": "file order"}
    )
