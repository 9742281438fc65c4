"""Shared pieces of the readers: :class:`ReaderOptions`, file sniffing, error location and progress display.

Every reader module exposes ``read(paths: list[Path], opts: ReaderOptions) -> RawData``. Readers parse with
polars (vectorised, multi-threaded, streaming where the format allows) and fall back to a Python line scanner
*only* to locate the offending line when polars rejects a file, so that the error names file, line and field.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import Field

from ...config import Config
from ...errors import InputError
from ..raw import RawData

__all__ = [
    "ID",
    "ReaderOptions",
    "check_columns",
    "check_not_null",
    "collect",
    "expand_paths",
    "explain_parse_error",
    "first_line",
    "iter_line_blocks",
    "locate_bad_csv_line",
    "locate_bad_json_line",
    "open_text",
    "read_lines",
    "read_ndjson_blocks",
    "reading",
    "to_epoch",
]

ID = pl.Utf8


class ReaderOptions(Config):
    """Options passed to every reader (most matter to a few formats only).

    Attributes
    ----------
    user_col, item_col, time_col, rating_col
        Column mapping for ``table`` (and field names for ``recbole``). ``time_col=None``: file order is time.
    title_col
        Title column of the item side table (``table``, ``recbole``); ``None`` picks a column named like a title.
    items_table
        Item side table for ``table`` (CSV/Parquet/JSONL keyed by ``items_item_col`` or ``item_col``).
    items_item_col
        Item id column in ``items_table`` when it differs from ``item_col``.
    sep
        Field separator for delimited text (``table`` CSV; ``sasrec-txt``/``seq-txt`` split on any whitespace).
    seed
        Random seed for formats that generate data (``synthetic``).
    extra
        Format-specific options (``--option key=value`` on the command line), e.g. sizes for ``synthetic``.
    """

    user_col: str = "user_id"
    item_col: str = "item_id"
    time_col: str | None = "timestamp"
    rating_col: str | None = None
    title_col: str | None = None
    items_table: Path | None = None
    items_item_col: str | None = None
    sep: str = ","
    seed: int = 0
    extra: dict[str, Any] = Field(default_factory=dict)


def open_text(path: Path, encoding: str = "utf-8"):
    """Open a text file, transparently gunzipping ``.gz``."""
    if str(path).endswith(".gz"):
        return gzip.open(path, "rt", encoding=encoding, errors="replace")
    return open(path, encoding=encoding, errors="replace")


def first_line(path: Path) -> str:
    """The first non-blank line (for sniffing which kind of file this is)."""
    try:
        with open_text(path) as fh:
            for line in fh:
                if line.strip():
                    return line
    except (OSError, EOFError) as exc:
        raise InputError(f"cannot read: {exc}", file=path) from None
    return ""


def expand_paths(paths: Sequence[Path], fmt: str) -> list[Path]:
    """Check existence; a directory expands to its (sorted) regular files."""
    if not paths:
        raise InputError(f"format {fmt!r} needs at least one input PATH")
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            out.extend(sorted(q for q in p.iterdir() if q.is_file() and not q.name.startswith(".")))
        elif p.is_file():
            out.append(p)
        else:
            raise InputError("no such file or directory", file=p)
    return out


@contextlib.contextmanager
def reading(what: str) -> Iterator[None]:
    """A transient rich spinner while a (possibly seconds-long) read runs; silent when not on a terminal."""
    from rich.console import Console

    console = Console(emoji=False, stderr=True)
    if not console.is_terminal:
        yield
        return
    with console.status(f"reading {what} ...", spinner="dots"):
        yield


def locate_bad_json_line(path: Path, fields: dict[str, type | tuple[type, ...]] | None = None) -> InputError:
    """Scan a JSON-lines file to find the first malformed line (only called after polars rejected the file).

    ``fields`` maps required field names to accepted Python types; a missing or mistyped field is reported too.
    """
    with open_text(path) as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                return InputError(f"malformed JSON ({exc.msg} at column {exc.colno})", file=path, line=lineno)
            if not isinstance(obj, dict):
                return InputError("a JSON line must be an object", file=path, line=lineno)
            for name, types in (fields or {}).items():
                if name not in obj or obj[name] is None:
                    return InputError("missing required field", file=path, line=lineno, field=name)
                if not _is_type(obj[name], types):
                    return InputError(f"unexpected value {obj[name]!r}", file=path, line=lineno, field=name)
    return InputError("could not parse the file as JSON lines", file=path)


def _is_type(value: Any, types: type | tuple[type, ...]) -> bool:
    """``isinstance`` where a JSON ``true``/``false`` is not a number."""
    types = types if isinstance(types, tuple) else (types,)
    return isinstance(value, types) and (bool in types or not isinstance(value, bool))


#: What polars (and gzip underneath it) raise on a malformed, empty, truncated or undecodable input file.
PARSE_ERRORS = (
    pl.exceptions.ComputeError,
    pl.exceptions.SchemaError,
    pl.exceptions.InvalidOperationError,
    pl.exceptions.NoDataError,
    OSError,
    EOFError,
)


def _first_line_of(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _utf8_error(path: Path) -> InputError | None:
    """The first line that is not valid UTF-8 (error path only)."""
    with _open_binary(path) as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                return InputError(f"not valid UTF-8 (byte {exc.start + 1} of the line); re-save the file as UTF-8",
                                  file=path, line=lineno)
    return None


def _open_binary(path: Path):
    return gzip.open(path, "rb") if str(path).endswith(".gz") else open(path, "rb")


def _gzip_error(path: Path, exc: BaseException) -> InputError | None:
    """For a ``.gz`` that cannot be fully decompressed: the line where the readable data stops."""
    if not str(path).endswith(".gz"):
        return None
    lineno = 1
    try:
        with gzip.open(path, "rb") as fh:
            while chunk := fh.read1(1 << 16):  # read1: keep what decompresses before the damage
                lineno += chunk.count(b"\n")
    except (OSError, EOFError) as err:
        return InputError(f"truncated or corrupt gzip file ({_first_line_of(err)})", file=path, line=lineno)
    return None


def locate_bad_csv_line(path: Path, sep: str = ",", quote: str | None = '"', *, header: bool = True,
                        n_fields: int | None = None, encoding: str = "utf-8") -> InputError | None:
    """The first line of a delimited text file with the wrong number of fields, an unterminated quote or
    invalid UTF-8 (error path only: a Python scan after polars rejected the file)."""
    import csv

    if (err := _gzip_error(path, EOFError())) is not None:
        return err
    if encoding == "utf-8" and (err := _utf8_error(path)) is not None:
        return err
    with open_text(path, encoding) as fh:
        kw = {"quoting": csv.QUOTE_NONE} if quote is None else {"quotechar": quote}
        reader = csv.reader(fh, delimiter=sep if len(sep) == 1 else ",", strict=True, **kw)
        expected = n_fields
        start = 1
        try:
            for row in reader:
                if row and any(c.strip() for c in row):
                    if expected is None:
                        expected = len(row)
                        if header:
                            start = reader.line_num + 1
                            continue
                    if len(row) != expected:
                        return InputError(f"expected {expected} fields, found {len(row)}", file=path,
                                          line=reader.line_num)
                start = reader.line_num + 1
        except csv.Error as exc:
            return InputError(f"malformed CSV ({exc}; a quoted field starting here is never closed?)",
                              file=path, line=start)
    return None


def explain_parse_error(path: Path, exc: BaseException, *, sep: str = ",", quote: str | None = '"',
                        json_fields: dict | None = None, header: bool = True, encoding: str = "utf-8") -> InputError:
    """Turn a polars/gzip error about ``path`` into an :class:`InputError` naming the line when it can be
    found (JSON lines, delimited text, truncated gzip, invalid UTF-8) and the plain reason otherwise."""
    if isinstance(exc, pl.exceptions.NoDataError):
        return InputError("the file is empty" + (" (no header)" if header else ""), file=path)
    name = path.name.lower().removesuffix(".gz")
    located: InputError | None
    if json_fields is not None or name.endswith((".jsonl", ".ndjson", ".json")):
        located = _gzip_error(path, exc) or _utf8_error(path) or locate_bad_json_line(path, json_fields)
        if located.line is None:
            located = None
    elif name.endswith((".parquet", ".pq")):
        located = None
    else:
        located = locate_bad_csv_line(path, sep, quote, header=header, encoding=encoding)
    return located or InputError(f"cannot parse: {_first_line_of(exc)}", file=path)


def collect(
    frame: pl.LazyFrame | pl.DataFrame, path: Path, *, json_fields: dict | None = None, sep: str = ","
) -> pl.DataFrame:
    """Collect a lazy scan with the streaming engine, turning polars parse errors into :class:`InputError`."""
    try:
        if isinstance(frame, pl.LazyFrame):
            return frame.collect(engine="streaming")
        return frame
    except PARSE_ERRORS as exc:
        raise explain_parse_error(path, exc, sep=sep, json_fields=json_fields) from None


def check_columns(columns: Sequence[str], required: Sequence[str | None], path: Path) -> None:
    """Every required column must be present (``None`` entries are skipped)."""
    for col in required:
        if col is not None and col not in columns:
            raise InputError(f"missing column (found: {', '.join(columns) or 'none'})", file=path, field=col)


def check_not_null(
    df: pl.DataFrame, cols: Sequence[str], path: Path, *, line_offset: int = 1, unit: str = "line"
) -> None:
    """Raise naming the first line/row whose required field is null. ``line_offset``: line of row 0."""
    present = [c for c in cols if c in df.columns]
    if not present or df.height == 0:
        return
    counts = df.select(pl.col(present).null_count()).row(0)
    for col, n in zip(present, counts, strict=True):
        if n:
            row = int(df.select(pl.col(col).is_null().arg_max()).item())
            msg = "missing or invalid value"
            if unit == "line":
                raise InputError(msg, file=path, line=row + line_offset, field=col)
            raise InputError(f"{msg} (row {row + line_offset})", file=path, field=col)


def to_epoch(expr_name: str, dtype: pl.DataType, path: Path) -> pl.Expr:
    """An expression turning a timestamp column of any common dtype into Int64 (seconds for dates)."""
    col = pl.col(expr_name)
    if dtype.is_integer():
        return col.cast(pl.Int64)
    if dtype.is_float():
        return col.cast(pl.Int64, strict=False)
    if dtype == pl.Date:
        return col.cast(pl.Datetime("ms")).dt.epoch("s")
    if isinstance(dtype, pl.Datetime):
        return col.dt.epoch("s")
    if dtype == pl.Utf8:
        as_int = col.str.strip_chars().cast(pl.Int64, strict=False)
        as_float = col.str.strip_chars().cast(pl.Float64, strict=False).cast(pl.Int64, strict=False)
        as_date = col.str.to_datetime(strict=False, time_unit="ms").dt.epoch("s")
        return pl.coalesce(as_int, as_float, as_date)
    raise InputError(f"cannot use a {dtype} column as timestamp", file=path, field=expr_name)


def read_lines(path: Path, encoding: str = "utf8") -> pl.DataFrame:
    """Read a text file as one Utf8 column ``line`` (vectorised; blank lines dropped, ``lineno`` 1-based)."""
    try:
        df = pl.read_csv(
            path,
            has_header=False,
            separator="\x1f",
            quote_char=None,
            new_columns=["line"],
            schema_overrides={"line": pl.Utf8},
            encoding=encoding,
            truncate_ragged_lines=True,
        )
    except pl.exceptions.NoDataError:
        return pl.DataFrame({"line": [], "lineno": []}, schema={"line": pl.Utf8, "lineno": pl.Int64})
    except (pl.exceptions.ComputeError, OSError, EOFError) as exc:
        located = _gzip_error(path, exc) or (_utf8_error(path) if encoding == "utf8" else None)
        raise (located or InputError(f"cannot read: {_first_line_of(exc)}", file=path)) from None
    return df.with_row_index("lineno", offset=1).with_columns(pl.col("lineno").cast(pl.Int64))


def warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


def _line_at_offset(path: Path, offset: int) -> int:
    """1-based line number of the line starting at byte ``offset`` (error path only: counts newlines)."""
    n = 1
    with open(path, "rb") as fh:
        while offset > 0:
            chunk = fh.read(min(offset, 1 << 24))
            if not chunk:
                break
            n += chunk.count(b"\n")
            offset -= len(chunk)
    return n


def _read_gz(fh, n: int, path: Path, line: int) -> bytes:
    try:
        return fh.read(n)
    except (OSError, EOFError) as exc:
        raise (_gzip_error(path, exc) or InputError(f"truncated or corrupt gzip file ({_first_line_of(exc)})",
                                                    file=path, line=line)) from None


def iter_line_blocks(path: Path, block_bytes: int = 8 << 20) -> Iterator[tuple[bytes, Callable[[], int]]]:
    """Yield ``(block, first_line)`` of whole lines, ~``block_bytes`` each, so that huge files are parsed in
    bounded memory; ``first_line()`` returns the 1-based line number of the block's first line (computed only
    when asked: error messages). Plain files are memory-mapped and pages already parsed are released
    (``MADV_DONTNEED``); ``.gz`` files are decompressed on the fly."""
    import mmap

    lineno = 1
    if str(path).endswith(".gz"):
        rest = b""
        with gzip.open(path, "rb") as fh:
            while chunk := _read_gz(fh, block_bytes, path, lineno):
                data = rest + chunk
                cut = data.rfind(b"\n")
                if cut < 0:
                    rest = data
                    continue
                block, rest = data[: cut + 1], data[cut + 1 :]
                yield block, (lambda n=lineno: n)
                lineno += block.count(b"\n")
        if rest.strip():
            yield rest + b"\n", (lambda n=lineno: n)
        return
    with open(path, "rb") as fh:
        if fh.seek(0, 2) == 0:
            return
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            n, start, page = len(mm), 0, mmap.PAGESIZE
            while start < n:
                end = mm.find(b"\n", min(start + block_bytes, n) - 1)
                end = n if end < 0 else end + 1
                block = mm[start:end]
                yield block, (lambda at=start: _line_at_offset(path, at))
                lo, hi = (start // page) * page, (end // page) * page
                if hi > lo and hasattr(mm, "madvise"):
                    mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
                start = end


def read_ndjson_blocks(
    path: Path,
    schema: dict[str, pl.DataType],
    select: list[pl.Expr],
    json_fields: dict | None = None,
    block_bytes: int = 8 << 20,
) -> pl.DataFrame:
    """Parse a JSON-lines file (or .gz) block by block, keeping only ``select``: memory stays near the output
    size, not the input size. A rich progress bar shows bytes read on a terminal. Parse errors are located to
    file + line by re-scanning only the failing block."""
    import io

    from ...progress import progress_bar

    frames: list[pl.DataFrame] = []
    total = path.stat().st_size if not str(path).endswith(".gz") else None
    with progress_bar(size_in_bytes=True, transient=True, terminal_only=True) as progress:
        task = progress.add_task(f"reading {path.name}", total=total)
        for block, first in iter_line_blocks(path, block_bytes):
            try:
                df = pl.read_ndjson(io.BytesIO(block), schema=schema).select(select)
            except (
                pl.exceptions.ComputeError,
                pl.exceptions.SchemaError,
                pl.exceptions.InvalidOperationError,
            ):
                err = _locate_in_block(block, first(), path, json_fields, schema)
                raise err from None
            frames.append(df)
            progress.advance(task, len(block))
    if not frames:
        return pl.DataFrame(schema={k: v for k, v in schema.items()}).select(select)
    return pl.concat(frames, rechunk=True)


def _first_rejected(lines: list[bytes], schema: dict[str, pl.DataType]) -> int | None:
    """Index of the first line polars rejects under ``schema`` (bisection over prefixes; error path only)."""
    import io

    def ok(n: int) -> bool:
        try:
            pl.read_ndjson(io.BytesIO(b"\n".join(lines[:n]) + b"\n"), schema=schema)
        except (pl.exceptions.ComputeError, pl.exceptions.SchemaError, pl.exceptions.InvalidOperationError):
            return False
        return True

    if ok(len(lines)):
        return None
    lo, hi = 0, len(lines)  # ok(lo) holds, ok(hi) fails
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return hi - 1


def _locate_in_block(block: bytes, first: int, path: Path, fields: dict | None,
                     schema: dict[str, pl.DataType] | None = None) -> InputError:
    lines = block.split(b"\n")
    bad = _first_rejected(lines, schema) if schema is not None else None
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        lineno = first + i
        try:
            obj = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            msg = (
                f"malformed JSON ({exc.msg} at column {exc.colno})"
                if isinstance(exc, json.JSONDecodeError)
                else "invalid UTF-8"
            )
            return InputError(msg, file=path, line=lineno)
        if not isinstance(obj, dict):
            return InputError("a JSON line must be an object", file=path, line=lineno)
        for name, types in (fields or {}).items():
            if name in obj and obj[name] is not None and not _is_type(obj[name], types):
                return InputError(f"unexpected value {obj[name]!r}", file=path, line=lineno, field=name)
        if i == bad:
            wrong = [k for k, t in (schema or {}).items() if k in obj and obj[k] is not None
                     and _json_kind(obj[k]) != _json_kind_of(t)]
            return InputError("value of an unexpected type" + (f" {obj[wrong[0]]!r}" if wrong else ""),
                              file=path, line=lineno, field=wrong[0] if wrong else None)
    return InputError("could not parse the file as JSON lines", file=path)


def _json_kind(v: Any) -> str:
    return ("bool" if isinstance(v, bool) else "number" if isinstance(v, (int, float)) else
            "string" if isinstance(v, str) else "list" if isinstance(v, list) else "object")


def _json_kind_of(dtype: pl.DataType) -> str:
    return ("bool" if dtype == pl.Boolean else "number" if dtype.is_numeric() else
            "string" if dtype == pl.Utf8 else "list" if isinstance(dtype, pl.List) else "object")


def split_whitespace_lines(lines: pl.DataFrame) -> pl.DataFrame:
    """``lineno, line`` -> ``lineno, p`` (the line's whitespace-separated tokens), blank lines dropped."""
    parts = lines.select(
        pl.col("lineno"),
        pl.col("line").str.replace_all(r"\s+", " ").str.strip_chars().str.split(" ").alias("p"),
    )
    parts = parts.with_columns(pl.col("p").list.eval(pl.element().filter(pl.element() != "")))
    return parts.filter(pl.col("p").list.len() > 0)


def read_whitespace_files(paths: list[Path], fmt: str,
                          to_frame: Callable[[Path, pl.DataFrame, int], pl.DataFrame]) -> RawData:
    """Read whitespace-separated text files in order (SASRec / S3-Rec style, no timestamps).

    ``to_frame(path, parts, offset)`` turns one file's ``lineno, p`` tokens (:func:`split_whitespace_lines`) into
    ``user_id, item_id, timestamp`` rows, raising :class:`InputError` on bad lines; ``offset`` keeps file order
    across files (the timestamp is the position in the files).
    """
    files = expand_paths(paths, fmt)
    frames = []
    offset = 0
    for p in files:
        with reading(p.name):
            lines = read_lines(p)
        df = to_frame(p, split_whitespace_lines(lines), offset)
        offset += max(int(lines.height), df.height)
        frames.append(df)
    inter = (pl.concat(frames) if frames
             else pl.DataFrame(schema={"user_id": pl.Utf8, "item_id": pl.Utf8, "timestamp": pl.Int64}))
    return RawData(interactions=inter, source_files=files, format=fmt, options={"timestamp": "file order"})
