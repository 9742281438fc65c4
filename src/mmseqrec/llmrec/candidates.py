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
The file's extra columns: ``split`` (train / valid / test) and ``history`` (the ``n`` items, oldest first).
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

__all__ = ["CandidateSet", "build_candidate_set", "read_candidate_set", "write_candidate_set"]


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
        Users left out (fewer than ``h + 2`` interactions, or beyond ``max_users``).
    """

    users: np.ndarray
    targets: np.ndarray
    candidates: np.ndarray
    split: np.ndarray
    history: np.ndarray
    n_skipped: int = 0

    def rows(self, split: str) -> np.ndarray:
        """Row indices of ``split``."""
        return np.nonzero(self.split == split)[0]

    def counts(self) -> dict[str, int]:
        return {s: int((self.split == s).sum()) for s in ("train", "valid", "test")}


def build_candidate_set(seqs: SequenceData, history: int = 5, negatives: int = 20, seed: int = 0,
                        ratios: tuple[float, float, float] = (0.8, 0.1, 0.1), max_users: int | None = None
                        ) -> CandidateSet:
    """Split the eligible users 8:1:1 (seeded permutation) and draw their lists (see the module docstring).

    ``max_users`` keeps a seeded random subset of the eligible users first (LLM inputs such as preference summaries
    cost a generation per user); the users left out are counted in ``n_skipped``.
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
    perm = rng.permutation(users.size)
    n_train = int(np.floor(ratios[0] * users.size))
    n_valid = int(np.floor(ratios[1] * users.size))
    split = np.empty(users.size, dtype=object)
    split[perm[:n_train]] = "train"
    split[perm[n_train:n_train + n_valid]] = "valid"
    split[perm[n_train + n_valid:]] = "test"
    split = split.astype(str)
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
                        history=hist, n_skipped=int(seqs.n_users - eligible.size))  # short + subsampled out


def write_candidate_set(path: str | Path, cs: CandidateSet, n_items: int) -> str:
    """Write ``cs`` with :func:`mmseqrec.evaluate.candidates.write_candidates` (atomic); returns its sha256."""
    h = cs.history.shape[1]
    extra = {"split": pl.Series("split", cs.split.tolist(), dtype=pl.Utf8),
             "history": pl.Series("history", cs.history.ravel()).reshape((cs.users.size, h)).cast(
                 pl.List(pl.Int64))}
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
    return CandidateSet(users=df["user"].to_numpy().astype(np.int64), targets=targets, candidates=cands,
                        split=split, history=hist)
