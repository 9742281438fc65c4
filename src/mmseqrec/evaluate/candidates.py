"""Explicit per-case candidate lists in a Parquet file (protocol ``candidates:file=PATH``).

Columns: ``user`` (int, the dataset's internal user index), ``target`` (int, internal item index) and
``candidates`` (list of int item indices, the same length in every row, containing the target exactly once).
One row per evaluation case, keyed by ``(user, target)``; a file may hold the cases of several splits (valid
and test targets differ), and extra rows are ignored. The lists are used in the file's order, so an LLM
recommender that reads them and a sequential model that scores them see identical lists. The file's sha256 is
recorded with every result scored on it.

A file with a ``split`` column (values ``train`` / ``valid`` / ``test``, written by ``mmseqrec llmrec
candidates``) *defines* the cases of each split: scoring a split uses only that split's rows, each of which must
be an evaluation case of the dataset's split (same user, same target); the split's other cases are not scored
(a user-level 8:1:1 split scores only the test users). ``train`` rows are never scored. A file that also has a
``position`` column (the target's 0-based index in the user's sequence, also written by ``mmseqrec llmrec
candidates``) defines the cases' histories too (:func:`file_cases`): each row is scored with the history that ends
at its position. Leave-one-out rows get the same cases as before; impression rows (``--split impression``:
several rows per user, anywhere in the sequence) are scored where they happened. A sequential model trained on
the leave-one-out training prefixes has seen the items after an early impression: for such files its scores
are not a held-out evaluation (say so next to any number).

:func:`write_candidates` writes such a file (atomically) from arrays; :func:`read_candidates` validates it and
aligns it with a split's evaluation cases. Everything is vectorised (no per-row Python).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from ..errors import InputError
from ..fileio import atomic_path, sha256_file

__all__ = ["CandidateLists", "file_cases", "read_candidates", "write_candidates"]

_COLUMNS = ("user", "target", "candidates")


@dataclass(frozen=True)
class CandidateLists:
    """Candidate lists aligned with the evaluation cases.

    Attributes
    ----------
    items : ndarray int64 [n_cases, C]
        The lists, in the file's order.
    target_col : ndarray int64 [n_cases]
        Column of the target in each row.
    path : str
    sha256 : str
        Of the file's bytes.
    """

    items: np.ndarray
    target_col: np.ndarray
    path: str
    sha256: str
    cases: np.ndarray | None = None  # indices of the evaluation cases scored (``None``: all of them)

    @property
    def n_negatives(self) -> int:
        return int(self.items.shape[1]) - 1


def _first_bad(mask: np.ndarray) -> int:
    """1-based row of the first ``True`` in ``mask``."""
    return int(np.argmax(mask)) + 1


def _validate_lists(items: np.ndarray, targets: np.ndarray, n_items: int | None, file: str | Path | None
                    ) -> np.ndarray:
    """Check ids, membership of the target and duplicates (rows are reported 1-based); returns the target's
    column per row."""
    hi = n_items if n_items is not None else np.iinfo(np.int64).max
    bad = (targets < 1) | (targets > hi)
    if bad.any():
        i = _first_bad(bad)
        raise InputError(f"unknown item {int(targets[i - 1])} (items are 1..{n_items})", file=file, line=i,
                         field="target")
    bad = ((items < 1) | (items > hi)).any(1)
    if bad.any():
        i = _first_bad(bad)
        raise InputError(f"unknown item in the list {items[i - 1].tolist()[:10]}... (items are 1..{n_items})",
                         file=file, line=i, field="candidates")
    s = np.sort(items, axis=1)
    bad = (s[:, 1:] == s[:, :-1]).any(1)
    if bad.any():
        i = _first_bad(bad)
        raise InputError("duplicate item in the candidate list", file=file, line=i, field="candidates")
    hit = items == targets[:, None]
    bad = ~hit.any(1)
    if bad.any():
        i = _first_bad(bad)
        raise InputError(f"target {int(targets[i - 1])} is not in its candidate list", file=file, line=i,
                         field="candidates")
    return np.argmax(hit, axis=1).astype(np.int64)


def write_candidates(path: str | Path, users: np.ndarray, targets: np.ndarray, candidates: np.ndarray,
                     n_items: int | None = None, extra: dict[str, pl.Series] | None = None) -> str:
    """Write a candidate file atomically and return its sha256.

    Parameters
    ----------
    users, targets : array-like int [n]
        Internal user and target-item indices of the cases.
    candidates : array-like int [n, C]
        Each case's list (containing its target once), in the order a recommender should see it.
    n_items : int, optional
        When given, item ids must be in ``1..n_items``.
    extra : dict of str to polars Series, optional
        More columns (one value per case), e.g. ``split`` and ``history`` from ``mmseqrec llmrec candidates``.
    """
    users = np.asarray(users, dtype=np.int64)
    targets = np.asarray(targets, dtype=np.int64)
    items = np.asarray(candidates, dtype=np.int64)
    if items.ndim != 2 or items.shape[0] != users.size or targets.size != users.size or items.shape[1] < 2:
        raise InputError(f"candidates must be [n_cases, C >= 2] with one row per (user, target); got users "
                         f"{users.shape}, targets {targets.shape}, candidates {items.shape}", field="candidates")
    _validate_lists(items, targets, n_items, path)
    c = items.shape[1]
    frame = pl.DataFrame({
        "user": users, "target": targets,
        "candidates": pl.Series(items.ravel()).reshape((users.size, c)).cast(pl.List(pl.Int64)),
    })
    for name, col in (extra or {}).items():
        if name in _COLUMNS or len(col) != users.size:
            raise InputError(f"extra column {name!r} must be new and have one value per case", field=name)
        frame = frame.with_columns(pl.Series(name, col))
    if "split" in frame.columns:
        _check_split_values(frame["split"], path)
    with atomic_path(path) as tmp:
        frame.write_parquet(tmp)
    return sha256_file(path)


_SPLITS = ("train", "valid", "test")


def _check_split_values(col: pl.Series, path: str | Path) -> None:
    bad = ~col.cast(pl.Utf8).is_in(_SPLITS).fill_null(False).to_numpy()
    if bad.any():
        i = _first_bad(bad)
        raise InputError(f"split must be one of {', '.join(_SPLITS)}, got {col[i - 1]!r}", file=path, line=i,
                         field="split")



def file_cases(path: str | Path, seqs, split: str | None):
    """The evaluation cases a candidate file with ``split`` and ``position`` columns defines for ``split``:
    ``(EvalSet, file rows)`` in the file's order, each history ending at its row's position; ``None`` for a file
    without those columns (or no split named: :func:`read_candidates` then explains). The item at each row's
    position must be its target (an error naming the line otherwise)."""
    from ..data.split import EvalSet

    cols = pl.read_parquet_schema(path)
    if "position" not in cols or "split" not in cols or split is None:
        return None
    df = pl.read_parquet(path, columns=["user", "target", "split", "position"])
    rows = np.nonzero((df["split"].cast(pl.Utf8) == split).fill_null(False).to_numpy())[0]
    users = df["user"].to_numpy()[rows].astype(np.int64)
    targets = df["target"].to_numpy()[rows].astype(np.int64)
    pos = df["position"].fill_null(-1).to_numpy()[rows].astype(np.int64)
    ok = (users >= 1) & (users <= seqs.n_users) & (pos >= 0)
    hist_end = np.where(ok, seqs.indptr[np.where(ok, users, 0)] + pos, 0)
    ok[ok] = hist_end[ok] < seqs.indptr[users[ok] + 1]
    ok[ok] = seqs.items[hist_end[ok]] == targets[ok]
    if not ok.all():
        i = int(np.argmin(ok))
        raise InputError(f"user {int(users[i])}: the item at position {int(pos[i])} is not the target "
                         f"{int(targets[i])} (was the file built from another dataset?)", file=path,
                         line=int(rows[i]) + 1, field="position")
    return EvalSet(users, targets, hist_end, name=split), rows


def _first_missing(joined: pl.DataFrame, col: str) -> int | None:
    """Position of the first row of a left join whose ``col`` found no partner (``None`` when all did)."""
    missing = joined[col].is_null().to_numpy()
    return _first_bad(missing) - 1 if missing.any() else None

def read_candidates(path: str | Path, users: np.ndarray, targets: np.ndarray, n_users: int | None = None,
                    n_items: int | None = None, split: str | None = None) -> CandidateLists:
    """Read, validate and align a candidate file with evaluation cases ``(users[i], targets[i])``.

    ``split`` names the cases' split (``valid`` / ``test``); a file with a ``split`` column needs it and then
    defines the cases scored (:attr:`CandidateLists.cases`).

    Raises
    ------
    InputError
        Naming the file, the row and the field: missing or mistyped columns, nulls, lists of different lengths,
        unknown users or items, a target not in its list, duplicate items in a list, duplicate
        ``(user, target)`` rows, or an evaluation case without a list.
    """
    from .evaluator import read_parquet_with

    path = Path(path)
    df = read_parquet_with(path, _COLUMNS, "candidate file")
    if not isinstance(df.schema["candidates"], (pl.List, pl.Array)):
        raise InputError(f"must be a list of item ids, got {df.schema['candidates']}", file=path,
                         field="candidates")
    for col in ("user", "target"):
        if not df.schema[col].is_integer():
            raise InputError(f"must be integer ids, got {df.schema[col]}", file=path, field=col)
    by_split = "split" in df.columns
    keep = np.ones(df.height, dtype=bool)
    if by_split:  # the whole file is validated; only this split's rows are aligned with the cases
        _check_split_values(df["split"], path)
        if split not in ("valid", "test"):
            raise InputError("this candidate file assigns its rows to splits; the evaluation cases must name "
                             "theirs (valid or test)", file=path, field="split")
        keep = (df["split"].cast(pl.Utf8) == split).to_numpy()
        if not keep.any():
            raise InputError(f"the candidate file has no {split} rows", file=path, field="split")
    df = df.select("user", "target", pl.col("candidates").cast(pl.List(pl.Int64)))
    if df.height == 0:
        raise InputError("the candidate file has no rows", file=path)
    for col in _COLUMNS:
        nulls = df[col].is_null().to_numpy()
        if nulls.any():
            raise InputError("missing value", file=path, line=_first_bad(nulls), field=col)
    lens = df["candidates"].list.len().to_numpy()
    if (lens != lens[0]).any() or lens[0] < 2:
        i = _first_bad(lens != lens[0]) if (lens != lens[0]).any() else 1
        raise InputError(f"every candidate list must have the same length >= 2 (row 1 has {int(lens[0])}, "
                         f"row {i} has {int(lens[i - 1])})", file=path, line=i, field="candidates")
    inner = df["candidates"].explode(empty_as_null=False).to_numpy()
    if inner.dtype == object or np.isnan(inner.astype(np.float64)).any():
        raise InputError("null item in a candidate list", file=path, field="candidates")
    items = inner.astype(np.int64).reshape(df.height, int(lens[0]))
    fu = df["user"].to_numpy().astype(np.int64)
    ft = df["target"].to_numpy().astype(np.int64)
    if n_users is not None:
        bad = (fu < 1) | (fu > n_users)
        if bad.any():
            i = _first_bad(bad)
            raise InputError(f"unknown user {int(fu[i - 1])} (users are 1..{n_users})", file=path, line=i,
                             field="user")
    tcol_file = _validate_lists(items, ft, n_items, path)
    line_no = np.nonzero(keep)[0] + 1  # file lines of the rows kept
    fu, ft, items, tcol_file = fu[keep], ft[keep], items[keep], tcol_file[keep]
    key = pl.DataFrame({"user": fu, "target": ft, "row": np.arange(fu.size, dtype=np.int64)})
    dup = key.select(pl.struct("user", "target").is_duplicated()).to_series().to_numpy()
    if dup.any():
        i = _first_bad(dup)
        raise InputError(f"duplicate row for user {int(fu[i - 1])}, target {int(ft[i - 1])}", file=path,
                         line=int(line_no[i - 1]), field="user")
    cases = pl.DataFrame({"user": np.asarray(users, dtype=np.int64), "target": np.asarray(targets, dtype=np.int64),
                          "case": np.arange(np.asarray(users).size, dtype=np.int64)})
    if by_split:  # the file's rows of this split are the cases scored; each must be an evaluation case
        joined = key.join(cases, on=["user", "target"], how="left").sort("row")
        j = _first_missing(joined, "case")
        if j is not None:
            raise InputError(f"user {int(joined['user'][j])}, target {int(joined['target'][j])} is not a {split} "
                             f"case of this dataset (was the file built from another dataset?)", file=path,
                             line=int(line_no[j]), field="target")
        case_idx = joined["case"].to_numpy().astype(np.int64)
        order = np.argsort(case_idx, kind="stable")
        return CandidateLists(items=items[order], target_col=tcol_file[order], path=str(path),
                              sha256=sha256_file(path), cases=case_idx[order])
    joined = cases.join(key, on=["user", "target"], how="left").sort("case")
    j = _first_missing(joined, "row")
    if j is not None:
        raise InputError(f"no candidate list for evaluation case user {int(joined['user'][j])}, target "
                         f"{int(joined['target'][j])} ({joined['row'].null_count()} case(s) missing)", file=path,
                         field="user")
    rows = joined["row"].to_numpy().astype(np.int64)
    return CandidateLists(items=items[rows], target_col=tcol_file[rows], path=str(path),
                          sha256=sha256_file(path))
