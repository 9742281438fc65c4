"""What the service and the HTML report show about items and users: title, image, the dataset's text and the
MLLM outputs of ``mmseqrec enrich`` (``DIR/enrich/<task>.parquet``, rows with ``status == "ok"``).

Read once from the dataset directory; nothing here writes.
"""

from __future__ import annotations

import base64
import mimetypes
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from ..data.dataset import DatasetDir

__all__ = ["Catalog"]

_TEXT_COLUMNS = ("description", "categories", "brand", "text")
_MAX_TEXT = 600


def _clip(text: Any) -> str:
    s = "" if text is None else str(text)
    return s if len(s) <= _MAX_TEXT else s[:_MAX_TEXT - 1] + "…"


def _enrich_texts(root: Path, key: str) -> dict[int, dict[str, str]]:
    """``{id: {"task" or "task/view": text}}`` from every ``enrich/*.parquet`` keyed by ``key`` (item or user)."""
    out: dict[int, dict[str, str]] = {}
    for path in sorted((root / "enrich").glob("*.parquet")):
        try:
            df = pl.read_parquet(path)
        except Exception:  # noqa: BLE001, S112 - a foreign or unreadable file is skipped, never fatal for serving
            continue
        if key not in df.columns or "text" not in df.columns:
            continue
        if "status" in df.columns:
            df = df.filter(pl.col("status") == "ok")
        views = df["view"].to_list() if "view" in df.columns else [None] * df.height
        for i, text, view in zip(df[key].to_list(), df["text"].to_list(), views, strict=True):
            if text:
                out.setdefault(int(i), {})[path.stem if view is None else f"{path.stem}/{view}"] = _clip(text)
    return out


class Catalog:
    """Item metadata of a prepared dataset, indexed by internal item id (1..n_items)."""

    def __init__(self, dataset: DatasetDir) -> None:
        self.root = Path(dataset.path)
        self.dataset = dataset
        items = dataset.items.sort("item")
        self.n_items = items.height
        self.ids = [str(x) for x in items["item_id"].to_list()]
        self.index = {x: i + 1 for i, x in enumerate(self.ids)}
        self.titles = ["" if t is None else str(t) for t in items["title"].to_list()] \
            if "title" in items.columns else [""] * self.n_items
        self._lower = [t.lower() for t in self.titles]
        self.images = [None if p is None else str(p) for p in items["image"].to_list()] \
            if "image" in items.columns else [None] * self.n_items
        self.text = {c: items[c].to_list() for c in _TEXT_COLUMNS if c in items.columns}
        self.mllm = _enrich_texts(self.root, "item")
        self.user_mllm = _enrich_texts(self.root, "user")
        users = dataset.users
        self.user_ids = [str(x) for x in users.sort("user")["user_id"].to_list()] if users is not None else []
        self.user_index = {x: i + 1 for i, x in enumerate(self.user_ids)}

    # ------------------------------------------------------------------ items
    def image_path(self, item: int) -> Path | None:
        """The local image file of internal item ``item`` (inside the dataset directory), if any."""
        rel = self.images[item - 1]
        if not rel or rel.startswith(("http://", "https://")):
            return None
        path = (self.root / rel).resolve()
        return path if path.is_file() and path.is_relative_to(self.root.resolve()) else None

    def image_url(self, item: int, prefix: str = "") -> str | None:
        """A URL for the item's image: the dataset's own URL, or ``{prefix}/items/<id>/image`` for a local file."""
        rel = self.images[item - 1]
        if rel and rel.startswith(("http://", "https://")):
            return rel
        return f"{prefix}/items/{self.ids[item - 1]}/image" if self.image_path(item) else None

    def image_data_uri(self, item: int) -> str | None:
        """The local image inlined as a ``data:`` URI (for the self-contained HTML report)."""
        path = self.image_path(item)
        if path is None:
            return None
        mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"

    def item(self, item: int, prefix: str = "") -> dict[str, Any]:
        """Everything shown on a card: id, title, image URL, dataset text and MLLM outputs."""
        return {"item_id": self.ids[item - 1], "title": self.titles[item - 1],
                "image_url": self.image_url(item, prefix),
                "text": {c: _clip(v[item - 1]) for c, v in self.text.items() if v[item - 1] is not None},
                "mllm": self.mllm.get(item, {})}

    def search(self, query: str, limit: int = 20) -> list[int]:
        """Internal ids of items whose title contains ``query`` (case-insensitive), catalogue order."""
        q = query.strip().lower()
        out = []
        for i, t in enumerate(self._lower):
            if q in t:
                out.append(i + 1)
                if len(out) >= limit:
                    break
        return out

    # ------------------------------------------------------------------ users
    def user_history(self, user: int) -> list[str]:
        """A user's chronological original item ids without the last one (the held-out test item)."""
        seq = self.dataset.sequences.sequence(user)
        return [self.ids[int(i) - 1] for i in np.asarray(seq)[:-1]]

    def user(self, user: int) -> dict[str, Any]:
        seq = np.asarray(self.dataset.sequences.sequence(user))
        return {"user_id": self.user_ids[user - 1], "history": self.user_history(user),
                "held_out": self.ids[int(seq[-1]) - 1] if seq.size else None,
                "mllm": self.user_mllm.get(user, {})}
