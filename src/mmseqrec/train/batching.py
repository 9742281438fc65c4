"""Vectorised training batches: windows of each user's leave-one-out training items.

A *window* is a left-padded row of at most ``width`` consecutive training items of one user (``width =
max_len + 1`` for causal models: inputs and shifted targets; ``max_len`` for cloze models). Which windows an
epoch holds is ``train.windows``:

* ``last``: one window per user, the most recent ``width`` training items (older items never become targets).
* ``all``: every training item is a target exactly once per epoch: windows are cut from the end with stride
  ``width - 1`` (causal: consecutive windows share one item, the input of the next window's first target) or
  ``width`` (cloze), so a user with ``n`` training items has ``1 + ceil((n - width) / stride)`` windows.
* ``sampled``: as many windows per user as ``all``, but each epoch their ends are drawn uniformly at random
  from the user's training positions (every interaction is a target in expectation, with a varying context).

Window matrices are built with numpy broadcasting (no per-user Python loop); each batch is a row gather on the
training device, cut to the longest window of the batch (lengths are known on the host, so no device
synchronisation is needed).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import numpy as np
import torch

from ..data.dataset import SequenceData
from ..models.sequence import Batch

__all__ = ["TrainBatches", "WindowKind", "left_padded", "window_counts", "window_ends", "window_matrix"]

WindowKind = Literal["last", "all", "sampled"]


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
    """``([n_users + 1, width] windows, [n_users + 1] window lengths)`` of each user's last training items."""
    starts = seqs.indptr[:-1]
    mat = left_padded(seqs.items, starts, train_end, width)
    lengths = np.minimum(train_end - starts, width)
    return mat, lengths


def window_counts(n: np.ndarray, width: int, stride: int, min_items: int) -> np.ndarray:
    """Windows needed so that every item of ``n`` training items (after the first ``width - stride``) falls in
    the target part of one window: ``1 + ceil((n - width) / stride)``; 0 below ``min_items``."""
    n = np.asarray(n, dtype=np.int64)
    k = 1 + np.maximum(0, -(-(n - width) // stride))
    return np.where(n >= min_items, k, 0)


def window_ends(starts: np.ndarray, ends: np.ndarray, width: int, stride: int, min_items: int,
                rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(owner index, absolute window end)`` of every window, most recent first within a user.

    Without ``rng`` the ends are ``end - j * stride`` (``all``); with ``rng`` each is uniform on
    ``[start + min_items, end]`` (``sampled``).
    """
    starts, ends = np.asarray(starts, dtype=np.int64), np.asarray(ends, dtype=np.int64)
    k = window_counts(ends - starts, width, stride, min_items)
    owner = np.repeat(np.arange(k.size, dtype=np.int64), k)
    if rng is None:
        first = np.cumsum(k) - k  # row of each owner's first window
        j = np.arange(owner.size, dtype=np.int64) - first[owner]
        return owner, ends[owner] - j * stride
    lo = starts[owner] + min_items
    return owner, lo + (rng.random(owner.size) * (ends[owner] - lo + 1)).astype(np.int64)


class TrainBatches:
    """Shuffled epochs of :class:`Batch` over training windows (see the module docstring).

    Parameters
    ----------
    seqs, train_end : sequences and the leave-one-out training ends.
    width : window width (``max_len + 1`` for causal models: inputs and shifted targets).
    batch_size : windows per batch.
    device : where the window matrix lives.
    min_items : minimum items in a window (2 for next-item, 1 for cloze); users with fewer are not trained on.
    trim : cut each batch to its longest window.
    windows : ``last`` | ``all`` | ``sampled``.
    stride : distance between window ends for ``all`` (default ``width - min_items + 1``: each item is a target
        once); smaller strides overlap windows (more context per target, more steps per epoch).

    Attributes
    ----------
    matrix : ``[n_users + 1, width]`` each user's most recent window (one row per user id, the input of
        regularisers such as LLM-ESR's self-distillation), whatever ``windows`` is.
    """

    def __init__(self, seqs: SequenceData, train_end: np.ndarray, width: int, batch_size: int,
                 device: torch.device | str = "cpu", min_items: int = 2, trim: bool = True,
                 windows: WindowKind = "last", stride: int | None = None) -> None:
        if windows not in ("last", "all", "sampled"):
            raise ValueError(f"windows must be last, all or sampled, got {windows!r}")
        mat, lengths = window_matrix(seqs, train_end, width)
        self.seqs, self.train_end = seqs, np.asarray(train_end, dtype=np.int64)
        self.starts = seqs.indptr[:-1].astype(np.int64)
        self.matrix = torch.from_numpy(mat).to(device)
        self.batch_size, self.width, self.trim, self.device = int(batch_size), int(width), trim, device
        self.min_items, self.kind = int(min_items), windows
        self.stride = int(stride) if stride else self.width - self.min_items + 1
        if self.stride < 1:
            raise ValueError(f"window stride must be >= 1, got {self.stride}")
        if windows == "last":
            self.owner = np.nonzero(lengths >= min_items)[0].astype(np.int64)
            self.lengths = lengths[self.owner]
            self.rows = self.matrix
            self._row_of_owner = True
        else:
            owner, ends = window_ends(self.starts, self.train_end, self.width, self.stride, self.min_items)
            self.owner, self.lengths = owner, np.minimum(ends - self.starts[owner], self.width)
            self._row_of_owner = False
            if windows == "all":  # fixed for the run: built once, on the device
                self.rows = torch.from_numpy(left_padded(seqs.items, self.starts[owner], ends, self.width)
                                             ).to(device)

    @property
    def users(self) -> np.ndarray:
        """Distinct users trained on."""
        return np.unique(self.owner)

    def __len__(self) -> int:
        return (self.owner.size + self.batch_size - 1) // self.batch_size

    def n_targets(self, lengths: np.ndarray, causal: bool, last_only: bool = False) -> int:
        """Training targets of windows with these ``lengths``: ``n - 1`` per causal window of length ``n`` (1
        with ``last_only``); for cloze models the number of real input items."""
        if causal:
            return int(lengths.size) if last_only else int((lengths - 1).sum())
        return int(lengths.sum())

    def epoch(self, seed: int, epoch: int) -> Iterator[tuple[np.ndarray, Batch]]:
        """``(window lengths, batch)`` of one epoch, shuffled deterministically from ``(seed, epoch)``."""
        rng = np.random.default_rng([seed, epoch])
        owner, lengths = self.owner, self.lengths
        if self.kind == "sampled":
            owner, ends = window_ends(self.starts, self.train_end, self.width, self.stride, self.min_items, rng)
            lengths = np.minimum(ends - self.starts[owner], self.width)
            rows = torch.from_numpy(left_padded(self.seqs.items, self.starts[owner], ends, self.width)
                                    ).to(self.device)
        else:
            rows = self.rows
        order = rng.permutation(owner.size)
        for lo in range(0, order.size, self.batch_size):
            idx = order[lo:lo + self.batch_size]
            lens = lengths[idx]
            width = max(int(lens.max()) if self.trim else self.width, 2)
            users = torch.from_numpy(owner[idx]).to(self.device)
            r = users if self._row_of_owner else torch.from_numpy(idx).to(self.device)
            yield lens, Batch(seq=rows[r, -width:], users=users)
