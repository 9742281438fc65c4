"""Splits, derived deterministically from the sequences (never stored twice).

``leave_one_out``: per user, the last item is the test target, the second last the validation target, and the
rest is training. Users with fewer than ``min_len`` (default 3) interactions are train-only and never evaluated
(explicit: LLM-ESR still feeds them to its evaluation loaders, we do not).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .dataset import SequenceData

__all__ = ["EvalSet", "LeaveOneOut", "leave_one_out"]


@dataclass(frozen=True)
class EvalSet:
    """Evaluation cases: user ``users[i]`` with history ``seqs.items[seqs.indptr[u]:hist_end[i]]``
    must rank ``targets[i]``. ``hist_end`` is an absolute index into ``seqs.items`` (exclusive)."""

    users: np.ndarray  # int64 [n]
    targets: np.ndarray  # int64 [n]
    hist_end: np.ndarray  # int64 [n]
    #: ``"valid"`` / ``"test"`` for the leave-one-out splits; a candidate file with a ``split`` column scores
    #: only its rows of this split (see :mod:`mmseqrec.evaluate.candidates`).
    name: str | None = None

    def __len__(self) -> int:
        return int(self.users.size)

    def histories(self, seqs: SequenceData) -> list[np.ndarray]:
        return [seqs.items[seqs.indptr[u] : e] for u, e in zip(self.users, self.hist_end, strict=True)]


@dataclass(frozen=True)
class LeaveOneOut:
    seqs: SequenceData
    train_end: np.ndarray  # int64 [n_users + 1]: absolute end (exclusive) of each user's training items
    valid: EvalSet
    test: EvalSet

    def train_sequence(self, user: int) -> np.ndarray:
        return self.seqs.items[self.seqs.indptr[user] : self.train_end[user]]

    @property
    def train_lengths(self) -> np.ndarray:
        return self.train_end - self.seqs.indptr[:-1]


def leave_one_out(seqs: SequenceData, min_len: int = 3) -> LeaveOneOut:
    start = seqs.indptr[:-1]
    end = seqs.indptr[1:]
    length = end - start
    evaluated = length >= min_len
    evaluated[0] = False
    train_end = np.where(evaluated, end - 2, end).astype(np.int64)
    users = np.nonzero(evaluated)[0].astype(np.int64)
    valid = EvalSet(users=users, targets=seqs.items[end[users] - 2], hist_end=end[users] - 2, name="valid")
    test = EvalSet(users=users, targets=seqs.items[end[users] - 1], hist_end=end[users] - 1, name="test")
    return LeaveOneOut(seqs=seqs, train_end=train_end, valid=valid, test=test)
