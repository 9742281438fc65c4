"""Ranking evaluation of a score function under a named protocol (full / sampled:N / candidates:N)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import polars as pl
import torch

from ..data.dataset import SequenceData
from ..data.split import EvalSet
from ..errors import InputError
from ..fileio import atomic_path
from .metrics import compute_metrics, rank_parts
from .protocol import Protocol

__all__ = ["RankingResult", "evaluate_ranking", "left_padded_histories", "sample_negatives"]

ScoreFn = Callable[[torch.Tensor, "torch.Tensor | None"], torch.Tensor]


@dataclass
class RankingResult:
    """Per-case ranks of one evaluation and their metrics, with the protocol that produced them."""

    protocol: Protocol
    exclude_history: bool
    ks: tuple[int, ...]
    metrics: dict[str, float]
    ranks: np.ndarray
    users: np.ndarray
    targets: np.ndarray
    tied: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def to_frame(self) -> pl.DataFrame:
        return pl.DataFrame({"user": self.users.astype(np.int64), "target": self.targets.astype(np.int64),
                             "rank": self.ranks, "tied": self.tied.astype(np.int64)})

    def save_ranks(self, path: str | Path) -> None:
        with atomic_path(path) as tmp:
            self.to_frame().write_parquet(tmp)

    def to_dict(self) -> dict[str, Any]:
        return {"protocol": str(self.protocol), "exclude_history": self.exclude_history,
                "ties": self.protocol.ties, "metrics": self.metrics}


def left_padded_histories(seqs: SequenceData, evalset: EvalSet, max_len: int) -> np.ndarray:
    """``[n_cases, max_len]`` int64: the last ``max_len`` history items of each case, left-padded with 0."""
    start = seqs.indptr[evalset.users]
    end = evalset.hist_end
    offs = np.arange(-max_len, 0, dtype=np.int64)[None, :] + end[:, None]
    valid = offs >= start[:, None]
    return np.where(valid, seqs.items[np.clip(offs, 0, max(seqs.items.size - 1, 0))], 0).astype(np.int64)


def _user_item_sets(seqs: SequenceData, evalset: EvalSet) -> tuple[np.ndarray, np.ndarray]:
    """CSR (indptr, items) of each case's full history up to and including the target."""
    start = seqs.indptr[evalset.users]
    stop = evalset.hist_end + 1
    lens = stop - start
    indptr = np.concatenate([[0], np.cumsum(lens)])
    owner = np.repeat(np.arange(lens.size), lens)
    pos = np.arange(indptr[-1]) - indptr[owner] + start[owner]
    return indptr, seqs.items[pos]


