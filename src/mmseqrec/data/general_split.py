"""Splits for general (non-sequential) recommendation: several targets per user (the MMRec protocol).

Spec strings (canonical form from :func:`parse_split`):

``random:8:1:1[:seed=S]``
    Per user, the user's distinct items are shuffled (seeded, default seed 0) and cut 8:1:1 into
    train / valid / test. With ``n`` distinct items the cuts are at ``floor(n * 0.8 + 0.5)`` and
    ``floor(n * 0.9 + 0.5)``, and at least one item stays in training (``n = 5`` -> 4 / 1 / 0).
``time:8:1:1``
    One global cut on the timestamp: the earliest 80 % of the (deduplicated) interactions are training, the
    next 10 % validation, the last 10 % test (ties in time keep file order).
``x_label``
    The ``x_label`` column (0 / 1 / 2 = train / valid / test) of an MMRec ``.inter`` file, when the prepared
    interactions carry it.

Repeated (user, item) pairs keep their first occurrence only, so no item is ever in two parts for one user.
The split does not depend on the training seed: every seed of an experiment sees the same targets, so the
user is a valid unit for paired tests across models.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import polars as pl

from ..errors import InputError

__all__ = ["GeneralSplit", "UserItems", "general_split", "parse_split", "profile_histories", "profile_pairs"]

_SPEC = re.compile(r"^(random|time):(\d+(?:\.\d+)?):(\d+(?:\.\d+)?):(\d+(?:\.\d+)?)(?::seed=(\d+))?$")


@dataclass(frozen=True)
class UserItems:
    """Per-user item lists in CSR form: ``items[indptr[u]:indptr[u + 1]]`` are user ``u``'s items
    (users 1..n_users, ``indptr`` has ``n_users + 2`` entries, user 0 is empty)."""

    indptr: np.ndarray  # int64 [n_users + 2]
    items: np.ndarray  # int64 [nnz]

    @classmethod
    def from_pairs(cls, users: np.ndarray, items: np.ndarray, n_users: int) -> UserItems:
        """Group ``(user, item)`` pairs by user (order within a user kept)."""
        users = np.asarray(users, dtype=np.int64)
        order = np.argsort(users, kind="stable")
        counts = np.bincount(users, minlength=n_users + 2)[: n_users + 2]
        indptr = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        return cls(indptr=indptr, items=np.asarray(items, dtype=np.int64)[order])

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.indptr)

    def users(self) -> np.ndarray:
        """Users with at least one item."""
        return np.nonzero(self.counts > 0)[0].astype(np.int64)

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """``(users, items)`` arrays of every pair."""
        c = self.counts
        return np.repeat(np.arange(c.size, dtype=np.int64), c), self.items

    def of(self, user: int) -> np.ndarray:
        return self.items[self.indptr[user]: self.indptr[user + 1]]

    def __len__(self) -> int:
        return int(self.items.size)


@dataclass(frozen=True)
class GeneralSplit:
    """Train / valid / test item sets per user. Each part keeps the chronological order of the user's items."""

    spec: str
    n_users: int
    n_items: int
    train: UserItems
    valid: UserItems
    test: UserItems

    def part(self, name: str) -> UserItems:
        return {"train": self.train, "valid": self.valid, "test": self.test}[name]


def parse_split(spec: str) -> tuple[str, tuple[float, float, float], int]:
    """``"random:8:1:1"`` -> ``("random", (0.8, 0.1, 0.1), 0)``; ``"x_label"`` -> ``("x_label", (), 0)``."""
    s = spec.strip()
    if s == "x_label":
        return "x_label", (0.0, 0.0, 0.0), 0
    m = _SPEC.match(s)
    if not m:
        raise InputError(f"unknown split {spec!r} (random:8:1:1[:seed=S] | time:8:1:1 | x_label)", field="data.split")
    kind = m.group(1)
    r = np.asarray([float(m.group(i)) for i in (2, 3, 4)])
    if r.sum() <= 0 or r[0] <= 0:
        raise InputError(f"split {spec!r}: the training part must be positive", field="data.split")
    if kind == "time" and m.group(5):
        raise InputError("the time split takes no seed", field="data.split")
    frac = r / r.sum()
    return kind, (float(frac[0]), float(frac[1]), float(frac[2])), int(m.group(5) or 0)


def canonical_split(spec: str) -> str:
    kind, _, seed = parse_split(spec)
    if kind == "x_label":
        return kind
    body = spec.strip().split(":seed=")[0]
    return body + (f":seed={seed}" if kind == "random" and seed else "")


