"""MLLM-MSR / MMSRARec candidate lists: per user a history of ``n`` items, 1 positive + ``N`` never-interacted
negatives, users split 8:1:1, written as a ``candidates:file=PATH`` file so that every recommender (LLM or
sequential) is scored on identical lists.

Positions are the leave-one-out ones, so the rows are evaluation cases of the dataset's split and ``mmseqrec
evaluate RUN --protocol candidates:file=FILE`` scores a sequential run on them:

* ``test`` users: target = the last item (the leave-one-out test case), history = the ``n`` items before it;
* ``valid`` users: target = the second-last item (the leave-one-out validation case);
* ``train`` users (supervised fine-tuning only, never scored): target = the last item.

Eligible users have at least ``n + 2`` interactions (a full history before the validation position); the others
are left out and counted. Negatives never include any item of the user's whole sequence (reusing the
evaluator's sampler), the positive's column is drawn at random, everything from one seeded generator.
The file's extra columns: ``split`` (train / valid / test), ``history`` (the ``n`` items, oldest first) and
``position`` (0-based index of the target in the user's sequence; the history ends there).

``--split impression`` (MMSRARec: "impression lists randomly split 8:1:1") needs a dataset with impressions,
``DATA/impressions.parquet``: one row per clicked item, ``user`` / ``item`` / ``timestamp`` matching one of the
user's interactions (which fixes the row's position in the sequence) and ``negatives``, the items shown with it
and not clicked. Each impression becomes one list: its clicked item, ``N`` of its shown negatives (a seeded
choice; impressions with fewer, or with fewer than ``n`` earlier interactions, are left out and counted) and
the ``n`` interactions before it as history; the impressions, not the users, are split 8:1:1. Shown negatives
are the impression's own: they may include items the user interacts with at another time. These rows are not
leave-one-out cases: every recommender scores them from the file (its ``position`` column ends each history,
:func:`mmseqrec.evaluate.candidates.file_cases`), LLM runs and ``mmseqrec evaluate RUN --protocol
candidates:file=FILE`` alike; a sequential model trained on leave-one-out prefixes has, however, seen the items
after an early impression (not a held-out score for it). Because one user's impressions fall
into different splits, per-user summaries over the training prefix (MLLM-MSR's preferences) would see
held-out items: ``llmrec train --method mllm-msr`` refuses such a file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from ..data.dataset import SequenceData
from ..errors import InputError
from ..evaluate.candidates import write_candidates
from ..evaluate.evaluator import _place_positive, build_histories, sample_negatives

__all__ = ["IMPRESSIONS", "CandidateSet", "build_candidate_set", "build_impression_candidate_set",
           "read_candidate_set", "write_candidate_set"]

IMPRESSIONS = "impressions.parquet"


@dataclass(frozen=True)
class CandidateSet:
    """Rows of a candidate file (one per user).

    Attributes
    ----------
    users, targets : ndarray int64 [n]
    candidates : ndarray int64 [n, N + 1]
        Each row holds its target once, at a random column.
    split : ndarray of str [n]
        ``train`` / ``valid`` / ``test``.
    history : ndarray int64 [n, h]
        The items before the target, oldest first.
    n_skipped : int
        Users (impressions) left out (fewer than ``h + 2`` interactions, or beyond ``max_users``).
    positions : ndarray int64 [n] or None
        Index of the target in the user's sequence (``None``: a file without the column, leave-one-out rows).
    """

    users: np.ndarray
    targets: np.ndarray
    candidates: np.ndarray
    split: np.ndarray
    history: np.ndarray
    n_skipped: int = 0
    positions: np.ndarray | None = None

    def hist_end(self, seqs: SequenceData) -> np.ndarray:
        """Absolute end (exclusive) of each row's history in ``seqs.items`` (the target's index)."""
        if self.positions is not None:
            return seqs.indptr[self.users] + self.positions
        end = seqs.indptr[self.users + 1]
        return np.where(self.split == "valid", end - 2, end - 1)

    def rows(self, split: str) -> np.ndarray:
        """Row indices of ``split``."""
        return np.nonzero(self.split == split)[0]

    def counts(self) -> dict[str, int]:
        return {s: int((self.split == s).sum()) for s in ("train", "valid", "test")}


def build_candidate_set(seqs: SequenceData, history: int = 5, negatives: int = 20, seed: int = 0,
                        ratios: tuple[float, float, float] = (0.8, 0.1, 0.1), max_users: int | None = None,
                        only_users: np.ndarray | None = None) -> CandidateSet:
    """Split the eligible users 8:1:1 (seeded permutation) and draw their lists (see the module docstring).

    ``max_users`` keeps a seeded random subset of the eligible users first (LLM inputs such as preference summaries
    cost a generation per user); ``only_users`` restricts the eligible users to a set (e.g. those with a
    preference summary); the users left out are counted in ``n_skipped``.
    """
    if history < 1:
        raise InputError(f"the history must hold at least 1 item, got {history}", field="--history")
    if negatives < 1:
        raise InputError(f"at least 1 negative per list, got {negatives}", field="--negatives")
    if len(ratios) != 3 or min(ratios) < 0 or abs(sum(ratios) - 1.0) > 1e-9:
        raise InputError(f"split ratios must be 3 non-negative numbers summing to 1, got {ratios}", field="--ratios")
    lengths = seqs.lengths[: seqs.n_users + 1]
    eligible = np.nonzero(lengths >= history + 2)[0].astype(np.int64)
    eligible = eligible[eligible > 0]
    if only_users is not None:
        eligible = eligible[np.isin(eligible, np.asarray(only_users, dtype=np.int64))]
    if eligible.size < 3:
        raise InputError(f"only {eligible.size} users have at least {history + 2} interactions (history {history} "
                         "+ validation + test); use a shorter --history", field="--history")
    rng = np.random.default_rng(seed)
    if max_users is not None:
        if max_users < 3:
            raise InputError(f"--max-users must be at least 3, got {max_users}", field="--max-users")
        if eligible.size > max_users:
            eligible = np.sort(rng.choice(eligible, max_users, replace=False))
    users = eligible
    split = _split_labels(users.size, ratios, rng)
    end = seqs.indptr[users + 1]
    hist_end = np.where(split == "valid", end - 2, end - 1)
    targets = seqs.items[hist_end]
    try:  # never any item of the user's whole sequence
        negs = sample_negatives(seqs, users, end, targets, negatives, rng)
    except InputError as exc:
        raise InputError(exc.reason.split(";")[0] + "; use fewer --negatives", field="--negatives") from None
    pos = rng.integers(0, negatives + 1, size=users.size)
    cands = _place_positive(negs, targets, pos)
    hist = build_histories(seqs, users, hist_end, history)
    return CandidateSet(users=users, targets=targets.astype(np.int64), candidates=cands, split=split,
                        history=hist, n_skipped=int(seqs.n_users - eligible.size),  # short + subsampled out
                        positions=(hist_end - seqs.indptr[users]).astype(np.int64))


def _split_labels(n: int, ratios: tuple[float, float, float], rng: np.random.Generator) -> np.ndarray:
    perm = rng.permutation(n)
    n_train, n_valid = int(np.floor(ratios[0] * n)), int(np.floor(ratios[1] * n))
    split = np.empty(n, dtype=object)
    split[perm[:n_train]] = "train"
    split[perm[n_train:n_train + n_valid]] = "valid"
    split[perm[n_train + n_valid:]] = "test"
    return split.astype(str)


def read_impressions(ds_path: str | Path, seqs: SequenceData) -> pl.DataFrame:
    """``DATA/impressions.parquet`` with each row's absolute interaction index ``at`` (clear errors)."""
    from ..evaluate.evaluator import read_parquet_with

    path = Path(ds_path) / IMPRESSIONS
    if not path.exists():
        raise InputError("this dataset has no impressions (impressions.parquet: user, item, timestamp, negatives "
                         "= the items shown and not clicked); --split impression needs them, use --split user",
                         file=path, field="--split")
    df = read_parquet_with(path, ("user", "item", "timestamp", "negatives"), "impressions file")
    for col in ("user", "item", "timestamp"):
        if not df.schema[col].is_integer():
            raise InputError(f"must be integers, got {df.schema[col]}", file=path, field=col)
        nulls = df[col].is_null().to_numpy()
        if nulls.any():
            raise InputError("missing value", file=path, line=int(np.argmax(nulls)) + 1, field=col)
    if not isinstance(df.schema["negatives"], (pl.List, pl.Array)):
        raise InputError(f"must be a list of item ids, got {df.schema['negatives']}", file=path, field="negatives")
    users = np.repeat(np.arange(seqs.n_users + 2, dtype=np.int64), np.diff(np.r_[seqs.indptr, seqs.items.size]))
    inter = pl.DataFrame({"user": users[: seqs.items.size], "item": seqs.items, "timestamp": seqs.timestamps,
                          "at": np.arange(seqs.items.size, dtype=np.int64)}).unique(
        ["user", "item", "timestamp"], keep="first", maintain_order=True)
    j = (df.with_row_index("line", offset=1)
         .with_columns(pl.col("user", "item", "timestamp").cast(pl.Int64))
         .join(inter, on=["user", "item", "timestamp"], how="left").sort("line"))
    miss = j["at"].is_null().to_numpy()
    if miss.any():
        i = int(np.argmax(miss))
        raise InputError(f"user {j['user'][i]}, item {j['item'][i]} at timestamp {j['timestamp'][i]} is not an "
                         "interaction of the dataset (an impression row is one clicked item)", file=path,
                         line=i + 1, field="item")
    return j