def sample_negatives(seqs: SequenceData, evalset: EvalSet, n: int, rng: np.random.Generator,
                     popularity: np.ndarray | None = None) -> np.ndarray:
    """``[n_cases, n]`` negatives per case, without replacement, never in the case's history or target.

    Vectorised rejection sampling: draw candidate blocks for all cases, drop forbidden and duplicate ids,
    redraw only where rows are still short.
    """
    n_items = seqs.n_items
    indptr, hist = _user_item_sets(seqs, evalset)
    n_cases = len(evalset)
    # forbidden set per case as sorted (case * (n_items + 1) + item) keys
    owner = np.repeat(np.arange(n_cases), np.diff(indptr))
    forbidden = np.unique(owner.astype(np.int64) * (n_items + 1) + hist)
    n_forb = np.bincount(np.unique(forbidden // (n_items + 1)), minlength=n_cases)  # unused guard
    counts = np.diff(np.searchsorted(forbidden, np.arange(n_cases + 1, dtype=np.int64) * (n_items + 1)))
    if np.any(n_items - counts < n):
        bad = int(np.argmax(n_items - counts < n))
        raise InputError(f"user {int(evalset.users[bad])} has fewer than {n} items left to sample as negatives",
                         field="--protocol")
    del n_forb
    if popularity is not None:
        p = np.asarray(popularity, dtype=np.float64)[: n_items + 1].copy()
        p[0] = 0.0
        p = p + 1e-12 * (p.sum() == 0)
        p[1:] = np.maximum(p[1:], 0) + (p[1:] <= 0) * 1e-12  # items never seen in training stay possible
        p /= p.sum()
    out = np.zeros((n_cases, n), dtype=np.int64)
    filled = np.zeros(n_cases, dtype=np.int64)
    todo = np.arange(n_cases)
    while todo.size:
        draw = max(2 * n, 16)
        if popularity is None:
            cand = rng.integers(1, n_items + 1, size=(todo.size, draw))
        else:
            cand = rng.choice(n_items + 1, size=(todo.size, draw), p=p)
        keys = todo[:, None].astype(np.int64) * (n_items + 1) + cand
        idx = np.searchsorted(forbidden, keys)
        bad = (idx < forbidden.size) & (forbidden[np.minimum(idx, forbidden.size - 1)] == keys)
        bad |= cand == 0
        nxt = []
        for row, case in enumerate(todo):  # per-case merge of a small block; vectorised work above
            have = out[case, : filled[case]]
            c = cand[row][~bad[row]]
            c = c[~np.isin(c, have)]
            _, first = np.unique(c, return_index=True)
            c = c[np.sort(first)][: n - filled[case]]
            out[case, filled[case] : filled[case] + c.size] = c
            filled[case] += c.size
            if filled[case] < n:
                nxt.append(case)
        todo = np.asarray(nxt, dtype=np.int64)
    return out


def evaluate_ranking(score_fn: ScoreFn, evalset: EvalSet, seqs: SequenceData, protocol: Protocol | str,
                     ks=(5, 10, 20), *, exclude_history: bool = False, max_len: int = 200, batch_size: int = 512,
                     device: str = "cpu", item_popularity: np.ndarray | None = None,
                     candidates: np.ndarray | None = None) -> RankingResult:
    """Rank each case's target under ``protocol``; ties count against the model unless ``ties=random``."""
    protocol = Protocol.parse(protocol)
    ks = tuple(int(k) for k in ks)
    n_cases = len(evalset)
    hists = left_padded_histories(seqs, evalset, max_len)
    rng = np.random.default_rng(protocol.seed)
    cand = None
    if protocol.kind != "full":
        if candidates is not None:
            cand = np.asarray(candidates, dtype=np.int64)
            if cand.shape != (n_cases, protocol.n + 1):
                raise InputError(f"candidate lists must have shape ({n_cases}, {protocol.n + 1}), got {cand.shape}",
                                 field="candidates")
            if np.any(cand[:, 0] != evalset.targets):
                raise InputError("column 0 of the candidate lists must be the target", field="candidates")
            negs = cand[:, 1:]
        else:
            pop = item_popularity if protocol.sampler == "popularity" else None
            if protocol.sampler == "popularity" and pop is None:
                raise InputError("popularity sampling needs item popularity counts", field="--protocol")
            negs = sample_negatives(seqs, evalset, protocol.n, rng, pop)
        # the positive goes to a random column, never a fixed one
        pos_col = rng.integers(0, protocol.n + 1, size=n_cases)
        cand = np.empty((n_cases, protocol.n + 1), dtype=np.int64)
        cols = np.arange(protocol.n + 1)[None, :]
        neg_pos = cols - (cols > pos_col[:, None])
        cand[:] = np.take_along_axis(np.concatenate([negs, negs[:, :1]], 1), np.clip(neg_pos, 0, protocol.n - 1), 1)
        cand[np.arange(n_cases), pos_col] = evalset.targets
    else:
        pos_col = evalset.targets.astype(np.int64)
    if exclude_history:
        h_indptr, h_items = _user_item_sets(seqs, evalset)
    ranks = np.zeros(n_cases, dtype=np.float64 if protocol.ties == "random" else np.int64)
    tied_all = np.zeros(n_cases, dtype=np.int64)
    dev = torch.device(device)
    for s in range(0, n_cases, batch_size):
        e = min(s + batch_size, n_cases)
        h = torch.from_numpy(hists[s:e]).to(dev)
        if cand is None:
            scores = score_fn(h, None).float()
            if scores.shape[1] != seqs.n_items + 1:
                raise InputError(f"score_fn returned {scores.shape[1]} columns, expected n_items + 1 = "
                                 f"{seqs.n_items + 1}", field="score_fn")
            excl = torch.zeros_like(scores, dtype=torch.bool)
            excl[:, 0] = True
            if exclude_history:
                lens = np.diff(h_indptr[s : e + 1])
                rows = np.repeat(np.arange(e - s), lens)
                items = h_items[h_indptr[s] : h_indptr[e]]
                excl[torch.from_numpy(rows).to(dev), torch.from_numpy(items).to(dev)] = True
            tcol = torch.from_numpy(pos_col[s:e]).to(dev)
        else:
            c = torch.from_numpy(cand[s:e]).to(dev)
            scores = score_fn(h, c).float()
            excl = None
            tcol = torch.from_numpy(pos_col[s:e]).to(dev)
        greater, tied = rank_parts(scores, tcol, excl)  # the target itself is never excluded
        g, t = greater.cpu().numpy(), tied.cpu().numpy()
        ranks[s:e] = g + t if protocol.ties == "pessimistic" else g + t / 2.0
        tied_all[s:e] = t
    metrics = compute_metrics(ranks, ks, tied_all if protocol.ties == "random" else None, protocol.ties,
                              n_negatives=protocol.n if protocol.kind != "full" else None)
    return RankingResult(protocol, bool(exclude_history), ks, metrics, ranks, evalset.users.copy(),
                         evalset.targets.copy(), tied_all)
