"""``movielens``: ml-100k (``u.data``/``u.item``), ml-1m/ml-10m (``ratings.dat``/``movies.dat``, ``::``) and
ml-latest / ml-latest-small / ml-20m... (``ratings.csv``/``movies.csv``).

PATHs may be the dataset directory or the files themselves. Titles keep the year ("Toy Story (1995)");
genres become ``categories`` joined by ", ". Timestamps are Unix seconds.
"""

from __future__ import annotations

import io
from pathlib import Path

import polars as pl

from ...errors import InputError
from ..raw import RawData
from .base import PARSE_ERRORS, ReaderOptions, expand_paths, explain_parse_error, read_lines, reading

__all__ = ["ML100K_GENRES", "read"]

ML100K_GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
_INTER = {"user_id": pl.Utf8, "item_id": pl.Utf8, "rating": pl.Float32, "timestamp": pl.Int64}


def _latin1_csv(path: Path, **kw) -> pl.DataFrame:
    data = path.read_bytes().decode("latin-1").encode("utf-8")
    try:
        return pl.read_csv(io.BytesIO(data), **kw)
    except PARSE_ERRORS as exc:
        raise explain_parse_error(path, exc, sep=kw.get("separator", ","), quote=kw.get("quote_char", '"'),
                                  header=kw.get("has_header", True), encoding="latin-1") from None


def _split_dat(path: Path, n: int, names: list[str]) -> pl.DataFrame:
    lines = read_lines(path, encoding="utf8-lossy")
    parts = lines.select(pl.col("lineno"), pl.col("line").str.split("::").alias("p"))
    bad = parts.filter(pl.col("p").list.len() != n)
    if bad.height:
        raise InputError(
            f"expected {n} '::'-separated fields, found {bad['p'][0].len()}",
            file=path,
            line=int(bad["lineno"][0]),
        )
    return parts.select(pl.col("lineno"), *[pl.col("p").list.get(i).alias(c) for i, c in enumerate(names)])


def _cast_inter(df: pl.DataFrame, path: Path) -> pl.DataFrame:
    out = df.select(
        pl.col("user_id").str.strip_chars(),
        pl.col("item_id").str.strip_chars(),
        pl.col("timestamp").str.strip_chars().cast(pl.Int64, strict=False),
        pl.col("rating").str.strip_chars().cast(pl.Float32, strict=False),
        pl.col("lineno"),
    )
    for col in ("user_id", "item_id", "timestamp", "rating"):
        bad = out.filter(pl.col(col).is_null() | (pl.col(col).cast(pl.Utf8) == ""))
        if bad.height:
            raise InputError("missing or invalid value", file=path, line=int(bad["lineno"][0]), field=col)
    return out.select("user_id", "item_id", "timestamp", "rating")


def _ml100k(data: Path, item: Path | None) -> tuple[pl.DataFrame, pl.DataFrame | None]:
    lines = read_lines(data)
    parts = lines.select(pl.col("lineno"), pl.col("line").str.strip_chars().str.split("\t").alias("p"))
    bad = parts.filter(pl.col("p").list.len() != 4)
    if bad.height:
        raise InputError(
            "expected 4 tab-separated fields (user item rating timestamp)",
            file=data,
            line=int(bad["lineno"][0]),
        )
    df = parts.select(
        pl.col("lineno"),
        *[
            pl.col("p").list.get(i).alias(c)
            for i, c in enumerate(("user_id", "item_id", "rating", "timestamp"))
        ],
    )
    inter = _cast_inter(df, data)
    items = None
    if item is not None:
        cols = ["item_id", "title", "release_date", "video_release_date", "imdb_url", *ML100K_GENRES]
        raw = _latin1_csv(
            item,
            separator="|",
            has_header=False,
            quote_char=None,
            new_columns=cols,
            schema_overrides={c: pl.Utf8 for c in cols[:5]},
            truncate_ragged_lines=True,
        )
        genres = pl.concat_list(
            [pl.when(pl.col(g) == 1).then(pl.lit(g)) for g in ML100K_GENRES]
        ).list.drop_nulls()
        items = raw.select(
            pl.col("item_id"),
            pl.col("title"),
            pl.when(genres.list.len() > 0).then(genres.list.join(", ")).alias("categories"),
            pl.col("release_date"),
            pl.col("imdb_url").alias("url"),
        )
    return inter, items


