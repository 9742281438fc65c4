"""Vectorised training batches from leave-one-out training prefixes.

Once per run, :func:`window_matrix` builds a left-padded ``[n_users + 1, width]`` matrix holding each user's
last ``width`` training items (numpy broadcasting, no per-user Python loop). Each batch is then a row gather
of that matrix on the training device, cut to the longest sequence of the batch (lengths are known on the
host, so no device synchronisation is needed).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from ..data.dataset import SequenceData
from ..models.sequence import Batch

__all__ = ["TrainBatches", "left_padded", "window_matrix"]


def left_padded(items: np.ndarray, starts: np.ndarray, ends: np.ndarray, width: int,
                chunk: int = 1 << 16) -> np.ndarray:
    """Rows ``items[max(start, end - width):end]`` left-padded with 0 to ``width`` (int64 ``[n, width]``)."""
    starts = np.asarray(starts, dtype=np.int64)
    ends = np.asarray(ends, dtype=np.int64)
    out = np.zeros((starts.size, width), dtype=np.int64)
    offs = np.arange(-width, 0, dtype=np.int64)
    for lo in range(0, starts.size, chunk):  # chunks only bound memory for millions of users
        s, e = starts[lo:lo + chunk, None], ends[lo:lo + chunk, None]
        idx = e + offs
        ok = idx >= s
        if items.size:
            out[lo:lo + chunk] = np.where(ok, items[np.clip(idx, 0, items.size - 1)], 0)
    return out


def window_matrix(seqs: SequenceData, train_end: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """``([n_users + 1, width] windows, [n_users + 1] window lengths)`` of training items per user id."""
    starts = seqs.indptr[:-1]
    mat = left_padded(seqs.items, starts, train_end, width)
    lengths = np.minimum(train_end - starts, width)
    return mat, lengths


class TrainBatches:
    """Shuffled epochs of :class:`Batch` over users with at least ``min_items`` training items.

    Parameters
    ----------
    seqs, train_end : sequences and the leave-one-out training ends.
    width : window width (``max_len + 1`` for causal models: inputs and shifted targets).
    batch_size : users per batch.
    device : where the window matrix lives.
    min_items : minimum training items for a user to be trained on (2 for next-item, 1 for cloze).
    trim : cut each batch to its longest window.
    """

    def __init__(self, seqs: SequenceData, train_end: np.ndarray, width: int, batch_size: int,
                 device: torch.device | str = "cpu", min_items: int = 2, trim: bool = True) -> None:
        mat, lengths = window_matrix(seqs, train_end, width)
        self.lengths = lengths
        self.users = np.nonzero(lengths >= min_items)[0].astype(np.int64)
        self.matrix = torch.from_numpy(mat).to(device)
        self.batch_size, self.width, self.trim, self.device = int(batch_size), int(width), trim, device

    def __len__(self) -> int:
        return (self.users.size + self.batch_size - 1) // self.batch_size

    def n_targets(self, users: np.ndarray, causal: bool, last_only: bool = False) -> int:
        """Training targets in a batch of ``users``: ``n - 1`` per causal window of length ``n`` (1 with
        ``last_only``); for cloze models the number of real input items."""
        n = self.lengths[users]
        if causal:
            return int(users.size) if last_only else int((n - 1).sum())
        return int(n.sum())

    def epoch(self, seed: int, epoch: int) -> Iterator[tuple[np.ndarray, Batch]]:
        """Batches of one epoch, shuffled deterministically from ``(seed, epoch)``."""
        rng = np.random.default_rng([seed, epoch])
        order = self.users[rng.permutation(self.users.size)]
        for lo in range(0, order.size, self.batch_size):
            users = order[lo:lo + self.batch_size]
            width = int(self.lengths[users].max()) if self.trim else self.width
            width = max(width, 2)
            u = torch.from_numpy(users).to(self.device)
            yield users, Batch(seq=self.matrix[u, -width:], users=u)
