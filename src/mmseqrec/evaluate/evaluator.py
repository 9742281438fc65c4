"""Evaluate a scoring function on evaluation cases under a :class:`Protocol`.

The evaluator builds left-padded ``[B, max_len]`` histories with numpy fancy indexing on the CSR arrays (no
per-user Python loop), draws negatives vectorised (rejection sampling per chunk of cases, seeded per chunk so
the result does not depend on ``batch_size``), calls ``score_fn`` and keeps the per-case rank of the target.

Decisions (documented, tested):

* ``full`` + ``exclude_history``: every item of the user's history before the target (the whole history, not
  only the last ``max_len``) is removed from the candidates, **except the target itself** when it reappears
  (a repeat purchase stays rankable).
* ``sampled`` (and generated ``candidates:N``): negatives never include any item of the user's **whole**
  sequence (all splits: a validation case never gets the user's later test item as a negative), nor the
  target, nor padding; drawn without replacement. ``exclude_history`` does not change sampled/candidates
  evaluation (it is only recorded).
* The positive is placed at a random column (seeded) so that models that break ties by column order gain
  nothing; ranks are computed from scores with the protocol's ties policy. ``candidates:file=PATH`` lists are
  used in the file's order (see :mod:`.candidates`).
* The target is scored in the same call and the same tensor as the candidates it competes with; a score
  function must compute every candidate's score with the same arithmetic, so that equal item vectors tie
  exactly (``SequenceModel.score`` multiplies and sums; a batched ``einsum`` rounds differently per column).
* Large catalogues: when the score function exposes ``user_item(histories) -> (states [B, D], items
  [n_items + 1, D])`` (dot-product models; :func:`mmseqrec.train.make_score_fn` does), ``full`` ranking walks
  the items in chunks of ``item_chunk`` (:mod:`.chunked`) instead of scoring ``[B, n_items + 1]`` at once;
  ranks are identical. ``item_chunk=None`` chunks automatically when ``batch_size * (n_items + 1)`` exceeds
  2**26 scores; ``0`` never chunks.
* Scoring runs in float32: the dtype is recorded (``scoring_dtype``; a score function may declare it with a
  ``scoring_dtype`` attribute, otherwise the dtype of the scores it returns is recorded).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from ..data.dataset import SequenceData
from ..data.split import EvalSet
from ..errors import InputError, MmseqrecError
from ..fileio import atomic_path
from .metrics import compute_metrics, rank_parts
from .protocol import Protocol

__all__ = [
    "RankingResult",
    "ScoreFn",
    "build_histories",
    "evaluate_ranking",
    "history_mask_indices",
    "load_ranks",
    "sample_negatives",
]

ScoreFn = Callable[[torch.Tensor, "torch.Tensor | None"], torch.Tensor]

_CHUNK = 8192  # cases per sampling chunk (independent of batch_size, so results are too)


@dataclass
class RankingResult:
    """Per-case ranks and aggregate metrics of one evaluation.

    Attributes
    ----------
    protocol : str
        Canonical protocol string (includes seed and ties policy when not default).
    exclude_history : bool
    ks : tuple of int
    metrics : dict
        ``HR@K``, ``NDCG@K``, ``MRR@K`` for each K, ``AUC`` and ``AUC_global`` for sampled/candidates,
        ``n_cases``.
    ranks : ndarray
        0-based rank of the target: int64 (pessimistic) or float64 expected rank (``ties=random``).
    users, targets : ndarray int64
    tied : ndarray int64
        Number of other candidates scored exactly like the target.
    ties : str
        Ties policy.
    scoring_dtype : str
        Floating-point type the scores were computed in (``float32``).
    candidates_file : dict or None
        ``{"path", "sha256", "n_negatives"}`` under ``candidates:file=PATH``.
    """

    protocol: str
    exclude_history: bool
    ks: tuple[int, ...]
    metrics: dict[str, float]
    ranks: np.ndarray
    users: np.ndarray
    targets: np.ndarray
    tied: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    ties: str = "pessimistic"
    scoring_dtype: str = "float32"
    candidates_file: dict[str, Any] | None = None

    def to_frame(self) -> pl.DataFrame:
        """Polars frame ``user, target, rank, tied`` (one row per case)."""
        return pl.DataFrame({
            "user": self.users.astype(np.int64),
            "target": self.targets.astype(np.int64),
            "rank": self.ranks,
            "tied": self.tied.astype(np.int64) if self.tied.size == self.ranks.size
            else np.zeros(self.ranks.size, np.int64),
        })

    def save_ranks(self, path: str | Path) -> None:
        """Write :meth:`to_frame` to Parquet atomically."""
        with atomic_path(path) as tmp:
            self.to_frame().write_parquet(tmp)

    def setting(self) -> dict[str, Any]:
        """What a result must record to be comparable: protocol, exclude_history, ties, scoring_dtype
        (+ candidates_file)."""
        out: dict[str, Any] = {"protocol": self.protocol, "exclude_history": bool(self.exclude_history),
                               "ties": self.ties, "scoring_dtype": self.scoring_dtype}
        if self.candidates_file is not None:
            out["candidates_file"] = dict(self.candidates_file)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: :meth:`setting`, ks and the metrics (flat)."""
        return {
            **self.setting(),
            "ks": list(self.ks),
            **{k: (int(v) if k == "n_cases" else float(v)) for k, v in self.metrics.items()},
        }


