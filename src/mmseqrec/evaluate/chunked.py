"""Full ranking over a large catalogue in item chunks: exact pessimistic-tie rank parts and a running top-K.

For dot-product models (score = user state . item vector) the ``[B, n_items + 1]`` score matrix is never
materialised: items ``1..n_items`` are scored ``chunk`` at a time (memory ``O(B * chunk)``), and per row the
evaluator keeps the number of items scoring strictly above the target, the number tied with it, and
optionally the best ``k`` items seen so far.

Exact ties: a matrix product may round one user-item score differently depending on the product's shape, so
every score, the target's included, comes out of a product of one fixed shape ``[B, chunk]`` (the last chunk
is padded with zero rows; the target's score comes from a product of the user states with the targets' item
vectors in place of a chunk). Equal item vectors therefore tie exactly wherever the chunk boundaries fall.
The one-piece path scores with one ``[B, n_items + 1]`` product; a test checks that both paths give identical
ranks and ties on a real model with duplicated item vectors inside and across chunks (on CPU; on GPU the
BLAS may round differently between the two shapes at the last bit, which can only move near-equal distinct
items, never split equal ones). Ties count against the model as in :func:`~.metrics.rank_parts`.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import MmseqrecError

__all__ = ["DEFAULT_ITEM_CHUNK", "chunked_rank_parts"]

DEFAULT_ITEM_CHUNK = 65536


def chunked_rank_parts(
    users: torch.Tensor,
    items: torch.Tensor,
    targets: torch.Tensor,
    *,
    exclude: tuple[np.ndarray, np.ndarray] | None = None,
    chunk: int = DEFAULT_ITEM_CHUNK,
    k: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Rank parts of each row's target among items ``1..n_items`` scored ``chunk`` items at a time.

    Parameters
    ----------
    users : Tensor [B, D]
        User states.
    items : Tensor [n_items + 1, D]
        Item vectors (row 0 = padding, never a candidate).
    targets : LongTensor [B]
        Target item id of each row (``1..n_items``).
    exclude : (rows, item ids), optional
        Candidates that do not take part (e.g. the user's history); pairs naming the row's target are ignored
        (the target is never excluded).
    chunk : int
        Items per chunk.
    k : int
        Also return the ``k`` best remaining items per row (running top-K), ``0`` = no top-K.

    Returns
    -------
    (greater, tied, top_scores, top_ids)
        ``greater``/``tied``: LongTensor [B] as :func:`~.metrics.rank_parts`; ``top_scores`` [B, k] float and
        ``top_ids`` [B, k] int64 (best first; ``None`` when ``k == 0``).

    Raises
    ------
    MmseqrecError
        If any score is NaN.
    """
    dev = users.device
    B, V = users.shape[0], items.shape[0]
    chunk = max(int(chunk), 1)
    tg = targets.to(dev).long()
    ex_r = ex_i = None
    if exclude is not None:
        r, it = (np.asarray(a, dtype=np.int64) for a in exclude)
        keep = it != targets.cpu().numpy()[r]
        order = np.argsort(it[keep], kind="stable")
        ex_r, ex_i = r[keep][order], it[keep][order]
    # The target's own score, from a product of the same shape [B, chunk] as every chunk's (rows of the target
    # matrix in place of the chunk's items), so that it is computed with the same arithmetic.
    tscore = torch.empty(B, dtype=torch.float32, device=dev)
    for r0 in range(0, B, chunk):
        r1 = min(r0 + chunk, B)
        s = _product(users, items[tg[r0:r1]], chunk)
        tscore[r0:r1] = s[torch.arange(r0, r1, device=dev), torch.arange(r1 - r0, device=dev)]
    greater = torch.zeros(B, dtype=torch.long, device=dev)
    tied = torch.zeros(B, dtype=torch.long, device=dev)
    top_s = top_i = None
    t = tscore[:, None]
    for lo in range(1, V, chunk):
        hi = min(lo + chunk, V)
        s = _product(users, items[lo:hi], chunk)
        if torch.isnan(s.sum()) and torch.isnan(s).any():
            raise MmseqrecError("score function returned NaN scores; cannot rank (did training diverge?)")
        if ex_i is not None:
            a, b = np.searchsorted(ex_i, [lo, hi])
            if b > a:
                s[torch.from_numpy(ex_r[a:b]).to(dev), torch.from_numpy(ex_i[a:b] - lo).to(dev)] = float("-inf")
        greater += (s > t).sum(1)
        tied += (s == t).sum(1)
        if k:
            kk = min(k, hi - lo)
            cs, ci = torch.topk(s, kk, dim=1)
            ci = ci + lo
            if top_s is not None:
                cs, ci = torch.cat([top_s, cs], 1), torch.cat([top_i, ci], 1)
                cs, pos = torch.topk(cs, min(k, cs.shape[1]), dim=1)
                ci = torch.gather(ci, 1, pos)
            top_s, top_i = cs, ci
    tied = (tied - 1).clamp_min(0)  # minus the target itself
    return greater, tied, top_s, top_i


def _product(users: torch.Tensor, w: torch.Tensor, chunk: int) -> torch.Tensor:
    """``users @ w.T`` as float32, always computed as a ``[B, chunk]`` product (``w`` padded with zero rows)."""
    n = w.shape[0]
    if n < chunk:
        w = torch.cat([w, w.new_zeros(chunk - n, w.shape[1])])
    return (users @ w.T).float()[:, :n]