def build_impression_candidate_set(ds_path: str | Path, seqs: SequenceData, history: int = 5, negatives: int = 20,
                                   seed: int = 0, ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
                                   ) -> CandidateSet:
    """MMSRARec's lists from the dataset's impressions, the impressions split 8:1:1 (see the module docstring)."""
    if history < 1 or negatives < 1:
        raise InputError(f"--history and --negatives must be >= 1, got {history} and {negatives}",
                         field="--history")
    imp = read_impressions(ds_path, seqs)
    users = imp["user"].to_numpy().astype(np.int64)
    at = imp["at"].to_numpy().astype(np.int64)
    targets = imp["item"].to_numpy().astype(np.int64)
    lists = imp["negatives"].cast(pl.List(pl.Int64)).list.unique().list.drop_nulls()
    lens = lists.list.len().to_numpy().astype(np.int64)
    width = max(int(lens.max()) if lens.size else 0, 1)
    shown = np.full((users.size, width), -1, dtype=np.int64)  # padded, then a seeded choice of N per row
    row_idx = np.repeat(np.arange(users.size, dtype=np.int64), lens)
    col_idx = np.arange(int(lens.sum()), dtype=np.int64) - np.repeat(np.cumsum(lens) - lens, lens)
    shown[row_idx, col_idx] = lists.explode(empty_as_null=False).drop_nulls().to_numpy().astype(np.int64)
    bad = (shown > seqs.n_items) | (shown == 0) | (shown < -1)
    if bad.any():
        i = int(np.argmax(bad.any(1)))
        raise InputError(f"unknown item in negatives (items are 1..{seqs.n_items})", file=Path(ds_path) /
                         IMPRESSIONS, line=i + 1, field="negatives")
    shown[shown == targets[:, None]] = -1
    usable = (shown > 0).sum(1)
    first = pl.DataFrame({"u": users, "t": targets}).select(pl.struct("u", "t").is_first_distinct()).to_series(
    ).to_numpy()  # (user, target) keys a case: a repeated click on the same item keeps its first impression
    keep = (at - seqs.indptr[users] >= history) & (usable >= negatives) & first
    rng = np.random.default_rng(seed)
    rows = np.nonzero(keep)[0]
    if rows.size < 3:
        raise InputError(f"only {rows.size} impressions have {history} earlier interactions and {negatives} shown "
                         "negatives; use a shorter --history or fewer --negatives", field="--negatives")
    keys = rng.random((rows.size, width))
    keys[shown[rows] <= 0] = np.inf
    negs = np.take_along_axis(shown[rows], np.argsort(keys, axis=1, kind="stable")[:, :negatives], 1)
    pos = rng.integers(0, negatives + 1, size=rows.size)
    cands = _place_positive(negs, targets[rows], pos)
    split = _split_labels(rows.size, ratios, rng)
    return CandidateSet(users=users[rows], targets=targets[rows], candidates=cands, split=split,
                        history=build_histories(seqs, users[rows], at[rows], history),
                        n_skipped=int(users.size - rows.size), positions=at[rows] - seqs.indptr[users[rows]])