def read_parquet_with(path: str | Path, columns: tuple[str, ...], what: str, missing_hint: str = ""
                      ) -> pl.DataFrame:
    """Read the Parquet ``what`` at ``path`` and check it has ``columns`` (one clear error otherwise)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} not found{missing_hint}", file=path)
    try:
        df = pl.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - any reader failure is bad input
        raise InputError(f"cannot read the {what} as Parquet: {exc}", file=path) from None
    for col in columns:
        if col not in df.columns:
            raise InputError(f"missing column (expected {', '.join(columns)})", file=path, field=col)
    return df


def load_ranks(path: str | Path) -> pl.DataFrame:
    """Read a ``ranks.parquet`` (columns user, target, rank[, tied]) with a clear error when malformed."""
    return read_parquet_with(path, ("user", "target", "rank"), "ranks file", " (was the run evaluated?)")


# --------------------------------------------------------------------------------------------- histories

def build_histories(seqs: SequenceData, users: np.ndarray, hist_end: np.ndarray, max_len: int) -> np.ndarray:
    """Left-padded ``[B, max_len]`` int64 matrix of the last ``max_len`` history items of each case."""
    users = np.asarray(users, dtype=np.int64)
    hist_end = np.asarray(hist_end, dtype=np.int64)
    starts = seqs.indptr[users]
    begin = np.maximum(starts, hist_end - max_len)
    pos = hist_end[:, None] - max_len + np.arange(max_len, dtype=np.int64)[None, :]
    valid = pos >= begin[:, None]
    out = np.where(valid, seqs.items[np.clip(pos, 0, max(seqs.items.size - 1, 0))] if seqs.items.size else 0, 0)
    return out.astype(np.int64)


def history_mask_indices(seqs: SequenceData, users: np.ndarray, hist_end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, item) pairs of every history item of each case (whole history, not truncated)."""
    users = np.asarray(users, dtype=np.int64)
    starts = seqs.indptr[users]
    lengths = np.asarray(hist_end, dtype=np.int64) - starts
    if np.any(lengths < 0):
        raise InputError("evaluation case ends before its user's sequence starts", field="hist_end")
    total = int(lengths.sum())
    rows = np.repeat(np.arange(users.size, dtype=np.int64), lengths)
    offs = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths) \
        + np.repeat(starts, lengths)
    return rows, seqs.items[offs]


