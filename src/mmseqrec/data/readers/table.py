"""``table``: any CSV/TSV, Parquet or JSON-lines file(s) with a column mapping given by flags.

``--user-col``, ``--item-col``, ``--time-col`` (omit / empty: file order is time), ``--rating-col``; an optional
item side table ``--items-table`` keyed by ``--items-item-col`` (default: the item column) with its title in
``--title-col`` (default ``title``). Timestamps may be integers, floats, dates, datetimes or date strings
(dates become Unix seconds). Parquet and CSV are scanned lazily; only the mapped columns are materialised.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from ...errors import InputError
from ..raw import RawData
from .base import (
    PARSE_ERRORS,
    ReaderOptions,
    check_columns,
    check_not_null,
    collect,
    expand_paths,
    explain_parse_error,
    reading,
    to_epoch,
)

__all__ = ["read", "scan_table"]


def scan_table(path: Path, sep: str = ",") -> pl.LazyFrame:
    """Lazy scan of a table by suffix (.csv/.tsv/.txt, .parquet/.pq, .jsonl/.ndjson/.json, optionally .gz)."""
    name = path.name.lower()
    base = name.removesuffix(".gz")
    try:
        if base.endswith((".parquet", ".pq")):
            return pl.scan_parquet(path)
        if base.endswith((".jsonl", ".ndjson", ".json")):
            return pl.scan_ndjson(path, infer_schema_length=10000)
        if base.endswith((".csv", ".tsv", ".txt")):
            return pl.scan_csv(
                path, separator="\t" if base.endswith(".tsv") else sep, infer_schema_length=10000
            )
    except (pl.exceptions.ComputeError, OSError) as exc:
        raise InputError(f"cannot read: {str(exc).splitlines()[0]}", file=path) from None
    raise InputError("unknown table type (use .csv, .tsv, .parquet or .jsonl)", file=path)


def _sep(path: Path, sep: str) -> str:
    return "\t" if path.name.lower().removesuffix(".gz").endswith(".tsv") else sep


def _schema(lf: pl.LazyFrame, path: Path, sep: str = ",") -> pl.Schema:
    try:
        return lf.collect_schema()
    except PARSE_ERRORS as exc:
        raise explain_parse_error(path, exc, sep=_sep(path, sep)) from None


def _row_offset(path: Path) -> tuple[int, str]:
    """(line number of data row 0, unit) for error messages."""
    name = path.name.lower().removesuffix(".gz")
    if name.endswith((".csv", ".tsv", ".txt")):
        return 2, "line"
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return 1, "line"
    return 0, "row"


def read(paths: list[Path], opts: ReaderOptions) -> RawData:
    files = expand_paths(paths, "table")
    time_col = opts.time_col or None
    frames = []
    offset = 0
    for p in files:
        lf = scan_table(p, opts.sep)
        schema = _schema(lf, p, opts.sep)
        check_columns(list(schema.names()), [opts.user_col, opts.item_col, time_col, opts.rating_col], p)
        cols = [
            pl.col(opts.user_col).cast(pl.Utf8).alias("user_id"),
            pl.col(opts.item_col).cast(pl.Utf8).alias("item_id"),
        ]
        if time_col:
            cols.append(to_epoch(time_col, schema[time_col], p).alias("timestamp"))
        else:
            cols.append((pl.int_range(0, pl.len(), dtype=pl.Int64) + offset).alias("timestamp"))
        if opts.rating_col:
            cols.append(pl.col(opts.rating_col).cast(pl.Float32, strict=False).alias("rating"))
        with reading(p.name):
            df = collect(lf.select(cols), p, sep=_sep(p, opts.sep))
        start, unit = _row_offset(p)
        fields = {
            "user_id": opts.user_col,
            "item_id": opts.item_col,
            "timestamp": time_col,
            "rating": opts.rating_col,
        }
        try:
            check_not_null(df, list(df.columns), p, line_offset=start, unit=unit)
        except InputError as exc:
            raise InputError(
                exc.reason, file=p, line=exc.line, field=fields.get(exc.field or "", exc.field)
            ) from None
        offset += df.height
        frames.append(df)
    inter = pl.concat(frames)
    items = None
    if opts.items_table is not None:
        ip = Path(opts.items_table)
        if not ip.is_file():
            raise InputError("no such file", file=ip, field="--items-table")
        key = opts.items_item_col or opts.item_col
        title = opts.title_col or "title"
        lf = scan_table(ip, opts.sep)
        schema = _schema(lf, ip, opts.sep)
        check_columns(list(schema.names()), [key, title], ip)
        with reading(ip.name):
            items = collect(lf, ip, sep=_sep(ip, opts.sep))
        rename = {key: "item_id", title: "title"}
        items = items.drop([c for c in ("item_id", "title") if c in items.columns and c not in rename])
        items = items.rename(rename).with_columns(
            pl.col("item_id").cast(pl.Utf8), pl.col("title").cast(pl.Utf8)
        )
    return RawData(
        interactions=inter,
        items=items,
        source_files=files + ([Path(opts.items_table)] if opts.items_table else []),
        format="table",
        options={
            "user_col": opts.user_col,
            "item_col": opts.item_col,
            "time_col": time_col,
            "rating_col": opts.rating_col,
        },
    )