def write_candidate_set(path: str | Path, cs: CandidateSet, n_items: int) -> str:
    """Write ``cs`` with :func:`mmseqrec.evaluate.candidates.write_candidates` (atomic); returns its sha256."""
    h = cs.history.shape[1]
    extra = {"split": pl.Series("split", cs.split.tolist(), dtype=pl.Utf8),
             "history": pl.Series("history", cs.history.ravel()).reshape((cs.users.size, h)).cast(
                 pl.List(pl.Int64))}
    if cs.positions is not None:
        extra["position"] = pl.Series("position", cs.positions, dtype=pl.Int64)
    return write_candidates(path, cs.users, cs.targets, cs.candidates, n_items=n_items, extra=extra)


def read_candidate_set(path: str | Path, n_items: int | None = None) -> CandidateSet:
    """Read a file written by :func:`write_candidate_set` (all splits) with clear errors."""
    from ..evaluate.candidates import _check_split_values, _validate_lists
    from ..evaluate.evaluator import read_parquet_with

    df = read_parquet_with(path, ("user", "target", "candidates", "split", "history"),
                           "candidate file (from `mmseqrec llmrec candidates`)")
    if df.height == 0:
        raise InputError("the candidate file has no rows", file=path)
    for col in ("candidates", "history"):
        lens = df[col].list.len().to_numpy()
        if lens.min() != lens.max() or lens[0] < (2 if col == "candidates" else 1):
            i = int(np.argmax(lens != lens[0])) + 1 if lens.min() != lens.max() else 1
            what = "an empty history" if lens[i - 1] == 0 else "lists of different lengths"
            raise InputError(f"{what} (every row needs the same length, >= {2 if col == 'candidates' else 1})",
                             file=path, line=i, field=col)
    cands = df["candidates"].explode(empty_as_null=False).to_numpy().astype(np.int64).reshape(df.height, -1)
    hist = df["history"].explode(empty_as_null=False).to_numpy().astype(np.int64).reshape(df.height, -1)
    targets = df["target"].to_numpy().astype(np.int64)
    _validate_lists(cands, targets, n_items, path)
    _check_split_values(df["split"], path)
    split = df["split"].cast(pl.Utf8).to_numpy().astype(str)
    positions = df["position"].to_numpy().astype(np.int64) if "position" in df.columns else None
    return CandidateSet(users=df["user"].to_numpy().astype(np.int64), targets=targets, candidates=cands,
                        split=split, history=hist, positions=positions)
