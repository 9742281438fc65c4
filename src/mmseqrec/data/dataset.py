"""The dataset directory written by ``prepare`` and read by every later stage.

Layout (see docs/architecture.md)::

    DIR/interactions.parquet   user:int32, item:int32, timestamp:int64, [rating:float32]
                               sorted by (user, timestamp, file order): rows of one user are that user's
                               chronological sequence.
    DIR/items.parquet          item:int32 (1..n_items), item_id:str (original), title:str, optional
                               text/categories/brand/price/image columns
    DIR/users.parquet          user:int32 (1..n_users), user_id:str (original)
    DIR/manifest.json          format, source, filters, counts, sha256 of inputs and outputs

Ids are contiguous from 1; 0 is padding everywhere.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from ..errors import InputError

__all__ = ["INTERACTIONS", "ITEMS", "MANIFEST", "USERS", "DatasetDir", "SequenceData", "load_dataset"]

INTERACTIONS = "interactions.parquet"
ITEMS = "items.parquet"
USERS = "users.parquet"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class SequenceData:
    """Chronological per-user item sequences in CSR form.

    ``items[indptr[u]:indptr[u + 1]]`` is user ``u``'s sequence (users 1..n_users; ``indptr`` has
    ``n_users + 2`` entries and user 0 is empty). Items are 1..n_items, 0 is padding.
    """

    indptr: np.ndarray  # int64 [n_users + 2]
    items: np.ndarray  # int64 [n_interactions]
    timestamps: np.ndarray  # int64 [n_interactions]
    n_users: int
    n_items: int

    @property
    def lengths(self) -> np.ndarray:
        """Sequence length per user id (index 0 = padding user, length 0)."""
        return np.diff(self.indptr)

    def sequence(self, user: int) -> np.ndarray:
        return self.items[self.indptr[user] : self.indptr[user + 1]]

    @classmethod
    def from_arrays(cls, users: np.ndarray, items: np.ndarray, timestamps: np.ndarray | None = None,
                    n_users: int | None = None, n_items: int | None = None) -> SequenceData:
        """Build from interaction arrays already sorted by (user, time)."""
        users = np.asarray(users, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        if users.size and np.any(np.diff(users) < 0):
            raise ValueError("interactions must be sorted by user")
        n_users = int(users.max(initial=0)) if n_users is None else n_users
        n_items = int(items.max(initial=0)) if n_items is None else n_items
        counts = np.bincount(users, minlength=n_users + 2)[: n_users + 2]
        indptr = np.zeros(n_users + 2, dtype=np.int64)
        indptr[1:] = np.cumsum(counts)[:-1]
        ts = np.arange(items.size, dtype=np.int64) if timestamps is None else np.asarray(timestamps, np.int64)
        return cls(indptr=indptr, items=items, timestamps=ts, n_users=n_users, n_items=n_items)

    @classmethod
    def from_lists(cls, seqs: list[list[int]], n_items: int | None = None) -> SequenceData:
        """Convenience for tests: ``seqs[0]`` is user 1's sequence, and so on."""
        users = np.concatenate([np.full(len(s), u + 1) for u, s in enumerate(seqs)]) if seqs else np.zeros(0)
        items = np.concatenate([np.asarray(s) for s in seqs]) if seqs else np.zeros(0)
        return cls.from_arrays(users, items, n_users=len(seqs), n_items=n_items)


