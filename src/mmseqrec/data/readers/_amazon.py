"""Helpers shared by the Amazon review readers (2014, 2018, 2023)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import polars as pl

from ...errors import InputError
from ..raw import RawData
from .base import check_not_null, expand_paths, first_line, read_ndjson_blocks, reading

__all__ = ["join_list", "parse_price", "read_amazon", "read_reviews", "split_reviews_meta"]


def split_reviews_meta(
    paths: list[Path], review_key: str, *, python_meta: bool = False
) -> tuple[list[Path], list[Path]]:
    """Sort input files into review files and meta files by sniffing the keys of their first line."""
    import ast

    reviews: list[Path] = []
    meta: list[Path] = []
    for p in paths:
        line = first_line(p)
        if not line.strip():
            raise InputError("empty file", file=p)
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            obj = None
            if python_meta:
                try:
                    obj = ast.literal_eval(line.strip())
                except (ValueError, SyntaxError):
                    obj = None
            if obj is None:
                raise InputError("malformed JSON", file=p, line=1) from None
        if not isinstance(obj, dict):
            raise InputError("a JSON line must be an object", file=p, line=1)
        (reviews if review_key in obj else meta).append(p)
    if not reviews:
        raise InputError(
            f"no review file among the inputs (none has the field {review_key!r})",
            file=paths[0] if paths else None,
            field=review_key,
        )
    return reviews, meta


def read_reviews(
    paths: list[Path], *, user: str, item: str, time: str, rating: str, time_type: type = int
) -> pl.DataFrame:
    """Read review JSON lines (plain or .gz) into the canonical interaction columns, in file order."""
    schema = {user: pl.Utf8, item: pl.Utf8, time: pl.Float64, rating: pl.Float32}  # 1.7e12 ms: exact in float64
    frames = []
    for p in paths:
        df = read_ndjson_blocks(
            p,
            schema,
            [
                pl.col(user).cast(pl.Categorical).alias("user_id"),
                pl.col(item).cast(pl.Categorical).alias("item_id"),
                pl.col(time).cast(pl.Int64).alias("timestamp"),
                pl.col(rating).alias("rating"),
            ],
            json_fields={user: str, item: str, time: (int, float)},
        )
        mapping = {"user_id": user, "item_id": item, "timestamp": time}
        try:
            check_not_null(df, ["user_id", "item_id", "timestamp"], p)
        except InputError as exc:
            # report the field under its name in the file, and use the exact line (blank lines shift rows)
            from .base import locate_bad_json_line

            better = locate_bad_json_line(p, {user: str, item: str, time: (int, float)})
            if better.line is not None:
                raise better from None
            raise InputError(
                exc.reason, file=p, line=exc.line, field=mapping.get(exc.field or "", exc.field)
            ) from None
        frames.append(df)
    return pl.concat(frames, how="vertical") if len(frames) > 1 else frames[0]


def join_list(col: str, sep: str) -> pl.Expr:
    """List[Utf8] -> Utf8 joined by ``sep``; empty lists become null."""
    c = pl.col(col)
    return pl.when(c.list.len() > 0).then(c.list.join(sep)).otherwise(None).alias(col)


def parse_price(col: str) -> pl.Expr:
    """Prices as written by Amazon ("$12.99", "12.5", 12.5, "None", "$3.99 - $5.99") -> Float64 or null."""
    return (
        pl.col(col)
        .cast(pl.Utf8)
        .str.replace_all(r"[$,\s]", "")
        .str.extract(r"^(\d+(?:\.\d+)?)", 1)
        .cast(pl.Float64, strict=False)
        .alias(col)
    )


def read_amazon(paths: list[Path], fmt: str, *, user: str, item: str, time: str, rating: str,
                read_meta: Callable[[list[Path]], pl.DataFrame | None], timestamp_unit: str,
                python_meta: bool = False, options: dict[str, object] | None = None) -> RawData:
    """Shared body of the Amazon readers: split review/meta files, stream the reviews, read the meta."""
    files = expand_paths(paths, fmt)
    review_files, meta_files = split_reviews_meta(files, user, python_meta=python_meta)
    with reading(", ".join(p.name for p in review_files)):
        inter = read_reviews(review_files, user=user, item=item, time=time, rating=rating)
    return RawData(interactions=inter, items=read_meta(meta_files), source_files=files, format=fmt,
                   options={**(options or {}), "timestamp_unit": timestamp_unit})