def _dedupe(users: np.ndarray, items: np.ndarray, n_items: int) -> np.ndarray:
    """Row indices keeping the first occurrence of every (user, item) pair, in input order."""
    _, first = np.unique(users * (n_items + 1) + items, return_index=True)
    return np.sort(first)


def general_split(interactions: pl.DataFrame, n_users: int, n_items: int, spec: str = "random:8:1:1"
                  ) -> GeneralSplit:
    """Split prepared interactions (``user, item, timestamp[, x_label]``, sorted by user and time).

    Parameters
    ----------
    interactions : the dataset's ``interactions.parquet`` frame.
    n_users, n_items : id ranges (1-based).
    spec : see the module docstring.
    """
    kind, frac, seed = parse_split(spec)
    users = interactions["user"].to_numpy().astype(np.int64)
    items = interactions["item"].to_numpy().astype(np.int64)
    keep = _dedupe(users, items, n_items)
    users, items = users[keep], items[keep]
    n = users.size
    if kind == "x_label":
        if "x_label" not in interactions.columns:
            raise InputError("split x_label needs an x_label column in the interactions (MMRec .inter files)",
                             field="data.split")
        part = interactions["x_label"].to_numpy().astype(np.int64)[keep]
        if part.size and (part.min() < 0 or part.max() > 2):
            row = int(np.nonzero((part < 0) | (part > 2))[0][0])
            raise InputError(f"x_label must be 0, 1 or 2 (row {int(keep[row])})", field="x_label")
    elif kind == "time":
        ts = interactions["timestamp"].to_numpy().astype(np.int64)[keep]
        order = np.argsort(ts, kind="stable")
        c1, c2 = (np.floor(n * np.cumsum(frac)[:2] + 0.5)).astype(np.int64)
        part = np.empty(n, dtype=np.int64)
        part[order] = np.where(np.arange(n) < c1, 0, np.where(np.arange(n) < c2, 1, 2))
    else:
        rng = np.random.default_rng(seed)
        key = rng.random(n)
        order = np.lexsort((key, users))  # grouped by user, random within a user
        counts = np.bincount(users, minlength=n_users + 2)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        su = users[order]
        pos = np.arange(n) - starts[su]
        cnt = counts[su]
        c1 = np.maximum(np.floor(cnt * frac[0] + 0.5), 1)
        c2 = np.maximum(np.floor(cnt * (frac[0] + frac[1]) + 0.5), c1)
        part = np.empty(n, dtype=np.int64)
        part[order] = np.where(pos < c1, 0, np.where(pos < c2, 1, 2))
    parts = [UserItems.from_pairs(users[part == p], items[part == p], n_users) for p in range(3)]
    return GeneralSplit(canonical_split(spec), n_users, n_items, *parts)


def profile_pairs(split: GeneralSplit, interactions: pl.DataFrame, source: str = "training"
                  ) -> tuple[np.ndarray, np.ndarray]:
    """``(users, items)`` a preference profile may read, chronological within each user (file order).

    ``source="training"``: the user's training items only (validation and test items never reach a prompt).
    ``source="all-interactions"``: every interaction (MLLMRec's released behaviour, a test-set leak; only
    ever reported under that name).
    """
    if source not in ("training", "all-interactions"):
        raise InputError(f"unknown profile source {source!r} (training | all-interactions)",
                         field="profile_source")
    users = interactions["user"].to_numpy().astype(np.int64)
    items = interactions["item"].to_numpy().astype(np.int64)
    keep = _dedupe(users, items, split.n_items)
    users, items = users[keep], items[keep]
    if source == "training":
        tu, ti = split.train.pairs()
        allowed = np.isin(users * (split.n_items + 1) + items, tu * (split.n_items + 1) + ti)
        users, items = users[allowed], items[allowed]
    return users, items


def profile_histories(split: GeneralSplit, interactions: pl.DataFrame, source: str = "training"
                      ) -> dict[int, list[int]]:
    """``user -> chronological item ids`` a preference profile may read (see :func:`profile_pairs`)."""
    users, items = profile_pairs(split, interactions, source)
    out: dict[int, list[int]] = {}
    bounds = np.flatnonzero(np.diff(users)) + 1
    for chunk_u, chunk_i in zip(np.split(users, bounds), np.split(items, bounds), strict=True):
        if chunk_u.size:
            out[int(chunk_u[0])] = chunk_i.tolist()
    return out
