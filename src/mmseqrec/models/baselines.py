"""Closed-form baselines: training popularity (``pop``) and item-item cosine neighbours (``itemknn``).

A model that does not beat these has not learned; every results table carries both. They are fitted once from
the training prefixes (leave-one-out: never a validation or test item) and scored through the same interface as
:class:`~mmseqrec.models.sequence.SequenceModel` (``score_all(input_ids)`` / ``score(input_ids, candidates)``
on left-padded ``[B, L]`` histories), so the one evaluator, ``recommend`` and the run directory treat them like
neural models. Their statistics are fixed-shape buffers (``state_dict`` -> safetensors, no pickles); the
shapes depend only on the config and ``n_items``, so a run directory loads into a freshly built model.

Choices (documented, tested):

* **Pop** scores every item by its number of training interactions (repeats count). Equal counts give
  equal scores; the evaluator counts ties against the model.
* **ItemKNN** similarity: users are the co-occurrence unit on the *binary* user x item training matrix ``X``
  (an item a user consumed twice counts once). ``sim(i, j) = |U_i ∩ U_j| / (sqrt(|U_i|) sqrt(|U_j|) + shrink)``
  (cosine with the additive shrinkage term of Sarwar et al. / RecBole's ``ItemKNN``; ``shrink = 0`` is plain
  cosine); no self-similarity. Computed in blocks of item rows with ``scipy.sparse`` (``X_block^T X``), so no
  dense ``N x N`` matrix exists; a block is pruned as a dense tensor only when a quarter of it is non-zero
  (MovieLens), otherwise on its non-zeros (Amazon-like data: 12k items in about a second).
* **Pruning**: each item keeps its ``k`` most similar items (row-wise top-k; ties at the k-th place go to the
  lower item id), stored as ``neighbours [N + 1, k]`` (int32) and ``similarities [N + 1, k]`` (float32); rows
  with fewer than ``k`` positive similarities are padded with item 0 / 0.0. After pruning the relation is not
  symmetric: history item ``i`` contributes to the items in *its* neighbour list.
* **Scoring**: ``score(j) = sum_{i in profile} w_i * sim_k(i, j)`` where the profile is the last ``last_n``
  history items (``None``: the whole input, i.e. the last ``max_len`` items; ``last_n`` set = the sequential
  variant). The item ``t`` steps before the most recent one weighs ``decay ** t`` (``decay = 1``: no recency
  decay). An item occurring several times in the profile counts once, with the weight of its most recent
  occurrence. History items are not removed (the evaluator's ``exclude_history`` does that).
* **Fallback** (``fallback: popularity``, the default): items with no similarity to the profile (score 0) are
  ordered by training popularity *below* every item with a positive score: they get ``pop / (max_pop + 1) - 1``,
  a value in ``[-1, 0)``. Positive scores are untouched, so ties among them still count against the model.
  ``fallback: none`` leaves them tied at 0.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import Tensor, nn

from ..config import Config

__all__ = ["ClosedFormModel", "ItemKNN", "ItemKNNConfig", "Pop", "PopConfig", "build_itemknn", "build_pop"]

_BLOCK = 1 << 22  # similarity entries per dense block while fitting (32 MiB per float64 block)
_GATHER = 1 << 22  # gathered neighbour entries per scoring chunk
_DENSE = 0.25  # a block with more non-zeros than this fraction is pruned as a dense tensor


class PopConfig(Config):
    """Training popularity (no options)."""

    name: Literal["pop"] = "pop"


class ItemKNNConfig(Config):
    """Item-item cosine neighbours over training co-occurrence.

    Attributes
    ----------
    k : neighbours kept per item (top-k pruning).
    shrink : additive shrinkage in the cosine denominator (0 = plain cosine).
    max_len : history items read per user (the evaluator's and ``recommend``'s input length).
    last_n : score from the last ``n`` history items only (the sequential variant); ``None`` = all ``max_len``.
    decay : recency decay: the item ``t`` steps before the most recent weighs ``decay ** t`` (1 = none).
    fallback : ``popularity`` orders items with no similarity to the history by training popularity, below
        every item with a positive score; ``none`` leaves them tied at 0.
    """

    name: Literal["itemknn"] = "itemknn"
    k: int = Field(100, ge=1, le=100_000)
    shrink: float = Field(0.0, ge=0.0, le=1e6)
    max_len: int = Field(200, ge=1, le=100_000)
    last_n: int | None = Field(None, ge=1, le=100_000)
    decay: float = Field(1.0, gt=0.0, le=1.0)
    fallback: Literal["none", "popularity"] = "popularity"


class ClosedFormModel(nn.Module, ABC):
    """A model fitted once from training sequences (no gradient steps), scored like a ``SequenceModel``.

    Subclasses register fixed-shape buffers in ``__init__`` and fill them in :meth:`fit`.
    """

    n_items: int
    max_len: int = 200

    @abstractmethod
    def fit(self, items: np.ndarray, indptr: np.ndarray) -> None:
        """Fit from training sequences in CSR form: user ``u``'s training items, oldest first, are
        ``items[indptr[u]:indptr[u + 1]]`` (ids ``1..n_items``)."""

    @abstractmethod
    def score_all(self, input_ids: Tensor) -> Tensor:
        """Scores ``[B, n_items + 1]`` of left-padded histories ``[B, L]``; column 0 (padding) is ``-inf``."""

    def score(self, input_ids: Tensor, candidates: Tensor) -> Tensor:
        """Scores ``[B, C]`` of ``candidates [B, C]``: the same numbers as :meth:`score_all` (one computation,
        so equal items tie exactly under every protocol)."""
        return self.score_all(input_ids).gather(1, candidates)

    def n_stored(self) -> int:
        """Number of stored statistics (reported as ``n_params``)."""
        return int(sum(b.numel() for b in self.buffers()))

    def _check(self, items: np.ndarray, indptr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        items = np.asarray(items, dtype=np.int64)
        indptr = np.asarray(indptr, dtype=np.int64)
        if items.size and (items.min() < 1 or items.max() > self.n_items):
            raise ValueError(f"item ids must lie in 1..{self.n_items}")
        if indptr.size < 1 or indptr[0] != 0 or indptr[-1] != items.size or np.any(np.diff(indptr) < 0):
            raise ValueError("indptr must rise from 0 to len(items)")
        return items, indptr


class Pop(ClosedFormModel):
    """Training popularity: ``counts[i]`` = training interactions of item ``i`` (int64 buffer)."""

    def __init__(self, n_items: int) -> None:
        super().__init__()
        self.n_items = int(n_items)
        self.register_buffer("counts", torch.zeros(self.n_items + 1, dtype=torch.int64))

    def fit(self, items: np.ndarray, indptr: np.ndarray) -> None:
        items, _ = self._check(items, indptr)
        counts = np.bincount(items, minlength=self.n_items + 1)
        counts[0] = 0
        self.counts.copy_(torch.from_numpy(counts))

    def _scores(self) -> Tensor:
        s = self.counts.to(torch.float32)
        s[0] = float("-inf")
        return s

    def score_all(self, input_ids: Tensor) -> Tensor:
        return self._scores().unsqueeze(0).expand(input_ids.shape[0], -1).clone()

    def score(self, input_ids: Tensor, candidates: Tensor) -> Tensor:
        return self._scores()[candidates]


def _binary_user_item(items: np.ndarray, indptr: np.ndarray, n_cols: int):
    """Binary CSR ``[n_users, n_cols]`` (1 where the user has the item at least once)."""
    import scipy.sparse as sp

    owner = np.repeat(np.arange(indptr.size - 1, dtype=np.int64), np.diff(indptr))
    x = sp.csr_matrix((np.ones(items.size, dtype=np.float64), (owner, items)), shape=(indptr.size - 1, n_cols))
    x.sum_duplicates()
    x.data[:] = 1.0
    return x


def _topk_rows(sim: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Row-wise top-``k`` ``(indices, values)`` of ``sim [R, C]``, best first; equal values are kept and
    ordered by the lower column index (deterministic, unlike ``torch.topk`` alone), without a full sort."""
    kth = torch.topk(sim, k, dim=1).values[:, -1:]
    above = sim > kth
    tied = sim == kth
    need = k - above.sum(1, keepdim=True, dtype=torch.int32)
    keep = above | (tied & (torch.cumsum(tied, 1, dtype=torch.int32) <= need))  # exactly k per row
    cols = keep.nonzero()[:, 1].view(sim.shape[0], k)  # row-major: column order within a row
    vals = sim.gather(1, cols)
    order = torch.sort(vals, dim=1, descending=True, stable=True).indices
    return cols.gather(1, order), vals.gather(1, order)