class DatasetDir:
    """A prepared dataset directory. Cheap to construct; tables are read lazily."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        for name in (INTERACTIONS, ITEMS, MANIFEST):
            if not (self.path / name).exists():
                raise InputError(
                    f"not a prepared dataset directory (missing {name}); run `mmseqrec prepare` first",
                    file=self.path,
                )

    @cached_property
    def manifest(self) -> dict[str, Any]:
        path = self.path / MANIFEST
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            line = getattr(exc, "lineno", None)
            raise InputError(f"unreadable manifest ({type(exc).__name__}); re-run `mmseqrec prepare`",
                             file=path, line=line) from None
        if not isinstance(data, dict):
            raise InputError("the manifest must be a JSON object; re-run `mmseqrec prepare`", file=path)
        return data

    def _table(self, name: str) -> pl.DataFrame:
        try:
            return pl.read_parquet(self.path / name)
        except (pl.exceptions.PolarsError, OSError) as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise InputError(f"corrupt or truncated Parquet ({reason}); re-run `mmseqrec prepare`",
                             file=self.path / name) from None

    @cached_property
    def interactions(self) -> pl.DataFrame:
        return self._table(INTERACTIONS)

    @cached_property
    def items(self) -> pl.DataFrame:
        return self._table(ITEMS)

    @cached_property
    def users(self) -> pl.DataFrame | None:
        return self._table(USERS) if (self.path / USERS).exists() else None

    @cached_property
    def identity(self) -> dict[str, Any]:
        """What identifies this dataset's content: ``sha256`` over the sha256 of ``interactions.parquet`` and
        ``items.parquet`` (from the manifest's ``outputs`` when recorded, else hashed now), plus the counts.
        Recorded in every run and eval file so that a model is never silently scored on other data."""
        import hashlib

        from ..fileio import sha256_file

        outputs = self.manifest.get("outputs") or {}
        parts = [outputs.get(n) or sha256_file(self.path / n) for n in (INTERACTIONS, ITEMS)]
        digest = hashlib.sha256("\n".join(parts).encode()).hexdigest()
        return {"sha256": digest, "n_users": self.n_users, "n_items": self.n_items}

    def _count(self, key: str) -> int:
        try:
            return int(self.manifest[key])
        except (KeyError, TypeError, ValueError):
            raise InputError("missing or invalid count; re-run `mmseqrec prepare`", file=self.path / MANIFEST,
                             field=key) from None

    @property
    def n_users(self) -> int:
        return self._count("n_users")

    @property
    def n_items(self) -> int:
        return self._count("n_items")

    @cached_property
    def sequences(self) -> SequenceData:
        df = self.interactions
        return SequenceData.from_arrays(
            df["user"].to_numpy(), df["item"].to_numpy(), df["timestamp"].to_numpy(),
            n_users=self.n_users, n_items=self.n_items,
        )

    def stats(self) -> dict[str, float]:
        """Sequence-length statistics per user (``len_min``, ``len_median``, ``len_mean``, ``len_max``), the
        interactions per item (``item_inter_median``) and the sparsity ``1 - distinct (user, item) pairs /
        (n_users * n_items)``."""
        lengths = self.sequences.lengths[1 : self.n_users + 1]
        df = self.interactions
        pairs = int(df.select(pl.struct("user", "item").n_unique()).item()) if df.height else 0
        per_item = np.bincount(df["item"].to_numpy(), minlength=self.n_items + 1)[1:]
        cells = self.n_users * self.n_items
        return {
            "len_min": int(lengths.min()) if lengths.size else 0,
            "len_median": float(np.median(lengths)) if lengths.size else 0.0,
            "len_mean": float(lengths.mean()) if lengths.size else 0.0,
            "len_max": int(lengths.max(initial=0)),
            "item_inter_median": float(np.median(per_item)) if per_item.size else 0.0,
            "sparsity": 1.0 - pairs / cells if cells else 1.0,
        }

    def item_index(self) -> dict[str, int]:
        """Original item id -> internal id."""
        it = self.items
        return dict(zip(it["item_id"].cast(pl.Utf8).to_list(), it["item"].to_list(), strict=True))

    def item_ids(self) -> np.ndarray:
        """Internal id -> original id (index 0 = padding, empty string)."""
        it = self.items.sort("item")
        return np.asarray([""] + it["item_id"].cast(pl.Utf8).to_list(), dtype=object)


def load_dataset(path: str | Path) -> DatasetDir:
    return DatasetDir(path)
