"""Inputs of the ``embed`` stage, aligned to the item vocabulary of a prepared dataset.

Sources
-------
``title``
    ``items.title``.
``text``
    The title and the free-text fields of ``items.parquet`` in a fixed order (:data:`TEXT_FIELDS`), written in
    the LLM-ESR prompt style: ``"The item has following attributes: name is ...; brand is ...; categories are
    ...; description is ...; features are ...; text is ..."``. Fields that are absent or empty are left out.
``attributes``
    The same fields as ``text`` in LLMEmb's item-prompt layout (``data/*/item_prompt.ipynb``): the instruction
    line, a newline, then the attributes separated by ``"; "`` (``"The item has following attributes: \n name
    is ...; categories are ..."``). Newlines and ``;`` inside a value become ``", "`` / ``","`` so that every
    attribute stays one unit for LLMEmb's attribute dropout.
``image``
    ``items.image``: a local path relative to the dataset dir, an absolute path, or a URL (URLs need
    ``mmseqrec.enrich.images.load_image``).
``TASK`` / ``TASK:VIEW``
    ``DATA/enrich/<TASK>.parquet`` written by ``mmseqrec enrich`` (columns ``item``, optional ``view``,
    ``text``, ``status``). Rows whose status is not ``"ok"`` count as missing.

Every source yields one entry per internal item id ``0..n_items`` (entry 0 is the padding item and is always
missing). Missing inputs become zero rows downstream and are counted in the metadata, never dropped.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from ..data.dataset import ITEMS, DatasetDir
from ..errors import InputError

__all__ = [
    "TEXT_FIELDS",
    "ImageRefs",
    "TextInputs",
    "hash_texts",
    "image_refs",
    "is_image_source",
    "load_image",
    "text_inputs",
]

#: Fixed order of the fields joined by the ``text`` source: (column, label, verb).
TEXT_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("title", "name", "is"),
    ("brand", "brand", "is"),
    ("categories", "categories", "are"),
    ("description", "description", "is"),
    ("features", "features", "are"),
    ("text", "text", "is"),
)
TEXT_PREFIX = "The item has following attributes: "

_TASK_RE = re.compile(r"^[A-Za-z0-9_.\-]+(:[A-Za-z0-9_.\-]+)?$")


@dataclass
class TextInputs:
    """Texts per internal item id (index 0 = padding); ``None`` marks a missing input."""

    texts: np.ndarray  # object [n_items + 1]
    source: str
    reasons: Counter = field(default_factory=Counter)

    @property
    def missing(self) -> np.ndarray:
        """Boolean mask over ids 0..n_items (id 0 always ``True``)."""
        return np.asarray([t is None for t in self.texts], dtype=bool)


@dataclass
class ImageRefs:
    """Image references per internal item id (index 0 = padding); ``None`` marks a missing reference."""

    refs: np.ndarray  # object [n_items + 1]
    base_dir: Path
    reasons: Counter = field(default_factory=Counter)


def is_image_source(source: str) -> bool:
    return source == "image"


def _as_text_expr(col: str, dtype: pl.DataType) -> pl.Expr:
    """A Utf8 expression for one items column (lists are joined with ", "); empty strings become null."""
    e = pl.col(col)
    if isinstance(dtype, (pl.List, pl.Array)):
        e = e.cast(pl.List(pl.Utf8)).list.join(", ")
    elif dtype != pl.Utf8:
        e = e.cast(pl.Utf8)
    e = e.str.strip_chars()
    return pl.when(e.is_not_null() & (e.str.len_chars() > 0)).then(e).otherwise(None)


def _align(ds: DatasetDir, ids: np.ndarray, values: list[Any], file: Path) -> np.ndarray:
    n = ds.n_items
    if ids.size and (ids.min() < 1 or ids.max() > n):
        bad = int(ids[(ids < 1) | (ids > n)][0])
        raise InputError(f"item id {bad} outside 1..{n}", file=file, field="item")
    out = np.full(n + 1, None, dtype=object)
    out[ids] = np.asarray(values + [None], dtype=object)[:-1]  # keep strings as objects
    return out


def text_inputs(ds: DatasetDir, source: str) -> TextInputs:
    """Build the per-item texts of a text ``source`` (``title``, ``text``, ``TASK`` or ``TASK:VIEW``)."""
    if source in ("title", "text", "attributes"):
        items = ds.items
        path = ds.path / ITEMS
        if "item" not in items.columns:
            raise InputError("items table has no 'item' column", file=path, field="item")
        if source == "title":
            if "title" not in items.columns:
                raise InputError("items table has no 'title' column", file=path, field="title")
            expr = _as_text_expr("title", items.schema["title"])
        elif source == "attributes":
            parts = [pl.lit(f"{label} {verb} ") + _as_text_expr(col, items.schema[col])
                     .str.replace_all("\n", ", ", literal=True).str.replace_all(";", ",", literal=True)
                     for col, label, verb in TEXT_FIELDS if col in items.columns]
            if not parts:
                raise InputError("items table has none of the text fields "
                                 f"{[c for c, _, _ in TEXT_FIELDS]}", file=path)
            body = pl.concat_str(parts, separator="; ", ignore_nulls=True)
            expr = pl.when(body.str.len_chars() > 0).then(pl.lit(TEXT_PREFIX + "\n ") + body).otherwise(None)
        else:
            parts = []
            for col, label, verb in TEXT_FIELDS:
                if col in items.columns:
                    parts.append(pl.lit(f"{label} {verb} ") + _as_text_expr(col, items.schema[col]))
            if not parts:
                raise InputError("items table has none of the text fields "
                                 f"{[c for c, _, _ in TEXT_FIELDS]}", file=path)
            body = pl.concat_str(parts, separator="; ", ignore_nulls=True)
            expr = pl.when(body.str.len_chars() > 0).then(pl.lit(TEXT_PREFIX) + body + pl.lit(".")).otherwise(None)
        df = items.select(pl.col("item").cast(pl.Int64), expr.alias("text"))
        texts = _align(ds, df["item"].to_numpy(), df["text"].to_list(), path)
        reasons = Counter({"empty text": int(sum(t is None for t in texts[1:]))})
        return TextInputs(texts=texts, source=source, reasons=+reasons)
    return _task_inputs(ds, source)


def _task_inputs(ds: DatasetDir, source: str) -> TextInputs:
    if not _TASK_RE.match(source):
        raise InputError(f"unknown source {source!r}: use title, text, image, TASK or TASK:VIEW", field="--source")
    task, _, view = source.partition(":")
    path = ds.path / "enrich" / f"{task}.parquet"
    if not path.exists():
        have = sorted(p.stem for p in (ds.path / "enrich").glob("*.parquet")) if (ds.path / "enrich").exists() else []
        raise InputError(f"no enrichment task {task!r} (available: {', '.join(have) or 'none'}); "
                         "run `mmseqrec enrich` first or use --source title|text|image", file=path)
    df = pl.read_parquet(path)
    for col in ("item", "text"):
        if col not in df.columns:
            raise InputError(f"enrichment output has no {col!r} column", file=path, field=col)
    if view:
        if "view" not in df.columns:
            raise InputError(f"task {task!r} has no views (no 'view' column); use --source {task}",
                             file=path, field="view")
        df = df.filter(pl.col("view") == view)
        if df.height == 0:
            raise InputError(f"task {task!r} has no rows for view {view!r}", file=path, field="view")
    elif "view" in df.columns and df["view"].n_unique() > 1:
        views = sorted(str(v) for v in df["view"].unique().to_list())
        raise InputError(f"task {task!r} has several views {views}; pick one with --source {task}:VIEW",
                         file=path, field="view")
    if df["item"].is_duplicated().any():
        dup = df.filter(pl.col("item").is_duplicated())["item"][0]
        raise InputError(f"item {dup} appears more than once", file=path, field="item")
    status = pl.col("status").cast(pl.Utf8) if "status" in df.columns else pl.lit("ok")
    text = _as_text_expr("text", df.schema["text"])
    df = df.select(pl.col("item").cast(pl.Int64), pl.when(status == "ok").then(text).otherwise(None).alias("text"),
                   status.alias("status"))
    texts = _align(ds, df["item"].to_numpy(), df["text"].to_list(), path)
    reasons: Counter = Counter()
    failed = df.filter(pl.col("status") != "ok").height
    if failed:
        reasons["enrichment not ok"] = failed
    empty = df.filter((pl.col("status") == "ok") & pl.col("text").is_null()).height
    if empty:
        reasons["empty text"] = empty
    absent = ds.n_items - df.height
    if absent:
        reasons["no enrichment row"] = absent
    return TextInputs(texts=texts, source=source, reasons=reasons)


def image_refs(ds: DatasetDir) -> ImageRefs:
    """Per-item image references from ``items.image``."""
    items = ds.items
    path = ds.path / ITEMS
    if "image" not in items.columns:
        raise InputError("items table has no 'image' column; this dataset has no images", file=path, field="image")
    df = items.select(pl.col("item").cast(pl.Int64), _as_text_expr("image", items.schema["image"]).alias("image"))
    refs = _align(ds, df["item"].to_numpy(), df["image"].to_list(), path)
    n_none = int(sum(r is None for r in refs[1:]))
    return ImageRefs(refs=refs, base_dir=ds.path, reasons=Counter({"no image reference": n_none}) if n_none
                     else Counter())


def load_image(ref: str, base_dir: Path, cache_dir: Path | None = None) -> tuple[Any, bytes | None, str]:
    """Open one image as RGB.

    Returns ``(image | None, raw bytes | None, reason)``; ``reason`` is ``"ok"`` on success. URLs go through
    ``mmseqrec.enrich.images.load_image`` when that module exists; local paths are read directly.
    """
    from PIL import Image, UnidentifiedImageError

    if ref.startswith(("http://", "https://")):
        try:
            from ..enrich import images as enrich_images  # type: ignore[attr-defined]
        except ImportError:
            return None, None, "URL images need mmseqrec.enrich.images"
        img, reason = enrich_images.load_image(ref, base_dir, cache_dir)
        if img is None:
            return None, None, str(reason or "failed")
        img = img.convert("RGB")
        return img, img.tobytes(), "ok"
    p = Path(ref)
    if not p.is_absolute():
        p = base_dir / p
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        return None, None, "file not found"
    except OSError as exc:
        return None, None, f"unreadable ({exc.__class__.__name__})"
    try:
        img = Image.open(io.BytesIO(data))
        img = img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return None, None, "not a decodable image"
    return img, data, "ok"


def hash_texts(texts: np.ndarray) -> str:
    """sha256 over the inputs in item order (missing entries hashed as a marker), as ``sha256:<hex>``."""
    h = hashlib.sha256()
    h.update("\x1e".join("\x00" if t is None else t for t in texts).encode("utf-8"))
    return "sha256:" + h.hexdigest()
