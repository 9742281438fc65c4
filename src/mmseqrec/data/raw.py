"""What a reader returns before preprocessing: original ids, not yet remapped."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

__all__ = ["RawData"]


@dataclass
class RawData:
    """Output of one reader.

    ``interactions``: columns ``user_id: Utf8``, ``item_id: Utf8``, ``timestamp: Int64`` and optionally
    ``rating: Float32``, in file order (file order breaks timestamp ties). May be lazy so large inputs stream.
    ``items``: ``item_id: Utf8``, ``title: Utf8`` and any of ``description``, ``features``, ``categories``,
    ``brand``, ``price``, ``image`` (local path relative to the dataset dir, or URL), ... ; ``None`` when the
    format has no item side table (titles then default to the original id).
    ``assets``: optional callback writing extra files (e.g. rendered images) into the new dataset dir.
    """

    interactions: pl.LazyFrame | pl.DataFrame
    items: pl.DataFrame | None = None
    source_files: list[Path] = field(default_factory=list)
    format: str = ""
    options: dict[str, object] = field(default_factory=dict)
    assets: Callable[[Path], None] | None = None
    labels: dict[str, str] = field(default_factory=dict)  # e.g. {"synthetic": "true"} recorded in the manifest
