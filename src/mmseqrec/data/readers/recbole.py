"""``recbole``: RecBole atomic files: ``<name>.inter`` and optionally ``<name>.item`` (tab-separated, typed
headers such as ``user_id:token  item_id:token  rating:float  timestamp:float``, or MMRec's untyped ones such
as ``userID  itemID  rating  timestamp  x_label``).

Field names come from :class:`ReaderOptions` (``user_col``/``item_col``/``time_col``; the rating field is
``rating_col`` or ``rating`` when present). Without a timestamp field, file order is time. In ``.item`` the
title is ``title_col`` or the first of ``title``, ``movie_title``, ``item_name``, ``name``; ``class``/
``genre``/``categories`` become ``categories``; other fields are kept as text columns. An ``x_label`` field of
``.inter`` (MMRec's 0/1/2 train/valid/test marks) is kept for the ``x_label`` split of general models.
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
    expand_paths,
    explain_parse_error,
    first_line,
    reading,
)

__all__ = ["parse_header", "read"]

_TITLE_FIELDS = ("title", "movie_title", "item_name", "name")
_CATEGORY_FIELDS = ("class", "genre", "genres", "categories", "category")


def parse_header(path: Path) -> list[tuple[str, str]]:
    """``name:type`` pairs of an atomic file header. MMRec's files have untyped headers (``userID  itemID
    rating  timestamp  x_label``): when no field has a type, every field is read as ``token`` (values are
    parsed by the reader anyway); a header mixing typed and untyped fields, or one that looks like a data row
    (every field a number), is an error."""
    header = first_line(path).rstrip("\r\n")
    toks = header.split("\t")
    if not any(":" in t for t in toks):
        if all(_is_number(t) for t in toks):
            raise InputError("the first line looks like a data row, not a header (an atomic file starts with "
                             "its field names, e.g. user_id:token or user_id)", file=path, line=1)
        return [(t, "token") for t in toks]
    fields = []
    for i, tok in enumerate(toks):
        if ":" not in tok:
            raise InputError(
                f"header field {tok!r} is not of the form name:type (the other fields are typed)",
                file=path,
                line=1,
                field=f"column {i + 1}",
            )
        name, typ = tok.rsplit(":", 1)
        if typ not in ("token", "token_seq", "float", "float_seq"):
            raise InputError(f"unknown atomic type {typ!r}", file=path, line=1, field=name)
        fields.append((name, typ))
    return fields


def _is_number(tok: str) -> bool:
    try:
        float(tok)
    except ValueError:
        return False
    return True


def _read_atomic(path: Path) -> pl.DataFrame:
    fields = parse_header(path)
    names = [n for n, _ in fields]
    try:
        df = pl.read_csv(
            path,
            separator="\t",
            has_header=False,
            skip_rows=1,
            quote_char=None,
            new_columns=names,
            schema={n: pl.Utf8 for n in names},
        )
    except pl.exceptions.NoDataError:
        raise InputError("no data rows (the file has only its header line)", file=path, line=2) from None
    except PARSE_ERRORS as exc:
        err = explain_parse_error(path, exc, sep="\t", quote=None, header=False)
        if err.line is None:  # count the fields against the header
            from .base import locate_bad_csv_line

            err = locate_bad_csv_line(path, "\t", None, header=True, n_fields=len(names)) or err
        raise err from None
    if df.height == 0:
        raise InputError("no data rows (the file has only its header line)", file=path, line=2)
    return df.with_row_index("lineno", offset=2).with_columns(pl.col("lineno").cast(pl.Int64))


def read(paths: list[Path], opts: ReaderOptions) -> RawData:
    files = expand_paths(paths, "recbole")
    inter_files = [p for p in files if p.suffix == ".inter"]
    item_files = [p for p in files if p.suffix == ".item"]
    if not inter_files:
        raise InputError("no .inter file among the inputs", file=paths[0])
    frames = []
    has_rating = has_time = None
    for p in inter_files:
        with reading(p.name):
            df = _read_atomic(p)
        check_columns(df.columns, [opts.user_col, opts.item_col], p)
        rating = opts.rating_col or ("rating" if "rating" in df.columns else None)
        check_columns(df.columns, [rating], p)
        time = opts.time_col if opts.time_col in df.columns else None
        cols = [
            pl.col(opts.user_col).alias("user_id"),
            pl.col(opts.item_col).alias("item_id"),
            (pl.col(time).cast(pl.Float64, strict=False).cast(pl.Int64) if time else pl.col("lineno")).alias(
                "timestamp"
            ),
        ]
        if rating:
            cols.append(pl.col(rating).cast(pl.Float32, strict=False).alias("rating"))
        if "x_label" in df.columns:  # MMRec's pre-made split (0/1/2 = train/valid/test), kept for data.split
            cols.append(pl.col("x_label").cast(pl.Float64, strict=False).cast(pl.Int8, strict=False).alias("x_label"))
        out = df.select(pl.col("lineno"), *cols)
        for c in out.columns:
            bad = out.filter(pl.col(c).is_null())
            if bad.height:
                field = {
                    "user_id": opts.user_col,
                    "item_id": opts.item_col,
                    "timestamp": time,
                    "rating": rating,
                }.get(c, c)
                raise InputError("missing or invalid value", file=p, line=int(bad["lineno"][0]), field=field)
        if has_rating is not None and (has_rating != bool(rating) or has_time != bool(time)):
            raise InputError("all .inter files must have the same fields", file=p)
        has_rating, has_time = bool(rating), bool(time)
        frames.append(out.drop("lineno"))
    inter = pl.concat(frames)
    items = None
    if item_files:
        parts = []
        for p in item_files:
            df = _read_atomic(p).drop("lineno")
            check_columns(df.columns, [opts.item_col], p)
            title = opts.title_col or next((f for f in _TITLE_FIELDS if f in df.columns), None)
            if opts.title_col:
                check_columns(df.columns, [opts.title_col], p)
            ren = {opts.item_col: "item_id"}
            if title:
                ren[title] = "title"
            cat = next((f for f in _CATEGORY_FIELDS if f in df.columns and f not in ren), None)
            if cat and "categories" not in df.columns:
                ren[cat] = "categories"
            df = df.rename(ren)
            if "title" not in df.columns:
                df = df.with_columns(pl.lit(None, pl.Utf8).alias("title"))
            parts.append(df)
        items = pl.concat(parts, how="diagonal")
    return RawData(
        interactions=inter,
        items=items,
        source_files=inter_files + item_files,
        format="recbole",
        options={"timestamp": "field" if has_time else "file order"},
    )
