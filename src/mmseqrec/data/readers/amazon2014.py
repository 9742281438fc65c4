"""``amazon2014``: Amazon product data (2014, McAuley et al.) reviews json.gz plus meta json.gz.

Reviews are strict JSON (``reviewerID``, ``asin``, ``unixReviewTime``, ``overall``), read with polars. Meta
lines are *Python literals* (single quotes), so each is parsed safely with :func:`ast.literal_eval` (never
``eval``); strict-JSON meta lines are accepted too. Meta fields: ``asin``, ``title``, ``description``,
``categories`` (list of category paths; the distinct names joined by ", "), ``brand``, ``price``, ``imUrl``.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import polars as pl

from ...errors import InputError
from ..raw import RawData
from ._amazon import read_amazon
from .base import ReaderOptions, open_text

__all__ = ["parse_meta_line", "read"]


def parse_meta_line(line: str, path: Path, lineno: int) -> dict:
    """One 2014 meta line (a Python dict literal) -> dict; raises :class:`InputError` naming file and line."""
    text = line.strip()
    try:
        obj = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            raise InputError(
                "malformed meta line (neither a Python literal nor JSON)", file=path, line=lineno
            ) from None
    if not isinstance(obj, dict):
        raise InputError("a meta line must be a dict", file=path, line=lineno)
    if not isinstance(obj.get("asin"), str):
        raise InputError("missing required field", file=path, line=lineno, field="asin")
    return obj


def _categories(value) -> str | None:
    if not isinstance(value, list):
        return None
    seen: dict[str, None] = {}
    for path in value:
        for name in path if isinstance(path, list) else [path]:
            if isinstance(name, str) and name:
                seen.setdefault(name, None)
    return ", ".join(seen) or None


def _price(value) -> float | None:
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def read_meta(paths: list[Path]) -> pl.DataFrame | None:
    from ...progress import progress_bar

    cols: dict[str, list] = {
        k: [] for k in ("item_id", "title", "description", "categories", "brand", "price", "image")
    }
    if not paths:
        return None
    with progress_bar(transient=True, terminal_only=True) as progress:
        for p in paths:
            task = progress.add_task(f"meta {p.name}", total=None)
            with open_text(p) as fh:
                for lineno, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    obj = parse_meta_line(line, p, lineno)
                    cols["item_id"].append(obj["asin"])
                    t = obj.get("title")
                    cols["title"].append(t if isinstance(t, str) else None)
                    d = obj.get("description")
                    cols["description"].append(d if isinstance(d, str) else None)
                    cols["categories"].append(_categories(obj.get("categories")))
                    b = obj.get("brand")
                    cols["brand"].append(b if isinstance(b, str) else None)
                    cols["price"].append(_price(obj.get("price")))
                    u = obj.get("imUrl")
                    cols["image"].append(u if isinstance(u, str) else None)
                    if lineno % 10000 == 0:
                        progress.update(task, completed=lineno)
    schema = {
        "item_id": pl.Utf8,
        "title": pl.Utf8,
        "description": pl.Utf8,
        "categories": pl.Utf8,
        "brand": pl.Utf8,
        "price": pl.Float64,
        "image": pl.Utf8,
    }
    return pl.DataFrame(cols, schema=schema)


def read(paths: list[Path], opts: ReaderOptions) -> RawData:
    return read_amazon(paths, "amazon2014", user="reviewerID", item="asin", time="unixReviewTime", rating="overall",
                       read_meta=read_meta, timestamp_unit="s", python_meta=True)