def _topk_sparse(r: np.ndarray, c: np.ndarray, s: np.ndarray, n_rows: int, k: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_topk_rows` for the entries ``(r, c, s)`` of a sparse ``[n_rows, C]`` block (same order, same ties)."""
    order = np.lexsort((c, -s, r))  # by row, then similarity descending, then column
    r, c, s = r[order], c[order], s[order]
    rank = np.arange(r.size) - np.searchsorted(r, r)  # position within the row
    keep = rank < k
    idx = np.zeros((n_rows, k), dtype=np.int64)
    val = np.zeros((n_rows, k), dtype=np.float64)
    idx[r[keep], rank[keep]] = c[keep]
    val[r[keep], rank[keep]] = s[keep]
    return idx, val


def cosine_topk(items: np.ndarray, indptr: np.ndarray, n_items: int, k: int, shrink: float
                ) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise top-``k`` shrunk cosine neighbours ``(indices int64 [N + 1, k], values float64 [N + 1, k])``.

    Row 0 and entries beyond an item's positive similarities are ``(0, 0.0)``. Each block of item rows is
    ``X_block^T X`` in ``scipy.sparse``; dense-ish blocks (MovieLens) are pruned as dense tensors, sparse ones
    (Amazon) on their non-zeros only, with identical results.
    """
    x = _binary_user_item(items, indptr, n_items + 1)
    xt = x.T.tocsr()  # [N + 1, U]
    norms = np.sqrt(np.asarray(x.sum(axis=0), dtype=np.float64).ravel())
    idx = np.zeros((n_items + 1, k), dtype=np.int64)
    val = np.zeros((n_items + 1, k), dtype=np.float64)
    rows = max(1, _BLOCK // (n_items + 1))
    for lo in range(1, n_items + 1, rows):
        hi = min(n_items + 1, lo + rows)
        co = (xt[lo:hi] @ x).tocoo()  # [rows, N + 1] co-occurrence counts
        if co.nnz > _DENSE * (hi - lo) * (n_items + 1):
            sim = torch.from_numpy(co.toarray())
            denom = torch.from_numpy(norms[lo:hi, None] * norms[None, :] + shrink)
            sim = torch.where(sim > 0, sim / denom, 0.0)  # co > 0 implies denom > 0
            sim[torch.arange(hi - lo), torch.arange(lo, hi)] = 0.0  # no self-similarity
            sim[:, 0] = 0.0
            cols, top = (t.numpy() for t in _topk_rows(sim, k))
        else:
            r, c = co.row.astype(np.int64), co.col.astype(np.int64)
            ok = (c != r + lo) & (c != 0)
            r, c = r[ok], c[ok]
            cols, top = _topk_sparse(r, c, co.data[ok] / (norms[r + lo] * norms[c] + shrink), hi - lo, k)
        keep = top > 0
        idx[lo:hi] = np.where(keep, cols, 0)
        val[lo:hi] = np.where(keep, top, 0.0)
    return idx, val


class ItemKNN(ClosedFormModel):
    """Item-item cosine neighbours (see the module docstring); buffers ``neighbours``, ``similarities``,
    ``fallback``."""

    def __init__(self, cfg: ItemKNNConfig, n_items: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.n_items = int(n_items)
        self.max_len = int(cfg.max_len)
        self.k = min(int(cfg.k), max(self.n_items - 1, 1))
        self.register_buffer("neighbours", torch.zeros(self.n_items + 1, self.k, dtype=torch.int32))
        self.register_buffer("similarities", torch.zeros(self.n_items + 1, self.k, dtype=torch.float32))
        self.register_buffer("fallback", torch.zeros(self.n_items + 1, dtype=torch.float32))

    def fit(self, items: np.ndarray, indptr: np.ndarray) -> None:
        items, indptr = self._check(items, indptr)
        idx, val = cosine_topk(items, indptr, self.n_items, self.k, float(self.cfg.shrink))
        self.neighbours.copy_(torch.from_numpy(idx.astype(np.int32)))
        self.similarities.copy_(torch.from_numpy(val.astype(np.float32)))
        if self.cfg.fallback == "popularity":
            pop = np.bincount(items, minlength=self.n_items + 1).astype(np.float64)
            fb = pop / (pop.max() + 1.0) - 1.0
        else:
            fb = np.zeros(self.n_items + 1)
        self.fallback.copy_(torch.from_numpy(fb.astype(np.float32)))

    def profile_weights(self, input_ids: Tensor) -> tuple[Tensor, Tensor]:
        """``(ids [B, n], weights [B, n])``: the last ``n`` history items with their recency weights; padding
        and every occurrence of an item but its most recent weigh 0."""
        n = input_ids.shape[1] if self.cfg.last_n is None else min(int(self.cfg.last_n), input_ids.shape[1])
        ids = input_ids[:, input_ids.shape[1] - n:]
        age = torch.arange(n - 1, -1, -1, device=ids.device, dtype=torch.float32)
        w = torch.pow(torch.tensor(float(self.cfg.decay), device=ids.device), age).expand_as(ids)
        # most recent occurrence: a stable sort keeps equal ids in position order, so the last of each run is it
        sorted_ids, perm = torch.sort(ids, dim=1, stable=True)
        last = torch.ones_like(sorted_ids, dtype=torch.bool)
        last[:, :-1] = sorted_ids[:, :-1] != sorted_ids[:, 1:]
        keep = torch.empty_like(last).scatter_(1, perm, last) & (ids != 0)
        return ids, w * keep

    def score_all(self, input_ids: Tensor) -> Tensor:
        ids, w = self.profile_weights(input_ids)
        b, n = ids.shape
        out = torch.zeros(b, self.n_items + 1, dtype=torch.float32, device=ids.device)
        step = max(1, _GATHER // max(n * self.k, 1))
        for lo in range(0, b, step):  # chunks only bound the memory of the gathered neighbour lists
            hi = min(b, lo + step)
            nb = self.neighbours[ids[lo:hi]].long().reshape(hi - lo, -1)
            vals = (self.similarities[ids[lo:hi]] * w[lo:hi, :, None]).reshape(hi - lo, -1)
            out[lo:hi].scatter_add_(1, nb, vals)
        out = torch.where(out > 0, out, self.fallback.unsqueeze(0))
        out[:, 0] = float("-inf")
        return out


def build_pop(cfg: PopConfig, n_items: int) -> Pop:
    return Pop(n_items)


def build_itemknn(cfg: ItemKNNConfig, n_items: int) -> ItemKNN:
    return ItemKNN(cfg, n_items)