# ----------------------------------------------------------------------------------------------- sampling

def sample_negatives(seqs: SequenceData, users: np.ndarray, hist_end: np.ndarray, targets: np.ndarray, n: int,
                     rng: np.random.Generator, weights: np.ndarray | None = None) -> np.ndarray:
    """Draw ``n`` distinct negatives per case, never from the user's items before ``hist_end`` nor the target.

    :func:`evaluate_ranking` passes the end of the user's whole sequence as ``hist_end``, so no item the user
    ever interacted with (in any split) is a negative.

    Parameters
    ----------
    weights : ndarray [n_items + 1], optional
        Non-negative sampling weights (popularity counts); uniform over ``1..n_items`` when ``None``.
        Drawing with these weights and discarding repeats is successive sampling without replacement.

    Returns
    -------
    ndarray int64 [B, n]

    Raises
    ------
    InputError
        When a case has fewer than ``n`` eligible items.
    """
    V = seqs.n_items + 1
    B = int(np.asarray(users).size)
    targets = np.asarray(targets, dtype=np.int64)
    hrows, hitems = history_mask_indices(seqs, users, hist_end)
    ar = np.arange(B, dtype=np.int64)
    forbidden = np.unique(np.concatenate([hrows * V + hitems, ar * V + targets, ar * V]))
    if weights is None:
        w_pos = np.ones(V, dtype=bool)
        w_pos[0] = False
        cdf = None
    else:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (V,) or np.any(w < 0) or not np.isfinite(w).all():
            raise InputError(f"item_popularity must be {V} non-negative counts (index 0 = padding)",
                             field="item_popularity")
        w = w.copy()
        w[0] = 0.0
        if w.sum() <= 0:
            raise InputError("item_popularity is all zero", field="item_popularity")
        w_pos = w > 0
        cdf = np.cumsum(w) / w.sum()
    blocked = np.bincount(forbidden // V, weights=w_pos[forbidden % V], minlength=B)
    avail = int(w_pos.sum()) - blocked
    if np.any(avail < n):
        i = int(np.argmin(avail))
        raise InputError(f"user {int(np.asarray(users)[i])} has only {int(avail[i])} eligible negative items, "
                         f"cannot draw {n}; use fewer negatives or the full protocol", field="--protocol")
    out = np.zeros((B, n), dtype=np.int64)
    filled = np.zeros(B, dtype=np.int64)
    pending = ar
    m = n + n // 4 + 16  # few rejections when n << n_items; doubles for the rows still short
    while pending.size:
        P = pending.size
        if cdf is None:
            draws = rng.integers(1, V, size=(P, m), dtype=np.int64)
        else:
            draws = np.minimum(np.searchsorted(cdf, rng.random((P, m)), side="right"), V - 1).astype(np.int64)
        keys = pending[:, None] * V + draws
        idx = np.minimum(np.searchsorted(forbidden, keys), forbidden.size - 1)
        ok = forbidden[idx] != keys
        flat = keys.ravel()
        _, first = np.unique(flat, return_index=True)
        isfirst = np.zeros(flat.size, dtype=bool)
        isfirst[first] = True
        ok &= isfirst.reshape(P, m)
        need = n - filled[pending]
        cum = np.cumsum(ok, axis=1)
        take = ok & (cum <= need[:, None])
        r, c = np.nonzero(take)
        out[pending[r], filled[pending[r]] + cum[r, c] - 1] = draws[r, c]
        filled[pending] += take.sum(1)
        still = filled[pending] < n
        if still.any():  # rows drawn again must not repeat what they already took
            forbidden = np.union1d(forbidden, keys[take & still[:, None]])
        pending = pending[still]
        m = min(m * 2, 1 << 16)
    return out


def _place_positive(negs: np.ndarray, targets: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Insert ``targets`` at column ``pos`` of each row of ``negs`` ([B, n] -> [B, n + 1])."""
    B, n = negs.shape
    col = np.arange(n + 1, dtype=np.int64)[None, :]
    src = np.clip(col - (col > pos[:, None]), 0, max(n - 1, 0))
    out = np.take_along_axis(negs, src, axis=1) if n else np.zeros((B, 1), np.int64)
    out[np.arange(B), pos] = targets
    return out


# ------------------------------------------------------------------------------------------------ evaluate

def evaluate_ranking(
    score_fn: ScoreFn,
    evalset: EvalSet,
    seqs: SequenceData,
    protocol: Protocol | str,
    ks: tuple[int, ...] | list[int] = (5, 10, 20),
    *,
    exclude_history: bool = False,
    max_len: int = 200,
    batch_size: int = 512,
    device: str | torch.device = "cpu",
    item_popularity: np.ndarray | None = None,
    candidates: np.ndarray | None = None,
    progress: bool = True,
    item_chunk: int | None = None,
) -> RankingResult:
    """Rank each case's target with ``score_fn`` under ``protocol`` and compute the metrics.

    Parameters
    ----------
    score_fn : callable
        ``score_fn(histories [B, max_len] LongTensor, candidates [B, C] LongTensor | None)`` returns scores
        ``[B, C]`` for the given candidates, or ``[B, n_items + 1]`` for all items when ``None`` (column 0 is
        padding and ignored). Called under ``torch.inference_mode``.
    evalset : EvalSet
        Cases: user, target, absolute end of the history in ``seqs.items``.
    seqs : SequenceData
    protocol : Protocol or str
        ``full``, ``sampled:N[:popularity]``, ``candidates:N``, ``candidates:file=PATH`` (see :mod:`.protocol`).
    ks : sequence of int
        Cut-offs for HR/NDCG/MRR.
    exclude_history : bool
        ``full`` only: remove the user's earlier items (never the target) from the candidates.
    max_len : int
        History length fed to ``score_fn`` (most recent items, left-padded with 0).
    item_popularity : ndarray [n_items + 1], optional
        Training counts; required by ``sampled:N:popularity``.
    candidates : ndarray [n_cases, N + 1], optional
        ``candidates:N`` only: fixed lists with the target at column 0 (shuffled here with the seed).
        Drawn like ``sampled:N`` when omitted.
    progress : bool
        Show a rich progress bar for long evaluations.
    item_chunk : int, optional
        ``full`` only: items per chunk for score functions with ``user_item`` (see the module notes);
        ``None`` = automatic, ``0`` = one piece.

    Returns
    -------
    RankingResult
    """
    from .candidates import file_cases, read_candidates
    from .chunked import DEFAULT_ITEM_CHUNK, chunked_rank_parts

    proto = Protocol.parse(protocol)
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise InputError("cut-offs must be positive integers", field="ks")
    users = np.asarray(evalset.users, dtype=np.int64)
    targets = np.asarray(evalset.targets, dtype=np.int64)
    hist_end = np.asarray(evalset.hist_end, dtype=np.int64)
    n_cases = users.size
    V = seqs.n_items + 1
    if n_cases and (targets.min() < 1 or targets.max() >= V):
        raise InputError(f"targets must be item ids in 1..{seqs.n_items}", field="targets")
    if proto.kind == "sampled" and proto.sampler == "popularity" and item_popularity is None:
        raise InputError("sampled:N:popularity needs item_popularity (training counts)", field="--protocol")
    cand_file = None
    if proto.file is not None:
        if candidates is not None:
            raise InputError("give candidate lists either as a file in the protocol or as an array, not both",
                             field="candidates")
        own = file_cases(proto.file, seqs, getattr(evalset, "name", None))
        if own is not None:  # the file's rows are the cases, with their own histories (impression lists)
            users, targets, hist_end = own[0].users, own[0].targets, own[0].hist_end
        lists = read_candidates(proto.file, users, targets, n_users=seqs.n_users, n_items=seqs.n_items,
                                split=getattr(evalset, "name", None))
        if lists.cases is not None:  # a file with a split column defines the cases scored
            users, targets, hist_end = users[lists.cases], targets[lists.cases], hist_end[lists.cases]
            n_cases = users.size
        cand_file = {"path": lists.path, "sha256": lists.sha256, "n_negatives": lists.n_negatives}
    elif candidates is not None:
        if proto.kind != "candidates":
            raise InputError("explicit candidate lists need the candidates:N protocol", field="--protocol")
        candidates = np.asarray(candidates, dtype=np.int64)
        if candidates.shape != (n_cases, (proto.n or 0) + 1):
            raise InputError(f"candidates must have shape ({n_cases}, {(proto.n or 0) + 1}), "
                             f"got {candidates.shape}", field="candidates")
        if np.any(candidates[:, 0] != targets):
            raise InputError("candidates[:, 0] must be the target of each case", field="candidates")
        if np.any(candidates[:, 1:] == candidates[:, :1]):
            raise InputError("a candidate list contains its target among the negatives", field="candidates")
        if candidates.min(initial=1) < 1 or candidates.max(initial=1) >= V:
            raise InputError(f"candidate ids must be in 1..{seqs.n_items}", field="candidates")

    seq_end = seqs.indptr[users + 1]  # negatives avoid the user's whole sequence (every split)
    user_item = getattr(score_fn, "user_item", None)
    if item_chunk is None:
        item_chunk = DEFAULT_ITEM_CHUNK if batch_size * V > (1 << 26) else 0
    chunked = proto.kind == "full" and user_item is not None and item_chunk > 0
    dev = torch.device(device)
    scoring_dtype = getattr(score_fn, "scoring_dtype", None)
    ranks_g = np.zeros(n_cases, dtype=np.int64)
    ranks_t = np.zeros(n_cases, dtype=np.int64)
    pos_scores: list[np.ndarray] = []
    neg_scores: list[np.ndarray] = []
    n_batches = -(-n_cases // batch_size) if n_cases else 0

    from rich.progress import Progress

    with Progress(transient=True, disable=not progress or n_batches < 20) as bar, torch.inference_mode():
        task = bar.add_task(f"evaluating ({proto})", total=n_batches)
        for c0 in range(0, n_cases, _CHUNK):
            c1 = min(c0 + _CHUNK, n_cases)
            cand_chunk = pos_chunk = None
            if proto.file is not None:
                cand_chunk, pos_chunk = lists.items[c0:c1], lists.target_col[c0:c1]
            elif proto.kind != "full":
                rng = np.random.default_rng([proto.seed, c0 // _CHUNK])
                if candidates is not None:
                    order = np.argsort(rng.random((c1 - c0, proto.n + 1)), axis=1)
                    cand_chunk = np.take_along_axis(candidates[c0:c1], order, axis=1)
                    pos_chunk = np.argmin(order, axis=1)  # where column 0 (the target) went
                else:
                    w = item_popularity if proto.sampler == "popularity" else None
                    negs = sample_negatives(seqs, users[c0:c1], seq_end[c0:c1], targets[c0:c1], proto.n,
                                            rng, w)
                    pos_chunk = rng.integers(0, proto.n + 1, size=c1 - c0)
                    cand_chunk = _place_positive(negs, targets[c0:c1], pos_chunk)
            for b0 in range(c0, c1, batch_size):
                b1 = min(b0 + batch_size, c1)
                hist = torch.from_numpy(build_histories(seqs, users[b0:b1], hist_end[b0:b1], max_len)).to(dev)
                if chunked:
                    u, item_vecs = user_item(hist)
                    scoring_dtype = scoring_dtype or str(u.dtype).removeprefix("torch.")
                    excl_pairs = history_mask_indices(seqs, users[b0:b1], hist_end[b0:b1]) \
                        if exclude_history else None
                    g, t, _, _ = chunked_rank_parts(u, item_vecs, torch.from_numpy(targets[b0:b1]).to(u.device),
                                                    exclude=excl_pairs, chunk=item_chunk)
                elif proto.kind == "full":
                    scores = score_fn(hist, None)
                    _check_shape(scores, (b1 - b0, V))
                    scoring_dtype = scoring_dtype or str(scores.dtype).removeprefix("torch.")
                    excl = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
                    excl[:, 0] = True
                    if exclude_history:
                        r, it = history_mask_indices(seqs, users[b0:b1], hist_end[b0:b1])
                        excl[torch.from_numpy(r).to(excl.device), torch.from_numpy(it).to(excl.device)] = True
                    tcol = torch.from_numpy(targets[b0:b1]).to(scores.device)
                    excl[torch.arange(b1 - b0, device=excl.device), tcol] = False  # the target is never masked
                    g, t = rank_parts(scores, tcol, excl)
                else:
                    cand = cand_chunk[b0 - c0:b1 - c0]
                    scores = score_fn(hist, torch.from_numpy(np.ascontiguousarray(cand)).to(dev))
                    _check_shape(scores, cand.shape)
                    scoring_dtype = scoring_dtype or str(scores.dtype).removeprefix("torch.")
                    tcol = torch.from_numpy(pos_chunk[b0 - c0:b1 - c0]).to(scores.device)
                    g, t = rank_parts(scores, tcol)
                    s = scores.detach().float().cpu().numpy()
                    pc = pos_chunk[b0 - c0:b1 - c0]
                    pos_scores.append(s[np.arange(b1 - b0), pc])
                    negmask = np.ones(s.shape, dtype=bool)
                    negmask[np.arange(b1 - b0), pc] = False
                    neg_scores.append(s[negmask])
                ranks_g[b0:b1] = g.cpu().numpy()
                ranks_t[b0:b1] = t.cpu().numpy()
                bar.advance(task)

    if proto.ties == "pessimistic":
        ranks: np.ndarray = ranks_g + ranks_t
    else:
        ranks = ranks_g + ranks_t / 2.0
    n_neg = cand_file["n_negatives"] if cand_file is not None else proto.n
    metrics = compute_metrics(ranks, ks, tied=ranks_t, ties=proto.ties, n_negatives=n_neg)
    if n_neg is not None:
        metrics["AUC_global"] = _global_auc(np.concatenate(pos_scores) if pos_scores else np.zeros(0),
                                            np.concatenate(neg_scores) if neg_scores else np.zeros(0),
                                            proto.ties)
        metrics["n_cases"] = metrics.pop("n_cases")
    return RankingResult(protocol=str(proto), exclude_history=bool(exclude_history), ks=ks, metrics=metrics,
                         ranks=ranks, users=users.copy(), targets=targets.copy(), tied=ranks_t, ties=proto.ties,
                         scoring_dtype=scoring_dtype or "float32", candidates_file=cand_file)


def _check_shape(scores: torch.Tensor, shape: tuple[int, int]) -> None:
    if not isinstance(scores, torch.Tensor) or tuple(scores.shape) != tuple(shape):
        got = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise MmseqrecError(f"score function returned {got}, expected a tensor of shape {tuple(shape)}")


def _global_auc(pos: np.ndarray, neg: np.ndarray, ties: str) -> float:
    """AUC over all (positive, negative) pairs pooled across cases (sklearn-style, as MLLM-MSR reports)."""
    if pos.size == 0 or neg.size == 0:
        return 0.0
    sneg = np.sort(neg)
    below = np.searchsorted(sneg, pos, side="left")
    equal = np.searchsorted(sneg, pos, side="right") - below
    credit = below + (0.5 * equal if ties == "random" else 0.0)
    return float(credit.sum() / (pos.size * neg.size))