def _ml1m(ratings: Path, movies: Path | None) -> tuple[pl.DataFrame, pl.DataFrame | None]:
    inter = _cast_inter(_split_dat(ratings, 4, ["user_id", "item_id", "rating", "timestamp"]), ratings)
    items = None
    if movies is not None:
        text = movies.read_bytes().decode("latin-1")
        lines = pl.DataFrame({"line": text.splitlines()}).with_row_index("lineno", offset=1)
        lines = lines.filter(pl.col("line").str.strip_chars() != "")
        parts = lines.select(pl.col("lineno"), pl.col("line").str.split("::").alias("p"))
        bad = parts.filter(pl.col("p").list.len() != 3)
        if bad.height:
            raise InputError(
                "expected 3 '::'-separated fields (id::title::genres)",
                file=movies,
                line=int(bad["lineno"][0]),
            )
        items = parts.select(
            pl.col("p").list.get(0).alias("item_id"),
            pl.col("p").list.get(1).alias("title"),
            pl.col("p").list.get(2).str.replace_all("|", ", ", literal=True).alias("categories"),
        )
    return inter, items


def _mlcsv(ratings: Path, movies: Path | None) -> tuple[pl.DataFrame, pl.DataFrame | None]:
    try:
        df = pl.read_csv(
            ratings,
            schema_overrides={"userId": pl.Utf8, "movieId": pl.Utf8, "rating": pl.Utf8, "timestamp": pl.Utf8},
        )
    except PARSE_ERRORS as exc:
        raise explain_parse_error(ratings, exc) from None
    for c in ("userId", "movieId", "rating", "timestamp"):
        if c not in df.columns:
            raise InputError("missing column", file=ratings, field=c)
    df = df.rename({"userId": "user_id", "movieId": "item_id"}).with_row_index("lineno", offset=2)
    inter = _cast_inter(df.with_columns(pl.col("lineno").cast(pl.Int64)), ratings)
    items = None
    if movies is not None:
        try:
            m = pl.read_csv(movies, schema_overrides={"movieId": pl.Utf8})
        except PARSE_ERRORS as exc:
            raise explain_parse_error(movies, exc) from None
        for c in ("movieId", "title"):
            if c not in m.columns:
                raise InputError("missing column", file=movies, field=c)
        genres = pl.col("genres") if "genres" in m.columns else pl.lit(None, pl.Utf8)
        items = m.select(
            pl.col("movieId").alias("item_id"),
            pl.col("title"),
            pl.when(genres == "(no genres listed)")
            .then(None)
            .otherwise(genres.str.replace_all("|", ", ", literal=True))
            .alias("categories"),
        )
    return inter, items


def read(paths: list[Path], opts: ReaderOptions) -> RawData:
    files = expand_paths(paths, "movielens")
    by_name = {p.name: p for p in files}
    with reading("MovieLens ratings"):
        if "u.data" in by_name:
            inter, items = _ml100k(by_name["u.data"], by_name.get("u.item"))
            used = [by_name[n] for n in ("u.data", "u.item") if n in by_name]
            variant = "ml-100k"
        elif "ratings.dat" in by_name:
            inter, items = _ml1m(by_name["ratings.dat"], by_name.get("movies.dat"))
            used = [by_name[n] for n in ("ratings.dat", "movies.dat") if n in by_name]
            variant = "ml-1m"
        elif "ratings.csv" in by_name:
            inter, items = _mlcsv(by_name["ratings.csv"], by_name.get("movies.csv"))
            used = [by_name[n] for n in ("ratings.csv", "movies.csv") if n in by_name]
            variant = "ml-latest"
        else:
            raise InputError(
                "no MovieLens ratings file found (expected u.data, ratings.dat or ratings.csv)", file=paths[0]
            )
    return RawData(
        interactions=inter,
        items=items,
        source_files=used,
        format="movielens",
        options={"variant": variant, "timestamp_unit": "s"},
    )
