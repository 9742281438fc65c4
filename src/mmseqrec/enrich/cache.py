"""The SQLite cache: the source of truth of an enrichment job.

One row per generation, keyed by the sha256 of (backend, model id + revision, template id + version, decoding
parameters, prompt text, image bytes hash). The database runs in WAL mode and each finished batch is one
transaction, so killing the process loses at most the batch in flight and never a finished one. Failures are
stored with their reason; the runner generates them again on its next run (``retry_failed``, the default) or
serves them from the cache and says so (``--keep-failed``).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CacheEntry", "EnrichCache", "make_key"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS generations (
    key TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    text TEXT,
    reason TEXT,
    backend TEXT NOT NULL,
    model_id TEXT NOT NULL,
    model_revision TEXT NOT NULL,
    template_id TEXT NOT NULL,
    template_version TEXT NOT NULL,
    decoding TEXT NOT NULL,
    prompt TEXT NOT NULL,
    backend_prompt TEXT,
    image_sha256 TEXT,
    created REAL NOT NULL
)
"""


def make_key(*, backend: str, model_id: str, model_revision: str, template_id: str, template_version: str,
             decoding: str, prompt: str, image_sha256: str | None) -> str:
    """sha256 over the canonical JSON of everything that determines an output."""
    payload = json.dumps(
        [backend, model_id, model_revision, template_id, template_version, decoding, prompt, image_sha256 or ""],
        ensure_ascii=False, separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


@dataclass
class CacheEntry:
    key: str
    status: str  # "ok" | "failed"
    text: str | None
    reason: str | None
    backend: str
    model_id: str
    model_revision: str
    template_id: str
    template_version: str
    decoding: str
    prompt: str
    backend_prompt: str | None
    image_sha256: str | None
    created: float

    @classmethod
    def new(cls, **kw) -> CacheEntry:
        kw.setdefault("created", time.time())
        return cls(**kw)


_COLS = tuple(CacheEntry.__dataclass_fields__)


class EnrichCache:
    """A small key/value store of generations on SQLite (WAL, one commit per batch)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=30.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)
        self._db.commit()

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> EnrichCache:  # noqa: PYI034
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def get_many(self, keys: Iterable[str]) -> dict[str, CacheEntry]:
        """Entries for the given keys (missing keys are absent from the result)."""
        keys = list(dict.fromkeys(keys))
        out: dict[str, CacheEntry] = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            q = f"SELECT {', '.join(_COLS)} FROM generations WHERE key IN ({', '.join('?' * len(chunk))})"
            for row in self._db.execute(q, chunk):
                out[row[0]] = CacheEntry(*row)
        return out

    def put_many(self, entries: list[CacheEntry]) -> None:
        """Insert or replace entries in one transaction (one commit per finished batch)."""
        if not entries:
            return
        q = f"INSERT OR REPLACE INTO generations ({', '.join(_COLS)}) VALUES ({', '.join('?' * len(_COLS))})"
        with self._db:
            self._db.executemany(q, [tuple(getattr(e, c) for c in _COLS) for e in entries])

    def count(self, status: str | None = None) -> int:
        if status is None:
            return int(self._db.execute("SELECT COUNT(*) FROM generations").fetchone()[0])
        return int(self._db.execute("SELECT COUNT(*) FROM generations WHERE status = ?", (status,)).fetchone()[0])
